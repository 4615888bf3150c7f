"""The folder being written: each image's RNG, the JSON and text files, the images to draw, the counts."""

from __future__ import annotations

import json
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from amc.synth.scale import SynthScale
from amc.synth.scene import Scene, render


class SynthOutput:
    """The files of one ``amc synth`` run under ``out``; every writer (one per format) adds to it."""

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


def _render_job(job: tuple[str, Scene, int]) -> None:
    path, scene, quality = job
    render(scene).save(path, format="JPEG", quality=quality)
