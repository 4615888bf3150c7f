"""``amc synth``: the synthetic grounding benchmark, written in the real datasets' raw formats.

Every image shows 3-6 simple objects (a shape, a colour and a size) on a noisy, cluttered
background. Texts name objects by their attributes and by spatial relations to other objects,
and several objects in an image share a shape or a colour, so a model has to read the text to
point at the right one. The same scenes are written as:

* ``vg/``         a Visual-Genome-like training set (image_data, region descriptions,
                  attributes, relationships), images in ``vg/VG_100K/``;
* ``amc/``        the same VG phrases in the format of the AMC authors' released training files
                  (``vg_descriptions.json``, ``vg_attributes_spatial.json``, ``vg_attributes.json``),
                  image paths relative to ``vg/``;
* ``flickr30k/``  a Flickr30k-Entities-like set (Sentences, Annotations, split files),
                  images in ``flickr30k/flickr30k-images/``;
* ``refcoco+/``   a RefCOCO+-like set (``refs(unc).p``, ``instances.json``), images in
                  ``coco/train2014/``;
* ``captions/``   ALBEF-format pretraining captions (``pretrain.json``) on their own images;
* ``vocab/vocab.txt``  a 512-line WordPiece vocabulary covering every word the generator emits;
* ``SYNTH_INFO.json``  seed, scale, counts and generator parameters (written last).

Everything is a pure function of the seed: each image draws from its own RNG seeded from
``(seed, subset, index)``, JSON is written with sorted keys and JPEGs at a fixed quality, so the
same seed gives byte-identical files (with the same Pillow/libjpeg). The whole tree is built in a
temporary sibling folder and moved into place at the end, so an interrupted run leaves nothing
that looks complete. See ``docs/data.md`` for the layout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from amc.cli import nonnegative_int, positive_int
from amc.io import AmcError, check_outputs

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The world: shapes, colours, sizes and the words that describe them.

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "star": "stars",
}
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 215, 45),
    "purple": (145, 55, 195),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
}
# Texts use either word for a size, so a model cannot key on one token.
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
# Size of an object's box side as a fraction of the image's shorter side.
SIZE_FRACTIONS = {"small": (0.12, 0.17), "large": (0.24, 0.32)}
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {2: "two", 3: "three"}
# Flickr30k entities without a box: whole-scene phrases and a not-visual "there".
SCENE_PHRASES = ("a picture", "an image", "a dark background")
FUNCTION_WORDS = ("a", "an", "the", "and", "with", "is", "there", "on")
# RefCOCO+ testA holds images whose referred objects are of these shapes (the "people" of the
# synthetic RefCOCO+); testB the other shapes. train and val mix both.
REFCOCO_GROUP_A = ("circle", "triangle", "star")
REFCOCO_GROUP_B = tuple(s for s in SHAPES if s not in REFCOCO_GROUP_A)

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Id bases, chosen so the datasets' native ids look different from each other.
FLICKR_ID_BASE = 1_000_000
COCO_ID_BASE = 100_000
FLICKR_ENTITY_BASE = 10_000
VG_URL = "https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg"


def vocabulary_words() -> list[str]:
    """Every word the generator can emit, lowercased as ALBEF's ``pre_caption`` leaves it."""
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(FUNCTION_WORDS)
    words |= {w for pair in SIZE_WORDS.values() for w in pair}
    words |= set(NUMBER_WORDS.values())
    for text in RELATIONS + SCENE_PHRASES:
        words |= set(text.split())
    return sorted(words)


def vocabulary_lines() -> list[str]:
    words = vocabulary_words()
    filler = VOCAB_SIZE - len(SPECIAL_TOKENS) - len(words)
    assert filler >= 0, "the generator's vocabulary no longer fits in 512 tokens"
    return [*SPECIAL_TOKENS, *words, *(f"[unused{i}]" for i in range(filler))]


# ---------------------------------------------------------------------------------------------
# Scale.


@dataclass(frozen=True)
class SynthScale:
    """How much to generate and the generator's knobs; ``SCALES`` holds the named presets."""

    pretrain_images: int
    vg_images: int
    flickr_train: int
    flickr_val: int
    flickr_test: int
    refcoco_train: int
    refcoco_val: int
    refcoco_testA: int
    refcoco_testB: int
    min_side: int = 96
    max_side: int = 160
    min_objects: int = 3
    max_objects: int = 6
    p_large: float = 0.4
    max_overlap: float = 0.05  # largest allowed intersection, as a fraction of the smaller box
    noise: int = 10  # uniform per-pixel noise amplitude (0-255 scale)
    jpeg_quality: int = 92
    vg_collision_fraction: float = 0.1  # VG images given an eval image's coco_id / flickr_id


SCALES: dict[str, SynthScale] = {
    "ci": SynthScale(
        pretrain_images=40,
        vg_images=30,
        flickr_train=6,
        flickr_val=10,
        flickr_test=10,
        refcoco_train=8,
        refcoco_val=10,
        refcoco_testA=10,
        refcoco_testB=10,
    ),
    "demo": SynthScale(
        pretrain_images=4000,
        vg_images=2000,
        flickr_train=200,
        flickr_val=200,
        flickr_test=200,
        refcoco_train=300,
        refcoco_val=150,
        refcoco_testA=150,
        refcoco_testB=150,
    ),
}


# ---------------------------------------------------------------------------------------------
# Scenes.


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixel-edge coordinates (x2 exclusive)
    rgb: tuple[int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def xywh(self) -> list[int]:
        x1, y1, x2, y2 = self.box
        return [x1, y1, x2 - x1, y2 - y1]


@dataclass
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    clutter: list[tuple]  # ("line", xy, rgb, width) or ("dot", xy, rgb)
    objects: list[Obj]
    noise: int  # amplitude of the uniform per-pixel noise
    noise_seed: int


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection area as a fraction of the smaller box."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _pick_attributes(
    rng: random.Random, specs: list[tuple], forced_shape: str | None, p_large: float
) -> tuple:
    """A new (shape, colour, size) that often shares a shape or a colour with an earlier one."""
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    size = "large" if rng.random() < p_large else "small"
    r = rng.random()
    if forced_shape is not None:
        shape = forced_shape
    elif specs and r < 0.35:  # same shape as a distractor: colour or size has to decide
        shape = rng.choice(specs)[0]
    elif specs and r < 0.7:  # same colour as a distractor: shape has to decide
        colour = rng.choice(specs)[1]
    return shape, colour, size


def make_scene(rng: random.Random, scale: SynthScale, repeat_shape: str | None = None) -> Scene:
    """A scene of unique (shape, colour, size) objects; ``repeat_shape`` appears at least twice."""
    for _attempt in range(100):
        width = rng.randint(scale.min_side, scale.max_side)
        height = rng.randint(scale.min_side, scale.max_side)
        if abs(width - height) < 8:  # keep images visibly non-square
            continue
        n_objects = rng.randint(scale.min_objects, scale.max_objects)
        n_forced = 0 if repeat_shape is None else (3 if rng.random() < 0.3 else 2)
        specs: list[tuple] = []
        for _ in range(200):
            if len(specs) >= max(n_objects, n_forced):
                break
            spec = _pick_attributes(
                rng, specs, repeat_shape if len(specs) < n_forced else None, scale.p_large
            )
            if spec not in specs:
                specs.append(spec)
        objects = _place(rng, scale, width, height, specs, n_forced)
        if objects is None or len(objects) < scale.min_objects:
            continue
        base = rng.randint(25, 95)
        background = tuple(min(255, max(0, base + rng.randint(-12, 12))) for _ in range(3))
        clutter = _clutter(rng, width, height, base)
        return Scene(width, height, background, clutter, objects, scale.noise, rng.getrandbits(63))
    raise RuntimeError("could not place objects in 100 attempts; check SynthScale")


def _place(rng, scale, width, height, specs, n_forced) -> list[Obj] | None:
    short = min(width, height)
    objects: list[Obj] = []
    for index, (shape, colour, size) in enumerate(specs):
        low, high = SIZE_FRACTIONS[size]
        side = max(6, round(short * rng.uniform(low, high)))
        placed = False
        for _try in range(60):
            x1, y1 = rng.randint(1, width - side - 1), rng.randint(1, height - side - 1)
            box = (x1, y1, x1 + side, y1 + side)
            if all(_overlap(box, o.box) <= scale.max_overlap for o in objects):
                placed = True
                break
        if not placed:
            if index < n_forced:
                return None  # the repeated shape is the point of the scene: start again
            continue
        # A little variation around the nominal colour, so colours are categories, not values.
        rgb = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[colour])
        objects.append(Obj(shape, colour, size, box, rgb))
    return objects


def _clutter(rng: random.Random, width: int, height: int, base: int) -> list[tuple]:
    """Thin grey lines and specks: texture for the background that is never an object."""
    items = []
    for _ in range(rng.randint(3, 8)):
        grey = min(255, max(0, base + rng.choice((-1, 1)) * rng.randint(15, 35)))
        xy = (rng.randint(0, width), rng.randint(0, height), rng.randint(0, width), rng.randint(0, height))
        items.append(("line", xy, (grey, grey, grey), 1))
    for _ in range(rng.randint(5, 15)):
        grey = min(255, max(0, base + rng.randint(20, 50)))
        x, y, r = rng.randint(0, width), rng.randint(0, height), rng.randint(1, 2)
        items.append(("dot", (x - r, y - r, x + r, y + r), (grey, grey, grey)))
    return items


def _star_points(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    points = []
    for k in range(2 * n):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / n
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    # Normalise to [0, 1] so the star fills its box exactly and the box is tight.
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in points]


# A plus sign whose arms are a third of its box wide, corner by corner.
_CROSS_X = (1, 2, 2, 3, 3, 2, 2, 1, 1, 0, 0, 1)
_CROSS_Y = (0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 1, 1)
# Outlines in unit coordinates ([0, 1] x [0, 1]), each touching all four sides of its box.
UNIT_POLYGONS = {
    "triangle": [(0.0, 1.0), (1.0, 1.0), (0.5, 0.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "cross": [(x / 3, y / 3) for x, y in zip(_CROSS_X, _CROSS_Y, strict=True)],
    "star": _star_points(),
}


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for item in scene.clutter:
        if item[0] == "line":
            draw.line(item[1], fill=item[2], width=item[3])
        else:
            draw.ellipse(item[1], fill=item[2])
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.box
        # PIL fills pixels up to and including the last coordinate: the drawn pixels are x1..x2-1.
        if obj.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=obj.rgb)
        elif obj.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=obj.rgb)
        else:
            w, h = x2 - 1 - x1, y2 - 1 - y1
            draw.polygon([(x1 + u * w, y1 + v * h) for u, v in UNIT_POLYGONS[obj.shape]], fill=obj.rgb)
    if scene.noise:
        noise = np.random.default_rng(scene.noise_seed).integers(
            -scene.noise, scene.noise + 1, size=(scene.height, scene.width, 3), dtype=np.int16
        )
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    return image


def _render_job(job: tuple[str, Scene, int]) -> None:
    path, scene, quality = job
    render(scene).save(path, format="JPEG", quality=quality)


# ---------------------------------------------------------------------------------------------
# Describing objects.


def _article(words: list[str], article: str) -> list[str]:
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return [article, *words] if article else words


def noun_phrase(obj: Obj, attrs: frozenset | set, rng: random.Random, article: str = "a") -> str:
    """E.g. "a little red circle": the attributes in ``attrs`` (``size``, ``colour``) and the shape."""
    words = []
    if "size" in attrs:
        words.append(rng.choice(SIZE_WORDS[obj.size]))
    if "colour" in attrs:
        words.append(obj.colour)
    words.append(obj.shape)
    return " ".join(_article(words, article))


def _matches(obj: Obj, other: Obj, attrs) -> bool:
    return other.shape == obj.shape and all(getattr(other, a) == getattr(obj, a) for a in attrs)


ATTRIBUTE_SETS = (frozenset(), frozenset({"colour"}), frozenset({"size"}), frozenset({"colour", "size"}))


def unique_attribute_sets(obj: Obj, objects: list[Obj]) -> list[frozenset]:
    """Attribute sets that, with the shape, single ``obj`` out among ``objects``."""
    return [a for a in ATTRIBUTE_SETS if not any(_matches(obj, o, a) for o in objects if o is not obj)]


def describe(
    obj: Obj, objects: list[Obj], rng: random.Random, article: str = "a", need_attribute: bool = False
) -> str:
    """A description that picks ``obj`` out, usually the shortest one, sometimes over-specified."""
    sets = [a for a in unique_attribute_sets(obj, objects) if a or not need_attribute]
    if rng.random() < 0.25:
        attrs = sets[-1]
    else:
        shortest = min(len(a) for a in sets)
        attrs = rng.choice([a for a in sets if len(a) == shortest])
    return noun_phrase(obj, attrs, rng, article)


def relation(a: Obj, b: Obj) -> str | None:
    """The clear spatial relation of ``a`` to ``b`` (``a`` is <relation> ``b``), or None."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) > 1.5 * abs(dy) and abs(dx) > 6:
        return "left of" if dx < 0 else "right of"
    if abs(dy) > 1.5 * abs(dx) and abs(dy) > 6:
        return "above" if dy < 0 else "below"
    return None


def loosely_related(a: Obj, pred: str, b: Obj) -> bool:
    """Whether a reader could take ``a`` to be <pred> ``b`` at all (no clear-margin required)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[pred]


def related_pairs(objects: list[Obj]) -> list[tuple[Obj, str, Obj]]:
    pairs = []
    for a in objects:
        for b in objects:
            if a is not b and (pred := relation(a, b)) is not None:
                pairs.append((a, pred, b))
    return pairs


def _join(items: list[str], comma: str = ", ") -> str:
    """ "a, b and c"; Flickr30k sentences need " , " so no token ends in "],"."""
    return items[0] if len(items) == 1 else comma.join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------------------
# The released AMC training format.

RELEASED_VG_FILES = ("vg_descriptions.json", "vg_attributes_spatial.json", "vg_attributes.json")


def released_vg_entries(image: str, regions: list, objects: list, relationships: list) -> dict[str, list]:
    """One image's VG phrases as the AMC authors' files hold them: ``{"image", "caption", "bbox"}``.

    A pure function of the raw-VG entries (no random draws, so the raw files do not change):
    region descriptions of the same box become one entry with a list of captions; attribute
    phrases (``"<attribute> <name>"``) and relation phrases (``"<subject> <predicate> <object>"``,
    the subject's box) shared by several objects become one entry with several boxes.
    """

    def xyxy(x, y, w, h) -> list:
        return [x, y, x + w, y + h]

    by_box: dict[tuple, list[str]] = {}
    for region in regions:
        by_box.setdefault(
            tuple(xyxy(region["x"], region["y"], region["width"], region["height"])), []
        ).append(region["phrase"])
    descriptions = [
        {"image": image, "caption": texts[0] if len(texts) == 1 else texts, "bbox": [list(box)]}
        for box, texts in by_box.items()
    ]

    def grouped(pairs) -> list[dict]:
        boxes: dict[str, list] = {}
        for text, box in pairs:
            if box not in boxes.setdefault(text, []):
                boxes[text].append(box)
        return [{"image": image, "caption": text, "bbox": found} for text, found in boxes.items()]

    attribute_phrases = [
        (f"{attribute} {obj['names'][0]}", xyxy(obj["x"], obj["y"], obj["w"], obj["h"]))
        for obj in objects
        for attribute in obj["attributes"]
    ]
    relation_phrases = [
        (
            f"{r['subject']['name']} {r['predicate']} {r['object']['name']}",
            xyxy(r["subject"]["x"], r["subject"]["y"], r["subject"]["w"], r["subject"]["h"]),
        )
        for r in relationships
    ]
    return {
        "vg_descriptions.json": descriptions,
        "vg_attributes_spatial.json": grouped(relation_phrases),
        "vg_attributes.json": grouped(attribute_phrases),
    }


# ---------------------------------------------------------------------------------------------
# The generator.


class _Generator:
    def __init__(self, out: Path, seed: int, scale: SynthScale):
        self.out, self.seed, self.scale = out, seed, scale
        self.jobs: list[tuple[str, Scene, int]] = []
        self.counts: dict[str, int] = {}

    def rng(self, subset: str, index: int) -> random.Random:
        # A string seed is hashed with SHA-512 by ``random``: stable across runs and platforms.
        return random.Random(f"amc-synth/{self.seed}/{subset}/{index}")

    def add_image(self, relpath: str, scene: Scene) -> None:
        path = self.out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        self.jobs.append((str(path), scene, self.scale.jpeg_quality))

    def write_json(self, relpath: str, obj, indent: int | None = None) -> None:
        path = self.out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        separators = (",", ":") if indent is None else None
        path.write_text(
            json.dumps(obj, sort_keys=True, indent=indent, separators=separators) + "\n", encoding="utf-8"
        )

    def write_text(self, relpath: str, text: str) -> None:
        path = self.out / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    # -- RefCOCO+ ---------------------------------------------------------------------------

    def refcoco(self) -> dict[str, list[int]]:
        """Write refcoco+/ and coco/train2014/; returns the COCO image ids of each split."""
        s = self.scale
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
                rng = self.rng(f"refcoco+/{split}", index)
                scene = make_scene(rng, s, repeat_shape=rng.choice(group))
                image_id = COCO_ID_BASE + len(images)
                ids_by_split[split].append(image_id)
                file_name = f"COCO_train2014_{image_id:012d}.jpg"
                self.add_image(f"coco/train2014/{file_name}", scene)
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
                    for text in self._referring_expressions(target, scene.objects, rng):
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
            self.counts[f"refcoco+_{split}_images"] = count
            self.counts[f"refcoco+_{split}_expressions"] = sum(
                len(r["sentences"]) for r in refs if r["split"] == split
            )
        categories = [{"id": i, "name": shape, "supercategory": "shape"} for shape, i in category_id.items()]
        self.write_json(
            "refcoco+/instances.json",
            {"images": images, "annotations": annotations, "categories": categories},
        )
        (self.out / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
        return ids_by_split

    def _referring_expressions(self, target: Obj, objects: list[Obj], rng: random.Random) -> list[str]:
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

    def flickr30k(self) -> dict[str, list[int]]:
        s = self.scale
        ids_by_split: dict[str, list[int]] = {}
        image_ids, entity_ids = itertools.count(FLICKR_ID_BASE), itertools.count(FLICKR_ENTITY_BASE)
        n_phrases = 0
        for split, count in (("train", s.flickr_train), ("val", s.flickr_val), ("test", s.flickr_test)):
            ids_by_split[split] = []
            for index in range(count):
                rng = self.rng(f"flickr30k/{split}", index)
                scene = make_scene(rng, s)
                image_id = next(image_ids)
                ids_by_split[split].append(image_id)
                self.add_image(f"flickr30k/flickr30k-images/{image_id}.jpg", scene)
                sentences, xml, phrases = self._flickr_image(image_id, scene, rng, entity_ids)
                n_phrases += phrases
                self.write_text(f"flickr30k/Sentences/{image_id}.txt", "\n".join(sentences) + "\n")
                self.write_text(f"flickr30k/Annotations/{image_id}.xml", xml)
            self.write_text(f"flickr30k/{split}.txt", "".join(f"{i}\n" for i in ids_by_split[split]))
            self.counts[f"flickr30k_{split}_images"] = count
        self.counts["flickr30k_marked_phrases"] = n_phrases
        return ids_by_split

    def _flickr_image(self, image_id: int, scene: Scene, rng: random.Random, entity_ids: Iterator[int]):
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
            kinds = (
                ["list", "scene"] + (["relation", "there"] if pairs else []) + (["group"] if groups else [])
            )
            kind = rng.choice(kinds)
            if kind == "list":
                chosen = rng.sample(objects, rng.randint(2, min(4, len(objects))))
                parts = [
                    mark(scene_entity, "scene", rng.choice(SCENE_PHRASES[:2])),
                    "with",
                    _join([obj_mark(o) for o in chosen], comma=" , "),
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
            names = [entity[id(obj)]] + [
                g for g, members in groups.values() if any(m is obj for m in members)
            ]
            x1, y1, x2, y2 = obj.box
            lines.append("  <object>")
            lines += [f"    <name>{n}</name>" for n in names]
            lines.append(
                f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
            )
            lines.append("  </object>")
        lines.append(f"  <object><name>{scene_entity}</name><nobndbox>0</nobndbox><scene>1</scene></object>")
        lines.append(
            f"  <object><name>{notvisual_entity}</name><nobndbox>1</nobndbox><scene>0</scene></object>"
        )
        lines.append("</annotation>")
        return sentences, "\n".join(lines) + "\n", n_phrases

    # -- Visual Genome ------------------------------------------------------------------------

    def vg(self, refcoco_ids: dict[str, list[int]], flickr_ids: dict[str, list[int]]) -> None:
        """Write vg/; some images get the coco_id / flickr_id of an evaluation image."""
        s = self.scale
        eval_coco = refcoco_ids["val"] + refcoco_ids["testA"] + refcoco_ids["testB"]
        eval_flickr = flickr_ids["val"] + flickr_ids["test"]
        image_data, regions, attributes, relationships = [], [], [], []
        released: dict[str, list] = {name: [] for name in RELEASED_VG_FILES}
        ids = {"region": itertools.count(1), "object": itertools.count(1), "relationship": itertools.count(1)}
        collisions = {"coco_eval": 0, "coco_train": 0, "flickr_eval": 0}
        for index in range(s.vg_images):
            rng = self.rng("vg", index)
            scene = make_scene(rng, s)
            image_id = index + 1
            self.add_image(f"vg/VG_100K/{image_id}.jpg", scene)
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
            image_regions, image_objects, image_relationships = self._vg_image(
                image_id, scene.objects, rng, ids
            )
            regions.append({"id": image_id, "regions": image_regions})
            attributes.append({"image_id": image_id, "attributes": image_objects})
            relationships.append({"image_id": image_id, "relationships": image_relationships})
            image_released = released_vg_entries(
                f"VG_100K/{image_id}.jpg", image_regions, image_objects, image_relationships
            )
            for name, entries in image_released.items():
                released[name] += entries
        self.write_json("vg/image_data.json", image_data)
        self.write_json("vg/region_descriptions.json", regions)
        self.write_json("vg/attributes.json", attributes)
        self.write_json("vg/relationships.json", relationships)
        for name, entries in released.items():
            self.write_json(f"amc/{name}", entries)
        self.counts.update(
            {f"released_{name.removesuffix('.json')}": len(entries) for name, entries in released.items()}
        )
        self.counts.update(
            vg_images=s.vg_images,
            vg_regions=sum(len(r["regions"]) for r in regions),
            vg_objects=sum(len(a["attributes"]) for a in attributes),
            vg_relationships=sum(len(r["relationships"]) for r in relationships),
            vg_images_with_eval_coco_id=collisions["coco_eval"],
            vg_images_with_eval_flickr_id=collisions["flickr_eval"],
            vg_images_with_train_coco_id=collisions["coco_train"],
        )

    @staticmethod
    def _vg_image(
        image_id: int, objects: list[Obj], rng: random.Random, ids: dict
    ) -> tuple[list, list, list]:
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

    # -- Pretraining captions -----------------------------------------------------------------

    def captions(self) -> None:
        items = []
        for index in range(self.scale.pretrain_images):
            rng = self.rng("captions", index)
            scene = make_scene(rng, self.scale)
            relpath = f"captions/images/{index:06d}.jpg"
            self.add_image(relpath, scene)
            objects = scene.objects
            texts = []
            for _ in range(2):  # whole-image captions listing several objects
                chosen = rng.sample(objects, rng.randint(min(3, len(objects)), len(objects)))
                listed = _join([noun_phrase(o, rng.choice(ATTRIBUTE_SETS), rng) for o in chosen])
                texts.append(rng.choice(("", "a picture with ", "an image with ")) + listed)
            for obj in rng.sample(objects, 2):  # single-object descriptions
                texts.append(describe(obj, objects, rng, article=rng.choice(("a", "the"))))
            if pairs := related_pairs(objects):
                a, pred, b = rng.choice(pairs)
                texts.append(f"{describe(a, objects, rng)} {pred} {describe(b, objects, rng, article='the')}")
            # relative to the json's own folder, like the image paths of records files
            items += [{"image": relpath.removeprefix("captions/"), "caption": text} for text in texts]
        self.write_json("captions/pretrain.json", items, indent=1)
        self.counts.update(pretrain_images=self.scale.pretrain_images, pretrain_captions=len(items))

    # -- Images -------------------------------------------------------------------------------

    def render_all(self, workers: int) -> None:
        jobs = self.jobs
        progress = dict(total=len(jobs), desc="synth images", unit="img", disable=None)
        if workers <= 1 or len(jobs) < 200:
            for job in tqdm(jobs, **progress):
                _render_job(job)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(pool.map(_render_job, jobs, chunksize=64), **progress):
                pass


def generate(out: str | os.PathLike, seed: int, scale: str | SynthScale = "ci", workers: int = 2) -> dict:
    """Write the synthetic benchmark to ``out`` (replacing an earlier one); returns SYNTH_INFO.

    ``workers`` processes draw the images; the output does not depend on it.
    """
    scale_name, params = (scale, SCALES[scale]) if isinstance(scale, str) else ("custom", scale)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "SYNTH_INFO.json").is_file():
        raise AmcError(f"{out}: exists, is not empty and holds no SYNTH_INFO.json; refusing to overwrite it")
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    started = time.monotonic()
    gen = _Generator(partial, seed, params)
    refcoco_ids = gen.refcoco()
    flickr_ids = gen.flickr30k()
    gen.vg(refcoco_ids, flickr_ids)
    gen.captions()
    vocab = vocabulary_lines()
    gen.write_text("vocab/vocab.txt", "\n".join(vocab) + "\n")
    gen.render_all(workers)
    gen.counts.update(images=len(gen.jobs), vocab_words=len(vocabulary_words()))
    info = {
        "seed": seed,
        "scale": scale_name,
        "parameters": asdict(params),
        "counts": gen.counts,
        "world": {
            "shapes": list(SHAPES),
            "colours": COLOURS,
            "sizes": {k: list(v) for k, v in SIZE_FRACTIONS.items()},
            "relations": list(RELATIONS),
            "refcoco_testA_shapes": list(REFCOCO_GROUP_A),
            "refcoco_testB_shapes": list(REFCOCO_GROUP_B),
        },
        "layout": {
            "vg": "vg/{image_data,region_descriptions,attributes,relationships}.json, vg/VG_100K/<image_id>.jpg",
            "vg_released": "amc/{vg_descriptions,vg_attributes_spatial,vg_attributes}.json (images under vg/)",
            "flickr30k": "flickr30k/{Sentences,Annotations}/<id>.{txt,xml}, flickr30k/{train,val,test}.txt, flickr30k/flickr30k-images/<id>.jpg",
            "refcoco+": "refcoco+/refs(unc).p, refcoco+/instances.json, coco/train2014/COCO_train2014_<12-digit id>.jpg",
            "captions": "captions/pretrain.json, captions/images/<n>.jpg",
            "vocab": "vocab/vocab.txt",
        },
    }
    gen.write_json("SYNTH_INFO.json", info, indent=2)  # last: its presence means complete
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log.info(
        "synth: %d images, scale %s, seed %d, %.1f s -> %s",
        len(gen.jobs),
        scale_name,
        seed,
        time.monotonic() - started,
        out,
    )
    return info


# ---------------------------------------------------------------------------------------------
# CLI.


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier synth)")
    parser.add_argument("--seed", type=nonnegative_int, required=True)
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="demo", help="how much to generate (default: demo)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="processes drawing images (output does not depend on it)",
    )


def run(args: argparse.Namespace) -> int:
    check_outputs({}, folders={"--out": args.out})
    generate(args.out, args.seed, args.scale, workers=args.workers)
    return 0


__all__ = ["SCALES", "SynthScale", "generate", "make_scene", "render", "vocabulary_lines", "vocabulary_words"]
