"""Data and checkpoints the engine tests share: the ``ci`` synthetic benchmark, prepared once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from amc.cli import main as amc_main

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "config" / "models" / "tiny.yaml"


@dataclass
class CiData:
    root: Path  # synthetic raw data
    vocab: Path
    vg_train: Path
    captions: Path
    flickr_test: Path
    refcoco_testA: Path


def run_amc(*argv: str) -> None:
    code = amc_main([str(a) for a in argv])
    assert code == 0, f"amc {' '.join(map(str, argv))} exited with {code}"


@pytest.fixture(scope="session")
def ci_data(tmp_path_factory) -> CiData:
    base = tmp_path_factory.mktemp("ci-data")
    raw = base / "synth"
    run_amc("synth", "--out", raw, "--seed", 0, "--scale", "ci")
    records = base / "records"
    run_amc("prepare", "vg", "--root", raw / "vg", "--out", records / "vg-train.jsonl")
    run_amc(
        "prepare",
        "flickr30k",
        "--root",
        raw / "flickr30k",
        "--split",
        "test",
        "--out",
        records / "flickr30k-test.jsonl",
    )
    run_amc(
        "prepare",
        "refcoco+",
        "--root",
        raw / "refcoco+",
        "--split",
        "testA",
        "--out",
        records / "refcoco+-testA.jsonl",
    )
    return CiData(
        root=raw,
        vocab=raw / "vocab",
        vg_train=records / "vg-train.jsonl",
        captions=raw / "captions" / "pretrain.json",
        flickr_test=records / "flickr30k-test.jsonl",
        refcoco_testA=records / "refcoco+-testA.jsonl",
    )
