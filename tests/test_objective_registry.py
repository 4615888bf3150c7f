"""The objective registry: ``amc`` never imports ``baselines``; a run configuration names a
baseline's objective by its class (``class: "module:Class"``), and that run trains."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amc.io import AmcError
from amc.objectives import OBJECTIVES, Objective, ObjectiveOutput, build_objectives, objective_class

REPO = Path(__file__).resolve().parent.parent
VMRM_CONTRASTIVE = "baselines.vmrm_style:VmrmContrastive"


def _python(code: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported yet) with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_no_amc_module_imports_baselines_even_inside_a_function():
    """A static scan, so a lazy ``import baselines`` inside a function is caught too."""
    offenders = []
    for path in sorted((REPO / "amc").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] == "baselines"
            ]
    assert offenders == []


@pytest.mark.subprocess
def test_importing_every_amc_module_and_building_amc_objectives_leaves_baselines_unimported():
    code = """
import importlib, json, pkgutil, sys
import amc
names = [m.name for m in pkgutil.walk_packages(amc.__path__, "amc.")]
for name in names:
    importlib.import_module(name)
from amc.objectives import build_objectives
from amc.run_config import load_run_config
config = load_run_config(None, ["model_config=m.yaml", "vocab=v.txt", "data.path=d.jsonl"])
built = [o.name for o in build_objectives(config.method.objectives)]
print(json.dumps({"modules": len(names), "built": built,
                  "baselines": sorted(m for m in sys.modules if m.split(".")[0] == "baselines")}))
"""
    run = _python(code)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["modules"] > 50  # the walk found the package (amc.objectives.*, amc.bench.*, ...)
    assert result["built"] == ["itc", "itm", "mlm", "amc"]
    assert result["baselines"] == []


@pytest.mark.subprocess
def test_a_baseline_objective_joins_by_its_class_from_a_fresh_process():
    """Without ``class`` a fresh process does not know the name; with it, building imports the module."""
    code = f"""
import json, sys
from amc.io import AmcError
from amc.objectives import build_objectives
from amc.run_config import load_run_config
try:
    build_objectives({{"vmrm_contrastive": {{"weight": 1.0}}}})
    bare = "built"
except AmcError as error:
    bare = str(error)
before = "baselines.vmrm_style" in sys.modules
base = ["model_config=m.yaml", "vocab=v.txt", "data.path=d.jsonl", "data.kind=captions",
        'method.objectives={{"itc": {{}}}}',
        "method.objectives.vmrm_contrastive.class={VMRM_CONTRASTIVE}",
        "method.objectives.vmrm_contrastive.top_k=2"]
config = load_run_config(None, base)
objectives = build_objectives(config.method.objectives)
print(json.dumps({{"bare": bare, "before": before, "after": "baselines.vmrm_style" in sys.modules,
                  "built": [[type(o).__module__, o.name] for o in objectives],
                  "top_k": objectives[1].top_k,
                  "resolved": config.method.objectives["vmrm_contrastive"]}}))
"""
    run = _python(code)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert "unknown objective 'vmrm_contrastive'" in result["bare"] and "class" in result["bare"]
    assert result["before"] is False and result["after"] is True
    assert result["built"] == [["amc.objectives.albef", "itc"], ["baselines.vmrm_style", "vmrm_contrastive"]]
    assert result["top_k"] == 2  # the other keys of the entry are the objective's hyperparameters
    assert result["resolved"] == {"class": VMRM_CONTRASTIVE, "top_k": 2}


class UnregisteredProbe(Objective):
    """An objective no module registers: the run configuration's name becomes its name."""

    def __init__(self, weight: float = 1.0, scale: float = 1.0):
        super().__init__(weight)
        self.scale = scale

    def __call__(self, ctx) -> ObjectiveOutput:  # pragma: no cover - never trained here
        raise NotImplementedError


class AnotherProbe(UnregisteredProbe):
    """Another unregistered objective, for the name clash."""


class NotAnObjective:
    pass


def test_a_class_no_module_registers_is_registered_under_its_entry_name(monkeypatch):
    # As if for the first time in this process (an earlier test, or the clean run a mutation test
    # forks from, may have registered it already).
    monkeypatch.delitem(OBJECTIVES, "registry_probe", raising=False)
    if "name" in vars(UnregisteredProbe):
        monkeypatch.delattr(UnregisteredProbe, "name")
    target = f"{__name__}:UnregisteredProbe"
    (probe,) = build_objectives({"registry_probe": {"class": target, "scale": 3.0}})
    assert isinstance(probe, UnregisteredProbe) and probe.scale == 3.0 and probe.weight == 1.0
    assert probe.name == "registry_probe" and OBJECTIVES["registry_probe"] is UnregisteredProbe
    assert objective_class("registry_probe") is UnregisteredProbe  # now also by its name alone
    (again,) = build_objectives({"registry_probe": {"class": target}})  # the same class again: fine
    assert isinstance(again, UnregisteredProbe)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"x_objective": {"class": "baselines.vmrm_style"}}, "must be 'module:Class'"),
        ({"x_objective": {"class": "baselines.vmrm_style:"}}, "must be 'module:Class'"),
        ({"x_objective": {"class": ":VMRMContrastive"}}, "must be 'module:Class'"),
        # the class is what follows the first colon
        ({"x_objective": {"class": f"{VMRM_CONTRASTIVE}:x"}}, "is not an Objective class"),
        (
            {"x_objective": {"class": "no_such_package.module:Thing"}},
            "cannot import 'no_such_package.module'",
        ),
        ({"x_objective": {"class": "baselines.vmrm_style:NoSuchClass"}}, "is not an Objective class"),
        ({"x_objective": {"class": f"{__name__}:NotAnObjective"}}, "is not an Objective class"),
        # a class its module registers keeps that name
        ({"my_contrastive": {"class": VMRM_CONTRASTIVE}}, "is the objective 'vmrm_contrastive'"),
        # a built-in name is not taken over by another class
        ({"itc": {"class": f"{__name__}:AnotherProbe"}}, "the name 'itc' is taken"),
        ({"vmrm_contrastive": {"class": VMRM_CONTRASTIVE, "top_k": 0}}, "top_k must be an integer"),
    ],
)
def test_bad_class_entries_are_errors_that_name_the_objective(entry, message):
    with pytest.raises(AmcError, match="objective") as error:
        build_objectives(entry)
    assert message in str(error.value)


def test_an_objective_switched_off_is_not_imported():
    assert [
        o.name for o in build_objectives({"itc": {}, "x_off": {"class": "no_such:Thing", "weight": 0}})
    ] == ["itc"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_demo_vmrm_style_objectives_train_in_a_fresh_amc_train(tmp_path):
    """`amc train` in its own process, with config/demo.yaml's vmrm_style objectives (named by class)."""
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    vmrm = demo["methods"]["vmrm_style"]["objectives"]
    assert {entry["class"] for entry in vmrm.values()} == {
        "baselines.vmrm_style:VmrmContrastive",
        "baselines.vmrm_style:VmrmConsistency",
    }
    objectives = {"itc": {"weight": 1.0}, "itm": {"weight": 1.0}, **vmrm}
    synth, out = tmp_path / "synth", tmp_path / "out"
    argv = [
        "train", "--out", str(out),
        f"model_config={REPO / 'config' / 'models' / 'tiny.yaml'}",
        f"vocab={synth / 'vocab' / 'vocab.txt'}",
        "init_checkpoint=null", "data.kind=captions", f"data.path={synth / 'captions' / 'pretrain.json'}",
        "data.image_res=32", "data.mask_size=32", "optim.batch_size=8", "optim.max_steps=2",
        "optim.schedule=cosine", "optim.warmup_steps=0", "num_workers=0", "log_every=1",
        "method.name=vmrm_style", f"method.objectives={json.dumps(objectives)}",
    ]  # fmt: skip
    code = f"""
import sys
from amc.cli import main
assert main(["synth", "--out", {str(synth)!r}, "--seed", "0", "--scale", "ci", "--workers", "1"]) == 0
sys.exit(main({argv!r}))
"""
    run = _python(code)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss_itc", "loss_itm", "loss_vmrm_contrastive", "loss_vmrm_consistency"} <= set(rows[-1])
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert (
        resolved["method"]["objectives"]["vmrm_consistency"]["class"]
        == "baselines.vmrm_style:VmrmConsistency"
    )


def test_an_objective_class_without_its_own_init_counts_once():
    class Plain(Objective):
        def __call__(self, ctx) -> ObjectiveOutput:  # pragma: no cover - never trained here
            raise NotImplementedError

    assert Plain().weight == 1.0 and Plain(weight=0.5).weight == 0.5
