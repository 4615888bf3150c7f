"""The Visual-Genome-like training set: ``vg/`` (image_data, region descriptions, attributes, relationships)
and, from the same phrases, the AMC authors' released files in ``amc/``."""

from __future__ import annotations

import itertools
import random

from amc.synth.language import ATTRIBUTE_SETS, SIZE_WORDS, noun_phrase, related_pairs, unique_attribute_sets
from amc.synth.output import SynthOutput
from amc.synth.scene import Obj, make_scene
from amc.synth.vg_released import RELEASED_VG_FILES, released_vg_entries

VG_URL = "https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg"


def write_vg(
    output: SynthOutput, refcoco_ids: dict[str, list[int]], flickr_ids: dict[str, list[int]]
) -> None:
    """Write vg/; some images get the coco_id / flickr_id of an evaluation image."""
    s = output.scale
    eval_coco = refcoco_ids["val"] + refcoco_ids["testA"] + refcoco_ids["testB"]
    eval_flickr = flickr_ids["val"] + flickr_ids["test"]
    image_data, regions, attributes, relationships = [], [], [], []
    released: dict[str, list] = {name: [] for name in RELEASED_VG_FILES}
    ids = {"region": itertools.count(1), "object": itertools.count(1), "relationship": itertools.count(1)}
    collisions = {"coco_eval": 0, "coco_train": 0, "flickr_eval": 0}
    for index in range(s.vg_images):
        rng = output.rng("vg", index)
        scene = make_scene(rng, s)
        image_id = index + 1
        output.add_image(f"vg/VG_100K/{image_id}.jpg", scene)
        # Some VG images "are" evaluation images (VG shares images with COCO and Flickr);
        # prepare's --exclude-records drops them. The synthetic pictures differ; only ids match.
        coco_id = flickr_id = None
        r, fraction = rng.random(), s.vg_collision_fraction
        if r < fraction / 2 and eval_coco:
            coco_id = rng.choice(eval_coco)
            collisions["coco_eval"] += 1
        elif r < fraction and eval_flickr:
            flickr_id = rng.choice(eval_flickr)
            collisions["flickr_eval"] += 1
        elif r < 1.5 * fraction and refcoco_ids["train"]:  # shared with training images: kept
            coco_id = rng.choice(refcoco_ids["train"])
            collisions["coco_train"] += 1
        image_data.append(
            {"image_id": image_id, "width": scene.width, "height": scene.height,
             "url": VG_URL.format(image_id=image_id), "coco_id": coco_id, "flickr_id": flickr_id}
        )  # fmt: skip
        image_regions, image_objects, image_relationships = _vg_image(image_id, scene.objects, rng, ids)
        regions.append({"id": image_id, "regions": image_regions})
        attributes.append({"image_id": image_id, "attributes": image_objects})
        relationships.append({"image_id": image_id, "relationships": image_relationships})
        image_released = released_vg_entries(
            f"VG_100K/{image_id}.jpg", image_regions, image_objects, image_relationships
        )
        for name, entries in image_released.items():
            released[name] += entries
    output.write_json("vg/image_data.json", image_data)
    output.write_json("vg/region_descriptions.json", regions)
    output.write_json("vg/attributes.json", attributes)
    output.write_json("vg/relationships.json", relationships)
    for name, entries in released.items():
        output.write_json(f"amc/{name}", entries)
    output.counts.update(
        {f"released_{name.removesuffix('.json')}": len(entries) for name, entries in released.items()}
    )
    output.counts.update(
        vg_images=s.vg_images,
        vg_regions=sum(len(r["regions"]) for r in regions),
        vg_objects=sum(len(a["attributes"]) for a in attributes),
        vg_relationships=sum(len(r["relationships"]) for r in relationships),
        vg_images_with_eval_coco_id=collisions["coco_eval"],
        vg_images_with_eval_flickr_id=collisions["flickr_eval"],
        vg_images_with_train_coco_id=collisions["coco_train"],
    )


def _vg_image(image_id: int, objects: list[Obj], rng: random.Random, ids: dict) -> tuple[list, list, list]:
    """One image's region descriptions, attributed objects and relationships (VG's fields)."""

    def region(phrase: str, box: tuple) -> dict:
        x1, y1, x2, y2 = box
        return {"region_id": next(ids["region"]), "image_id": image_id, "phrase": phrase,
                "x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1}  # fmt: skip

    object_ids = {id(obj): next(ids["object"]) for obj in objects}

    def vg_object(obj: Obj) -> dict:
        x, y, w, h = obj.xywh
        return {
            "object_id": object_ids[id(obj)],
            "synsets": [f"{obj.shape}.n.01"],
            "x": x,
            "y": y,
            "w": w,
            "h": h,
        }

    regions, attributed, relationships = [], [], []
    for obj in objects:
        # One or two region descriptions per object, unique or not (VG's are often ambiguous).
        for _ in range(rng.randint(1, 2)):
            attrs = (
                rng.choice(ATTRIBUTE_SETS[1:])
                if rng.random() < 0.6
                else rng.choice(unique_attribute_sets(obj, objects))
            )
            regions.append(
                region(noun_phrase(obj, attrs, rng, article=rng.choice(("a", "the", ""))), obj.box)
            )
        attrs = [obj.colour, rng.choice(SIZE_WORDS[obj.size])]
        attributed.append(
            {
                **vg_object(obj),
                "names": [obj.shape],
                "attributes": attrs[:1] if rng.random() < 0.2 else attrs,
            }
        )
    pairs = related_pairs(objects)
    rng.shuffle(pairs)
    for a, pred, b in pairs[: rng.randint(2, 4)]:
        relationships.append(
            {"relationship_id": next(ids["relationship"]), "predicate": pred, "synsets": [],
             "subject": {**vg_object(a), "name": a.shape}, "object": {**vg_object(b), "name": b.shape}}
        )  # fmt: skip
    if pairs:  # one region describing a relation, boxed around both objects, as VG's are
        a, pred, b = pairs[0]
        box = (
            min(a.box[0], b.box[0]),
            min(a.box[1], b.box[1]),
            max(a.box[2], b.box[2]),
            max(a.box[3], b.box[3]),
        )
        regions.append(
            region(f"{noun_phrase(a, {'colour'}, rng, '')} {pred} {noun_phrase(b, {'colour'}, rng)}", box)
        )
    return regions, attributed, relationships
