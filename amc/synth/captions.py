"""ALBEF-format pretraining captions (``captions/pretrain.json``) on their own images."""

from __future__ import annotations

from amc.synth.language import ATTRIBUTE_SETS, describe, join_phrases, noun_phrase, related_pairs
from amc.synth.output import SynthOutput
from amc.synth.scene import make_scene


def write_captions(output: SynthOutput) -> None:
    items = []
    for index in range(output.scale.pretrain_images):
        rng = output.rng("captions", index)
        scene = make_scene(rng, output.scale)
        relpath = f"captions/images/{index:06d}.jpg"
        output.add_image(relpath, scene)
        objects = scene.objects
        texts = []
        for _ in range(2):  # whole-image captions listing several objects
            chosen = rng.sample(objects, rng.randint(min(3, len(objects)), len(objects)))
            listed = join_phrases([noun_phrase(o, rng.choice(ATTRIBUTE_SETS), rng) for o in chosen])
            texts.append(rng.choice(("", "a picture with ", "an image with ")) + listed)
        for obj in rng.sample(objects, 2):  # single-object descriptions
            texts.append(describe(obj, objects, rng, article=rng.choice(("a", "the"))))
        if pairs := related_pairs(objects):
            a, pred, b = rng.choice(pairs)
            texts.append(f"{describe(a, objects, rng)} {pred} {describe(b, objects, rng, article='the')}")
        # relative to the json's own folder, like the image paths of records files
        items += [{"image": relpath.removeprefix("captions/"), "caption": text} for text in texts]
    output.write_json("captions/pretrain.json", items, indent=1)
    output.counts.update(pretrain_images=output.scale.pretrain_images, pretrain_captions=len(items))
