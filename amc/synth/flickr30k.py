"""The Flickr30k-Entities-like set: ``Sentences/``, ``Annotations/``, split files, images in ``flickr30k-images/``."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from amc.synth.language import NUMBER_WORDS, PLURALS, SCENE_PHRASES, describe, join_phrases, related_pairs
from amc.synth.output import SynthOutput
from amc.synth.scene import SHAPES, Obj, Scene, make_scene

# Image and entity ids start here (the datasets' native ids look different from each other).
FLICKR_ID_BASE = 1_000_000
FLICKR_ENTITY_BASE = 10_000


def write_flickr30k(output: SynthOutput) -> dict[str, list[int]]:
    s = output.scale
    ids_by_split: dict[str, list[int]] = {}
    image_ids, entity_ids = itertools.count(FLICKR_ID_BASE), itertools.count(FLICKR_ENTITY_BASE)
    n_phrases = 0
    for split, count in (("train", s.flickr_train), ("val", s.flickr_val), ("test", s.flickr_test)):
        ids_by_split[split] = []
        for index in range(count):
            rng = output.rng(f"flickr30k/{split}", index)
            scene = make_scene(rng, s)
            image_id = next(image_ids)
            ids_by_split[split].append(image_id)
            output.add_image(f"flickr30k/flickr30k-images/{image_id}.jpg", scene)
            sentences, xml, phrases = _flickr_image(image_id, scene, rng, entity_ids)
            n_phrases += phrases
            output.write_text(f"flickr30k/Sentences/{image_id}.txt", "\n".join(sentences) + "\n")
            output.write_text(f"flickr30k/Annotations/{image_id}.xml", xml)
        output.write_text(f"flickr30k/{split}.txt", "".join(f"{i}\n" for i in ids_by_split[split]))
        output.counts[f"flickr30k_{split}_images"] = count
    output.counts["flickr30k_marked_phrases"] = n_phrases
    return ids_by_split


def _flickr_image(image_id: int, scene: Scene, rng: random.Random, entity_ids: Iterator[int]):
    """Five marked-up sentences, the XML, and the count of marked phrases for one image."""
    objects = scene.objects
    entity = {id(obj): next(entity_ids) for obj in objects}
    # Plural entities ("two circles"): one entity whose boxes are all objects of the shape;
    # those objects then carry two names in the XML.
    groups = {}
    for shape in SHAPES:
        members = [o for o in objects if o.shape == shape]
        if len(members) in NUMBER_WORDS:
            groups[shape] = (next(entity_ids), members)
    scene_entity, notvisual_entity = next(entity_ids), next(entity_ids)

    def mark(entity_id: int, kind: str, text: str) -> str:
        return f"[/EN#{entity_id}/{kind} {text}]"

    def obj_mark(obj: Obj) -> str:
        return mark(
            entity[id(obj)], obj.shape, describe(obj, objects, rng, article=rng.choice(("a", "the", "a")))
        )

    pairs = related_pairs(objects)
    sentences, n_phrases = [], 0
    for _ in range(5):
        kinds = ["list", "scene"] + (["relation", "there"] if pairs else []) + (["group"] if groups else [])
        kind = rng.choice(kinds)
        if kind == "list":
            chosen = rng.sample(objects, rng.randint(2, min(4, len(objects))))
            parts = [
                mark(scene_entity, "scene", rng.choice(SCENE_PHRASES[:2])),
                "with",
                join_phrases([obj_mark(o) for o in chosen], comma=" , "),
            ]
        elif kind == "scene":
            chosen = rng.sample(objects, 2)
            parts = [
                obj_mark(chosen[0]),
                "and",
                obj_mark(chosen[1]),
                "on",
                mark(scene_entity, "scene", SCENE_PHRASES[2]),
            ]
        elif kind == "relation":
            a, pred, b = rng.choice(pairs)
            parts = [obj_mark(a), "is", pred, obj_mark(b)]
        elif kind == "there":
            a, pred, b = rng.choice(pairs)
            parts = [mark(notvisual_entity, "notvisual", "there"), "is", obj_mark(a), pred, obj_mark(b)]
        else:
            shape = rng.choice(sorted(groups))
            group_id, members = groups[shape]
            others = [o for o in objects if o.shape != shape]
            group_text = f"{NUMBER_WORDS[len(members)]} {PLURALS[shape]}"
            parts = [mark(group_id, shape, group_text)]
            if others:
                parts += ["and", obj_mark(rng.choice(others))]
        text = " ".join(parts) + " ."
        # Capitalise the first word, inside its markup if it has one.
        head = text.find(" ") + 1 if text.startswith("[") else 0
        sentences.append(text[:head] + text[head].upper() + text[head + 1 :])
        n_phrases += text.count("[/EN#")

    # PASCAL-VOC-like XML with 1-based inclusive pixel coordinates.
    lines = [
        "<annotation>",
        f"  <filename>{image_id}.jpg</filename>",
        f"  <size><width>{scene.width}</width><height>{scene.height}</height><depth>3</depth></size>",
    ]
    for obj in objects:
        names = [entity[id(obj)]] + [g for g, members in groups.values() if any(m is obj for m in members)]
        x1, y1, x2, y2 = obj.box
        lines.append("  <object>")
        lines += [f"    <name>{n}</name>" for n in names]
        lines.append(
            f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
        )
        lines.append("  </object>")
    lines.append(f"  <object><name>{scene_entity}</name><nobndbox>0</nobndbox><scene>1</scene></object>")
    lines.append(f"  <object><name>{notvisual_entity}</name><nobndbox>1</nobndbox><scene>0</scene></object>")
    lines.append("</annotation>")
    return sentences, "\n".join(lines) + "\n", n_phrases


# -- Visual Genome ------------------------------------------------------------------------
