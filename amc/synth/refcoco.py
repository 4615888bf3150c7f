"""The RefCOCO+-like set: ``refcoco+/refs(unc).p``, ``refcoco+/instances.json``, images in ``coco/train2014/``."""

from __future__ import annotations

import pickle
import random

from amc.synth.language import describe, loosely_related, relation
from amc.synth.output import SynthOutput
from amc.synth.scene import SHAPES, Obj, make_scene

# RefCOCO+ testA holds images whose referred objects are of these shapes (the "people" of the
# synthetic RefCOCO+); testB the other shapes. train and val mix both.
REFCOCO_GROUP_A = ("circle", "triangle", "star")
REFCOCO_GROUP_B = tuple(s for s in SHAPES if s not in REFCOCO_GROUP_A)

# COCO image ids start here (the datasets' native ids look different from each other).
COCO_ID_BASE = 100_000


def write_refcoco(output: SynthOutput) -> dict[str, list[int]]:
    """Write refcoco+/ and coco/train2014/; returns the COCO image ids of each split."""
    s = output.scale
    splits = {
        "train": s.refcoco_train,
        "val": s.refcoco_val,
        "testA": s.refcoco_testA,
        "testB": s.refcoco_testB,
    }
    category_id = {shape: i + 1 for i, shape in enumerate(SHAPES)}
    images, annotations, refs = [], [], []
    n_sentences = 0
    ids_by_split: dict[str, list[int]] = {}
    for split, count in splits.items():
        group = {"testA": REFCOCO_GROUP_A, "testB": REFCOCO_GROUP_B}.get(split, SHAPES)
        ids_by_split[split] = []
        for index in range(count):
            rng = output.rng(f"refcoco+/{split}", index)
            scene = make_scene(rng, s, repeat_shape=rng.choice(group))
            image_id = COCO_ID_BASE + len(images)
            ids_by_split[split].append(image_id)
            file_name = f"COCO_train2014_{image_id:012d}.jpg"
            output.add_image(f"coco/train2014/{file_name}", scene)
            images.append(
                {"id": image_id, "file_name": file_name, "width": scene.width, "height": scene.height}
            )
            ann_ids = []
            for obj in scene.objects:
                ann_ids.append(len(annotations) + 1)
                x, y, w, h = obj.xywh
                annotations.append(
                    {"id": ann_ids[-1], "image_id": image_id, "bbox": [x, y, w, h], "area": w * h,
                     "category_id": category_id[obj.shape], "iscrowd": 0}
                )  # fmt: skip
            # Referred objects: of the split's shapes, and sharing the shape with another
            # object, so the shape alone never picks the target out.
            shapes = [o.shape for o in scene.objects]
            candidates = [
                k for k, o in enumerate(scene.objects) if o.shape in group and shapes.count(o.shape) >= 2
            ]
            rng.shuffle(candidates)
            for k in candidates[: rng.choice((1, 2, 2))]:
                target = scene.objects[k]
                sentences = []
                for text in _referring_expressions(target, scene.objects, rng):
                    raw = text[0].upper() + text[1:] + rng.choice((".", "", "."))  # as people typed it
                    n_sentences += 1
                    sentences.append(
                        {"sent": text, "tokens": text.split(), "raw": raw, "sent_id": n_sentences}
                    )
                refs.append(
                    {"ref_id": len(refs) + 1, "ann_id": ann_ids[k], "image_id": image_id, "split": split,
                     "category_id": category_id[target.shape], "sentences": sentences,
                     "sent_ids": [x["sent_id"] for x in sentences],
                     "file_name": f"COCO_train2014_{image_id:012d}_{ann_ids[k]}.jpg"}
                )  # fmt: skip
        output.counts[f"refcoco+_{split}_images"] = count
        output.counts[f"refcoco+_{split}_expressions"] = sum(
            len(r["sentences"]) for r in refs if r["split"] == split
        )
    categories = [{"id": i, "name": shape, "supercategory": "shape"} for shape, i in category_id.items()]
    output.write_json(
        "refcoco+/instances.json",
        {"images": images, "annotations": annotations, "categories": categories},
    )
    (output.out / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return ids_by_split


def _referring_expressions(target: Obj, objects: list[Obj], rng: random.Random) -> list[str]:
    """1-3 distinct expressions; each needs an attribute or a relation (no absolute location)."""
    options = [describe(target, objects, rng, article=rng.choice(("the", "")), need_attribute=True)]
    same_shape = [o for o in objects if o.shape == target.shape and o is not target]
    for anchor in objects:
        if anchor is target or (pred := relation(target, anchor)) is None:
            continue
        # Unique only if no other object of the target's shape could be <pred> the anchor.
        if any(loosely_related(o, pred, anchor) for o in same_shape if o is not anchor):
            continue
        head = rng.choice((target.shape, f"the {target.shape}"))
        options.append(f"{head} {pred} {describe(anchor, objects, rng, article='the')}")
    options.append(describe(target, objects, rng, article=rng.choice(("the", "")), need_attribute=True))
    unique = list(dict.fromkeys(o.strip() for o in options))
    rng.shuffle(unique)
    return unique[: rng.choice((1, 2, 2, 3))]


# -- Flickr30k Entities -------------------------------------------------------------------
