"""Plain helpers the test modules share (the fixtures themselves are in conftest.py).

One tiny model (:func:`tiny_model`, the ``config/models/tiny.yaml`` ALBEF with weights drawn from a
fixed generator), one tiny batch (:func:`tiny_batch`), one ``ci`` dataset (:func:`build_ci_data`,
served once per session by the ``ci_data`` fixture), and the writers of small raw files and run
configurations. Test modules import from here, never from each other.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from PIL import Image

from amc import grid
from amc.cli import main as amc_main
from amc.models import ALBEF, ModelConfig
from amc.objectives import StepContext, TrainBatch

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
TINY_MODEL = REPO / "config" / "models" / "tiny.yaml"
BASE_MODEL = REPO / "config" / "models" / "albef-base.yaml"
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")

# The synthetic vocabulary's (and the tiny batch's) layout: [PAD] [UNK] [CLS] [SEP] [MASK].
SPECIAL_IDS = {"pad": 0, "cls": 2, "mask": 4}


# --------------------------------------------------------------------------- the amc CLI


def run_amc(*argv) -> None:
    """``amc ARGV`` in this process; fails the test when it does not exit 0."""
    code = amc_main([str(a) for a in argv])
    assert code == 0, f"amc {' '.join(map(str, argv))} exited with {code}"


def evaluate_flickr(records, checkpoint, vocab, out, *extra) -> int:
    """``amc evaluate`` of the tiny model on Flickr30k-style records in this process; its exit code."""
    return amc_main(
        [
            "evaluate", "--checkpoint", str(checkpoint), "--model-config", str(TINY_MODEL), "--vocab", str(vocab),
            "--records", str(records), "--benchmark", "flickr30k", "--split", "test", "--out", str(out),
            "--num-workers", "0", "--images-per-batch", "3", "--phrases-per-batch", "5", *map(str, extra),
        ]
    )  # fmt: skip


def subprocess_env(**changes: str) -> dict[str, str]:
    """The environment of a child ``python -m amc`` or ``torchrun``: this checkout first, one thread."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **changes)
    env.pop("WORLD_SIZE", None)
    return env


def snakemake(
    *args: str, cwd: Path = REPO, check: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Snakemake on this checkout's Snakefile (this venv first on PATH); fails the test on a non-zero exit."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--nolock", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def job_counts(output: str) -> Counter:
    """The 'Job stats' table of a dry run: rule -> count."""
    counts: Counter = Counter()
    block = output.split("Job stats:", 1)[1].split("total", 1)[0]
    for line in block.splitlines():
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if match:
            counts[match.group(1)] = int(match.group(2))
    return counts


def planned_outputs(output: str) -> set[str]:
    """Every output file of the jobs a (non-quiet) dry run lists."""
    files: set[str] = set()
    for match in re.finditer(r"^\s+output: (.*)$", output, flags=re.MULTILINE):
        files.update(part.strip() for part in match.group(1).split(", "))
    return files


# --------------------------------------------------------------------------- the ci dataset


@dataclass
class CiData:
    root: Path  # synthetic raw data
    vocab: Path
    vg_train: Path
    captions: Path
    flickr_test: Path
    refcoco_testA: Path


def build_ci_data(base: Path) -> CiData:
    """``amc synth --scale ci`` and the records of its VG, Flickr30k test and RefCOCO+ testA splits.

    Made once: a folder holding a complete copy (``.complete`` written last) is used as it is.
    """
    raw, records = base / "synth", base / "records"
    data = CiData(
        root=raw,
        vocab=raw / "vocab",
        vg_train=records / "vg-train.jsonl",
        captions=raw / "captions" / "pretrain.json",
        flickr_test=records / "flickr30k-test.jsonl",
        refcoco_testA=records / "refcoco+-testA.jsonl",
    )
    if (base / ".complete").exists():
        return data
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(records, ignore_errors=True)
    run_amc("synth", "--out", raw, "--seed", 0, "--scale", "ci")
    run_amc("prepare", "vg", "--root", raw / "vg", "--out", data.vg_train)
    run_amc("prepare", "flickr30k", "--root", raw / "flickr30k", "--split", "test", "--out", data.flickr_test)
    run_amc(
        "prepare", "refcoco+", "--root", raw / "refcoco+", "--split", "testA", "--out", data.refcoco_testA
    )
    (base / ".complete").write_text("")
    return data


def records_subset(data: CiData, count: int, path: Path) -> Path:
    """The first ``count`` VG training records of the ci data, with absolute image paths, as a records file."""
    image_root = Path(data.vg_train).parent
    rows = []
    for line in Path(data.vg_train).read_text().splitlines()[:count]:
        row = json.loads(line)
        row["image"] = str((image_root / row["image"]).resolve())
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def write_run_config(path: Path, data: CiData, **changes) -> Path:
    """A run configuration for ``amc train`` on the ci data with the tiny model; ``a__b=v`` sets ``a.b``."""
    config = {
        "model_config": str(TINY_MODEL),
        "vocab": str(data.vocab),
        # 32 px: a 4x4 patch grid, the least the tiny model's training needs (and seconds, not minutes).
        "data": {"kind": "records", "path": str(data.vg_train), "image_res": 32, "mask_size": 16},
        # The per-step cosine: these runs are a few steps long (the released schedule is tested apart).
        "optim": {
            "lr": 1e-3,
            "min_lr": 1e-4,
            "schedule": "cosine",
            "warmup_steps": 2,
            "epochs": 50,
            "batch_size": 8,
        },
        "num_workers": 0,
        "log_every": 1,
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


# --------------------------------------------------------------------------- the tiny model and batch


def tiny_config(**changes) -> ModelConfig:
    config = ModelConfig.from_file(TINY_MODEL)
    return config.replace(**changes) if changes else config


@torch.no_grad()
def deterministic_weights(model: ALBEF, seed: int = 0) -> ALBEF:
    """Overwrite every float tensor from a fixed generator, independent of the init code.

    Golden outputs then depend on the forward computation only, not on how timm or the
    model initialise (which may change between releases).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name == "temp":
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
        if name.endswith(("LayerNorm.weight", "norm.weight", "norm1.weight", "norm2.weight")):
            tensor.copy_(1.0 + 0.1 * noise)
        elif name in ("image_queue", "text_queue"):
            tensor.copy_(torch.nn.functional.normalize(noise, dim=0))
        else:
            tensor.copy_(0.1 * noise)
    return model


def tiny_model(seed: int = 0, **changes) -> ALBEF:
    """The tiny ALBEF (``changes`` replace fields of its config), deterministic weights, momentum
    copies equal to the online model, eval mode (no dropout)."""
    model = ALBEF(tiny_config(**changes))
    deterministic_weights(model, seed)
    model.copy_params()
    return model.eval()


def tiny_batch(
    model: ALBEF, lengths=(7, 4, 10), seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, token ids and attention masks of ``len(lengths)`` texts of those lengths (padding is
    exercised; a length of 1 is [CLS] alone). ``TrainBatch(*tiny_batch(model))`` for the objectives."""
    generator = torch.Generator().manual_seed(seed)
    batch, res = len(lengths), model.config.image_res
    images = torch.randn(batch, 3, res, res, generator=generator)
    # Ids from 5 on: the tiny vocabulary's specials are 0..4 ([CLS]=2 starts each text).
    ids = torch.randint(5, model.config.text.vocab_size, (batch, max(lengths)), generator=generator)
    mask = torch.zeros(batch, max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids[:, 0] = SPECIAL_IDS["cls"]
    ids[mask == 0] = SPECIAL_IDS["pad"]
    return images, ids, mask


# The objectives' tests run the tiny model at 32 px (a 4x4 patch grid) with a 64-entry queue.
SMALL = {"image_res": 32, "queue_size": 64}


def train_batch(model: ALBEF, lengths=(6, 3, 5, 1), seed: int = 1) -> TrainBatch:
    """The tiny batch as the objectives take it (default: four texts, the last one [CLS] alone)."""
    return TrainBatch(*tiny_batch(model, lengths, seed))


def step_context(
    model: ALBEF, batch: TrainBatch, alpha: float = 0.4, needs_gradcam: bool = False
) -> StepContext:
    """The objectives' view of one training step on ``batch`` (generator seeded 0)."""
    return StepContext(model, batch, alpha, torch.Generator().manual_seed(0), needs_gradcam, SPECIAL_IDS)


def read_key_list(name: str) -> list[tuple[str, tuple[int, ...], str | None]]:
    """(name, shape, dtype or None) per line of a reference key list in tests/golden (tab separated)."""
    rows = []
    for line in (GOLDEN / name).read_text().splitlines():
        fields = line.split("\t")
        shape = tuple(int(x) for x in fields[1].split(",")) if fields[1] else ()
        rows.append((fields[0], shape, fields[2] if len(fields) > 2 else None))
    return rows


def meta_state_dict(rows) -> dict[str, torch.Tensor]:
    """A state_dict of meta tensors with the listed names, shapes and dtypes (no memory)."""
    dtypes = {"int64": torch.int64, "float32": torch.float32, None: torch.float32}
    return {name: torch.empty(shape, dtype=dtypes[dtype], device="meta") for name, shape, dtype in rows}


# --------------------------------------------------------------------------- raw Flickr30k and VG files

FLICKR_XML = """<annotation>
  <filename>{id}.jpg</filename>
  <size><width>200</width><height>100</height><depth>3</depth></size>
{objects}
</annotation>
"""


def box_object(names, xmin, ymin, xmax, ymax) -> str:
    """One ``<object>`` of a Flickr30k Entities annotation with a box."""
    names = "".join(f"<name>{n}</name>" for n in names)
    return f"  <object>{names}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"


def write_flickr(root: Path, image_id: str, sentences: list[str], objects: list[str], split: str = "test"):
    """One image of Flickr30k Entities: its sentences, its annotation, its line in ``<split>.txt``."""
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(sentences) + "\n")
    (root / "Annotations" / f"{image_id}.xml").write_text(
        FLICKR_XML.format(id=image_id, objects="\n".join(objects))
    )
    with (root / f"{split}.txt").open("a") as handle:
        handle.write(f"{image_id}\n")


def write_vg(root: Path) -> None:
    """Two images of Visual Genome's raw JSON files (regions, attributes, relationships)."""
    root.mkdir(parents=True, exist_ok=True)
    image_data = [
        {"image_id": 1, "width": 100, "height": 80, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg",
         "coco_id": 501, "flickr_id": None},
        {"image_id": 2, "width": 60, "height": 60, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg",
         "coco_id": None, "flickr_id": 900},
    ]  # fmt: skip
    regions = [
        {
            "id": 1,
            "regions": [
                {"region_id": 7, "image_id": 1, "phrase": "A red circle", "x": 10, "y": 5, "width": 20, "height": 30},
                {"region_id": 8, "image_id": 1, "phrase": "  ", "x": 10, "y": 5, "width": 20, "height": 30},
                {"region_id": 9, "image_id": 1, "phrase": "off the edge", "x": 90, "y": 5, "width": 20, "height": 30},
            ],
        },
        {
            "id": 2,
            "regions": [
                {"region_id": 10, "image_id": 2, "phrase": "sky", "x": 0, "y": 0, "width": 60, "height": 20}
            ],
        },
    ]  # fmt: skip
    attributes = [
        {
            "image_id": 1,
            "attributes": [
                {"object_id": 3, "names": ["circle"], "attributes": ["red", " small "], "x": 10, "y": 5, "w": 20,
                 "h": 30, "synsets": []},
                {"object_id": 4, "names": ["square"], "x": 50, "y": 40, "w": 10, "h": 10},  # no attributes
            ],
        }
    ]  # fmt: skip
    relationships = [
        {
            "image_id": 1,
            "relationships": [
                {
                    "relationship_id": 5,
                    "predicate": "LEFT OF",
                    "subject": {"object_id": 3, "name": "circle", "x": 10, "y": 5, "w": 20, "h": 30},
                    "object": {"object_id": 4, "names": ["square"], "x": 50, "y": 40, "w": 10, "h": 10},
                }
            ],
        },
        {"image_id": 2, "relationships": []},
    ]
    for name, data in [
        ("image_data", image_data),
        ("region_descriptions", regions),
        ("attributes", attributes),
        ("relationships", relationships),
    ]:
        (root / f"{name}.json").write_text(json.dumps(data))


# --------------------------------------------------------------------------- a fabricated run

# hits per (method, seed, benchmark-split); a 0 case is a miss (its kind below)
HITS = {
    ("albef", 0, "flickr30k-test"): [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    ("amc", 0, "flickr30k-test"): [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
    ("amc", 1, "flickr30k-test"): [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    ("vmrm_style", 0, "flickr30k-test"): [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    ("vmrm_style", 1, "flickr30k-test"): [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    ("amc_dmean0.05", 0, "flickr30k-test"): [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    ("albef", 0, "refcoco+-testA"): [1, 0, 1, 0, 1, 0, 1, 0],
    ("amc", 0, "refcoco+-testA"): [1, 1, 1, 1, 1, 1, 0, 0],
    ("amc", 1, "refcoco+-testA"): [1, 1, 1, 1, 1, 1, 1, 0],
    ("vmrm_style", 0, "refcoco+-testA"): [1, 1, 0, 0, 0, 0, 0, 0],
    ("vmrm_style", 1, "refcoco+-testA"): [1, 1, 1, 0, 0, 0, 0, 0],
    ("amc_dmean0.05", 0, "refcoco+-testA"): [1, 1, 1, 1, 0, 0, 0, 0],
    ("amc_released", 0, "flickr30k-test"): [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
    ("amc_released", 0, "refcoco+-testA"): [1, 1, 1, 1, 1, 1, 0, 0],
}
CATEGORIES = ["people", "animals"]


def run_config(paper: Path) -> dict:
    """The workflow configuration of the fabricated run ``fab`` (Table 1 against ``paper``)."""
    return {
        "run": "fab",
        "data": {"source": "synthetic", "raw_dir": "data/fab/synth", "records_dir": "data/fab/records"},
        "model_config": "config/models/tiny.yaml",
        "vocab": "{raw_dir}/vocab/vocab.txt",
        "init_checkpoint": "results/{run}/pretrain/checkpoint_final.pt",
        "finetune": {"config": "config/runs/demo-finetune.yaml"},
        "seeds": [0, 1],
        "methods": {
            "albef": {"label": "ALBEF", "kind": "none"},
            "vmrm_style": {"label": "VMRM-style", "kind": "finetune"},
            "amc": {
                "label": "AMC",
                "kind": "finetune",
                "objectives": {"amc": {"delta_mean": 0.1, "delta_max": 0.5}},
            },
            "amc_released": {
                "label": "AMC (released checkpoints)",
                "kind": "released",
                "checkpoints": {
                    "flickr30k": "{raw_dir}/amc/best_flickr.pth",
                    "refcoco+": "{raw_dir}/amc/best_refcoco.pth",
                },
            },
        },
        "sweeps": [
            {
                "base": "amc",
                "parameter": "objectives.amc.delta_mean",
                "symbol": "Δ1",
                "values": [0.05, 0.1],
                "name": "amc_dmean{value}",
                "seeds": [0],
            }
        ],
        "benchmarks": {
            "flickr30k": {"splits": ["test"], "image_res": 96},
            "refcoco+": {"splits": ["testA"], "image_res": 96},
        },
        "table1": {
            "paper": str(paper),
            "rows": [
                {"label": "VMRM-style", "method": "vmrm_style", "paper": "VMRM"},
                {"label": "ALBEF", "method": "albef", "paper": "ALBEF"},
                {"label": "AMC (fine-tuned here)", "method": "amc", "paper": "AMC"},
                {"label": "AMC (released checkpoints)", "method": "amc_released", "paper": "AMC"},
            ],
            "columns": [
                {"benchmark": "flickr30k", "split": "test", "label": "Flickr30k test"},
                {"benchmark": "refcoco+", "split": "testA", "label": "RefCOCO+ testA"},
            ],
        },
        "ablation": {"reference": "amc", "n_boot": 2000},
    }


def result_document(benchmark: str, split: str, method: str, seed: int, cases: list[dict]) -> dict:
    """An ``amc evaluate`` result of these cases, every summary field filled in (result.schema.json)."""
    from amc.result_format import RESULT_FORMAT

    hits = sum(case["hit"] for case in cases)
    summary = {
        "benchmark": benchmark,
        "split": split,
        "method": method,
        "seed": seed,
        "accuracy": hits / len(cases),
        "n_cases": len(cases),
        "n_hits": hits,
        "skipped": {},
        "skipped_in_prepare": None,
        "misses": {},
        "image_res": 96,
        "resize": "pil-bicubic",
        "max_words": 30,
        "records": f"data/fab/records/{benchmark}-{split}.jsonl",
        "checkpoint": "fabricated.pt",
        "checkpoint_sha256": "0" * 64,
        "model_config": {},
        "code_version": "fabricated",
        "device": "cpu",
        "created": "2026-01-01T00:00:00+00:00",
    }
    return {"format": RESULT_FORMAT, "summary": summary, "cases": cases}


def fabricate_run(root: Path, with_metrics: bool = True) -> tuple[Path, dict]:
    """results/fab/ under ``root``: eval JSONs, metrics.jsonl, workflow-config.json (numbers one can
    check by hand: on Flickr30k test AMC hits 8 (seed 0) and 6 (seed 1) of 10 cases, ALBEF 5)."""
    run_dir = root / "results" / "fab"
    config = grid.resolved_config(grid.validate_config(run_config(REPO / "results/paper/table1.csv")))
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "workflow-config.json").write_text(json.dumps(config))
    for (method, seed, name), hits in HITS.items():
        benchmark, split = name.rsplit("-", 1)
        cases = []
        for i, hit in enumerate(hits):
            miss = None if hit else ("other_object" if i % 2 == 0 else "background")
            cases.append(
                {
                    "id": f"{benchmark}/{split}/{i}",
                    "point": [10 + i, 20],
                    "hit": bool(hit),
                    "miss": miss,
                    "category": CATEGORIES[i % 2],
                }
            )
        path = run_dir / grid.eval_file(method, seed, benchmark, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result_document(benchmark, split, method, seed, cases)))
    if with_metrics:
        for method, seeds in (("amc", [0, 1]), ("vmrm_style", [0, 1]), ("amc_dmean0.05", [0])):
            for seed in seeds:
                path = root / grid.train_metrics_path(config, method, seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                lines = [
                    {
                        "step": s,
                        "epoch": 0,
                        "lr": 1e-4,
                        "loss": 3.0 - 0.1 * s + 0.05 * seed,
                        "loss_itc": 1.0,
                        "loss_amc": 0.5,
                    }
                    for s in range(0, 20, 5)
                ]
                path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir, config


# (method, seed, explainer slug) -> per-case (hit, energy) on flickr30k test; None: no positive mass
EXPLAINER_CASES = {
    ("albef_vg", 0, "gradcam-layer1"): [(1, 0.5), (0, 0.1), (0, None), (0, 0.3)],
    ("amc", 0, "gradcam-layer1"): [(1, 0.6), (1, 0.6), (0, 0.2), (0, 0.2)],
    ("amc", 1, "gradcam-layer1"): [(1, 0.8), (1, 0.4), (1, 0.4), (0, 0.0)],
    ("albef_vg", 0, "gradcam-layer2"): [(1, 0.2), (1, 0.2), (0, 0.2), (0, 0.2)],
    ("amc", 0, "gradcam-layer2"): [(1, 0.2), (0, 0.2), (0, 0.2), (0, 0.2)],
    ("amc", 1, "gradcam-layer2"): [(1, 0.2), (0, 0.2), (0, 0.2), (0, 0.2)],
    ("albef_vg", 0, "rollout"): [(0, 0.1), (0, 0.1), (0, 0.1), (0, 0.1)],
    ("amc", 0, "rollout"): [(0, 0.1), (0, 0.1), (0, 0.1), (1, 0.1)],
    ("amc", 1, "rollout"): [(0, 0.1), (0, 0.1), (0, 0.1), (1, 0.1)],
}
EXPLAINERS = {
    "gradcam-layer1": {"name": "gradcam", "layer": 1},
    "gradcam-layer2": {"name": "gradcam", "layer": 2},
    "rollout": {"name": "rollout"},
}


def fabricate_explainer_results(run_dir: Path, config: dict) -> None:
    """eval_explainers/ results of EXPLAINER_CASES at the grid's own paths."""
    for (method, seed, slug), cases in EXPLAINER_CASES.items():
        path = run_dir.parent.parent / grid.explainer_eval_path(
            config, method, seed, "flickr30k", "test", slug
        )
        rows = [
            {"id": f"flickr30k/test/{i}", "point": [1, 1], "hit": bool(hit), "miss": None if hit else "background",
             "category": None, "energy": energy}
            for i, (hit, energy) in enumerate(cases)
        ]  # fmt: skip
        document = result_document("flickr30k", "test", method, seed, rows)
        document["summary"].update(explainer=EXPLAINERS[slug], model_config={"gradcam_layer": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))


def slow_reference_gradcam(model, image_embeds, ids, mask):
    """One sample at a time, the released code's way: hook on P, backward, loops."""
    maps = []
    h, w = model.image_grid
    for i in range(ids.shape[0]):
        saved = {}
        text = model.encode_text(ids[i : i + 1], mask[i : i + 1])
        fused = model.fuse(
            text, mask[i : i + 1], image_embeds[i : i + 1].detach(), capture_cross_attention=True
        )
        probs = fused.cross_attention
        probs.register_hook(lambda grad, saved=saved: saved.update(grad=grad))
        model.zero_grad()
        model.itm_head(fused.hidden_states[:, 0])[0, 1].backward()
        grad = saved["grad"]
        heads, length = probs.shape[1], probs.shape[2]
        cam = torch.zeros(h, w, dtype=probs.dtype)
        for head in range(heads):
            for t in range(length):  # ALL positions: padding adds zeros but counts in the mean
                if mask[i, t]:
                    cam += (probs[0, head, t, 1:] * grad[0, head, t, 1:].clamp(min=0)).reshape(h, w).detach()
        maps.append(cam / (heads * length))
    model.zero_grad(set_to_none=True)
    return torch.stack(maps)


# --------------------------------------------------------------------------- RefCOCO+ raw files


def write_refcoco(root: Path, refs, instances=None):
    root.mkdir(parents=True, exist_ok=True)
    instances = instances or {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 1, "area": 1200, "iscrowd": 0},
            {
                "id": 11,
                "image_id": 1,
                "bbox": [50.5, 10, 20, 20],
                "category_id": 2,
                "area": 400,
                "iscrowd": 0,
            },
            {"id": 12, "image_id": 2, "bbox": [5, 5, 0, 10], "category_id": 2, "area": 0, "iscrowd": 0},
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 2, "name": "dog", "supercategory": "animal"},
        ],
    }
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


def ref(ref_id, ann_id, image_id, split, category_id, *sentences):
    sents = [
        {"sent": s, "tokens": s.split(), "raw": s, "sent_id": ref_id * 100 + i}
        for i, s in enumerate(sentences)
    ]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "category_id": category_id,
        "sentences": sents,
        "sent_ids": [s["sent_id"] for s in sents],
    }


REFS = [
    ref(1, 10, 1, "testA", 1, "man in red", "guy on left of dog"),
    ref(2, 11, 1, "testB", 2, "brown dog"),
    ref(3, 12, 2, "val", 2, "flat dog"),  # degenerate box
    ref(4, 10, 1, "train", 1, "", "person"),  # one empty sentence
]


# ------------------------------------------------- the AMC authors' VG phrase files (amc prepare vg --format released)


def write_images(images: Path) -> None:
    for relpath, size in [
        ("VG_100K/1.jpg", (100, 80)),
        ("VG_100K_2/2.jpg", (60, 50)),
        ("more/5.jpg", (40, 30)),
    ]:
        (images / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 120, 30)).save(images / relpath)
    (images / "VG_100K/9.jpg").write_bytes(b"")  # a zero-byte file: unreadable


DESCRIPTIONS = [
    # 0: a list of captions; the path as stored works as is
    {"image": "VG_100K/1.jpg", "caption": ["a red car", "the car"], "bbox": [[10, 10, 30, 40]]},
    # 1: the authors' absolute path (found by its last two parts); one box pokes outside the 60x50 image
    {
        "image": "/home/author/vg/VG_100K_2/2.jpg",
        "caption": "a tree",
        "bbox": [[-5.7, 3.2, 70.9, 20.5], [10, 10, 20, 20]],
    },
    # 2: another folder (found by its file name under VG_100K_2/); every box empty after clipping
    {"image": "images/2.jpg", "caption": "a dog", "bbox": [[5, 5, 5, 9], [100, 2, 120, 1]]},
    # 3: one empty box among a good one: only the good one is kept
    {"image": "VG_100K/1.jpg", "caption": "mixed", "bbox": [[1, 1, 1.5, 5], [20, 20, 40, 40]]},
    # 4: no boxes at all
    {"image": "VG_100K/1.jpg", "caption": "no box", "bbox": []},
    # 5: no box holds four finite numbers
    {"image": "VG_100K/1.jpg", "caption": "bad numbers", "bbox": [[1, "x", 3, 4], [1, 2, float("inf"), 4]]},
    # 6, 7: an image that is nowhere, an image that cannot be read
    {"image": "VG_100K/404.jpg", "caption": "lost", "bbox": [[1, 1, 5, 5]]},
    {"image": "VG_100K/9.jpg", "caption": "broken", "bbox": [[1, 1, 5, 5]]},
]
SPATIAL = [
    {"image": "VG_100K/1.jpg", "caption": "car left of tree", "bbox": [[0, 0, 100, 80]]},
    # found only by its last two path parts (a folder other than VG_100K/, VG_100K_2/)
    {"image": "/home/author/vg/more/5.jpg", "caption": "cat on mat", "bbox": [[0, 0, 10, 10]]},
]
ATTRIBUTES = [
    {"image": "VG_100K/1.jpg", "caption": "red car", "bbox": [[10.9, 10.1, 30.99, 40.5]]},
    {"image": "VG_100K/1.jpg", "caption": ["", "parked car"], "bbox": [[10, 10, 30, 40]]},
]
