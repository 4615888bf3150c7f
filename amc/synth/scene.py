"""Scenes: the objects' shapes, colours and sizes, their placement on a cluttered background, the rendering."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from amc.synth.scale import SynthScale

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 215, 45),
    "purple": (145, 55, 195),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
}
# Size of an object's box side as a fraction of the image's shorter side.
SIZE_FRACTIONS = {"small": (0.12, 0.17), "large": (0.24, 0.32)}


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
