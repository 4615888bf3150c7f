"""The environment a GPU user creates agrees with the one dependency list (pyproject.toml)."""

from __future__ import annotations

import re
import tomllib

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
