"""How much ``amc synth`` generates, and the generator's knobs: :class:`SynthScale`, the named :data:`SCALES`."""

from __future__ import annotations

from dataclasses import dataclass


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
