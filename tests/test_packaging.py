"""The environment a GPU user creates agrees with the one dependency list (pyproject.toml)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version


@pytest.fixture(scope="module")
def pyproject(repo_root) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment(repo_root) -> dict:
    return yaml.safe_load((repo_root / "environment.yml").read_text())


def _requirements(pyproject: dict) -> dict[str, Requirement]:
    project = pyproject["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed += extra
    return {Requirement(text).name.lower(): Requirement(text) for text in listed}


def _pip_lines(environment: dict) -> list[str]:
    for item in environment["dependencies"]:
        if isinstance(item, dict) and "pip" in item:
            return item["pip"]
    raise AssertionError("environment.yml has no pip section")


def test_environment_uses_conda_forge_only(environment):
    assert environment["channels"] == ["conda-forge", "nodefaults"]
    conda_packages = [d for d in environment["dependencies"] if isinstance(d, str)]
    # Python and pip from conda; every library from pyproject.toml through pip.
    assert {re.split(r"[=<>]", d)[0] for d in conda_packages} == {"python", "pip"}


def test_environment_installs_the_repo_with_the_gpu_extras(environment, pyproject):
    editable = [line for line in _pip_lines(environment) if line.startswith("-e ")]
    assert len(editable) == 1
    extras = set(re.fullmatch(r"-e \.\[(.*)\]", editable[0]).group(1).split(","))
    assert extras == {"dev", "slurm"}
    assert extras <= set(pyproject["project"]["optional-dependencies"])


def test_pinned_packages_satisfy_the_lower_bounds_of_pyproject(environment, pyproject):
    requirements = _requirements(pyproject)
    pins = [Requirement(line) for line in _pip_lines(environment) if not line.startswith("-")]
    assert pins, "environment.yml pins torch and torchvision"
    for pin in pins:
        assert pin.name.lower() in requirements, (
            f"{pin.name} is pinned in environment.yml but not in pyproject"
        )
        (spec,) = pin.specifier
        assert spec.operator == "=="
        assert Version(spec.version) in requirements[pin.name.lower()].specifier, (
            f"environment.yml pins {pin}, outside pyproject's {requirements[pin.name.lower()]}"
        )


def test_environment_pins_the_versions_the_makefile_tests(environment, repo_root):
    makefile = (repo_root / "Makefile").read_text()
    tested = re.search(r"^TORCH_PINS := (.*)$", makefile, re.MULTILINE).group(1).split()
    pins = [line for line in _pip_lines(environment) if not line.startswith("-")]
    assert sorted(pins) == sorted(tested)


def test_every_dependency_has_a_lower_bound(pyproject):
    for name, requirement in _requirements(pyproject).items():
        assert any(s.operator in (">=", "==", "~=") for s in requirement.specifier), (
            f"{name} has no lower bound in pyproject.toml"
        )


def test_the_licence_file_named_by_pyproject_exists(pyproject, repo_root):
    assert pyproject["project"]["license"] == "BSD-3-Clause"
    for name in pyproject["project"]["license-files"]:
        assert "BSD 3-Clause" in (repo_root / name).read_text()


# --------------------------------------------------------------------------- a non-editable install

SHIPPED = ("manifest.yaml", "synthetic-manifest.yaml", "config.schema.yaml", "result.schema.json")


def _source_tree(repo_root: Path, into: Path) -> Path:
    """The files of the checkout (tracked, and new ones git does not ignore), without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (repo_root / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / name, into / name)
    return into


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(900)
def test_the_package_works_from_a_wheel(tmp_path, repo_root, ci_data):
    """Built as a wheel, installed elsewhere, run from a folder outside the checkout: the commands
    find their manifest and schemas as package data, and a checkpoint of the suite is evaluated
    with nothing but the records."""
    if shutil.which("git") is None:
        pytest.skip("git lists the checkout's files")
    source = _source_tree(repo_root, tmp_path / "source")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("amc_bench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert {f"amc/resources/{name}" for name in SHIPPED} <= set(archive.namelist())
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"  # neither the checkout nor its configs are here
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")

    def installed(*argv: str) -> str:
        result = subprocess.run(
            [sys.executable, *argv], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{argv}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    assert installed("-c", "import amc; print(amc.__file__)").startswith(str(site))
    listing = installed("-m", "amc", "download", "--list")
    assert "albef_14m" in listing and "amc_best_refcoco" in listing and "flickr30k_images" in listing
    # The workflow's validation (amc.grid.validate_config) with the shipped schema; a real-data
    # run that names no manifest gets the shipped one. The model configurations a run configuration
    # names are the user's files, relative to where the workflow runs (the explainer check reads them).
    shutil.copytree(repo_root / "config/models", elsewhere / "config/models")
    check = f"""
import yaml
from amc import grid
for name in ("config.yaml", "demo.yaml", "ci.yaml"):
    config = grid.validate_config(yaml.safe_load(open({str(repo_root / "config")!r} + "/" + name)))
    grid.check_grid(grid.resolve_paths(config))
config["data"].update(source="real", manifest=None)
manifest = grid.resolve_paths(config)["data"]["manifest"]
assert manifest.startswith({str(site)!r}) and manifest.endswith("amc/resources/manifest.yaml"), manifest
try:
    grid.validate_config({{**config, "seedz": [0]}})
except grid.GridError as error:
    print(error)
"""
    assert "Additional properties are not allowed ('seedz' was unexpected)" in installed("-c", check)
    # A checkpoint written by the installed package carries its config and vocabulary: amc evaluate
    # needs only the records, and its result validates against the shipped schema.
    make = f"""
from amc.models import ALBEF, ModelConfig
from amc.models.checkpoint import save_checkpoint
from amc.models.tokenizer import load_tokenizer
model = ALBEF(ModelConfig.from_file({str(repo_root / "config/models/tiny.yaml")!r}))
model.copy_params()
save_checkpoint("model.pt", model, vocab=load_tokenizer({str(ci_data.vocab)!r}).ids_to_tokens)
"""
    installed("-c", make)
    installed(
        "-m", "amc", "evaluate", "--checkpoint", "model.pt", "--records", str(ci_data.flickr_test),
        "--benchmark", "flickr30k", "--split", "test", "--out", "result.json", "--num-workers", "0",
    )  # fmt: skip
    validated = installed(
        "-c", "from amc.result_format import read_result; print(read_result('result.json')['format'])"
    )
    assert validated.strip() == "amc-bench-result/1"
