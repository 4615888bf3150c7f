"""No value of a configuration or a download manifest becomes shell syntax (docs/architecture.md, Guarantees).

Every string of the paper and demo configurations (values and keys, defaults included) and of
their manifests is made hostile in turn: ``;``, ``$(...)``, spaces, both quotes, and a line break.
Each one is either refused by the validation the workflow runs at start-up (a clear message,
nothing run), or accepted; then every accepted one at once goes through ``snakemake -n
--printshellcmds``, and each rendered command is checked: outside quotes there is no ``;``,
``$(``, backtick or line break, inside double quotes no ``$`` or backtick (the rules use none of
them), and every hostile text lies whole inside one word of ``shlex.split``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amc import download as amc_download
from amc import grid
from amc.io import AmcError

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")
CONFIGS = {
    "config.yaml": "amc/resources/manifest.yaml",
    "demo.yaml": "amc/resources/synthetic-manifest.yaml",
}


def hostile(index: int, newline: bool) -> str:
    return f" ;x $(touch PWNED{index}) `id` 'q\" y" + ("\nz" if newline else "")


def string_fields(node, path=()):
    """(path, kind) of every string: kind 'value' (a string value) or 'key' (a mapping key)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield (*path, key), "key"
            yield from string_fields(value, (*path, key))
    elif isinstance(node, list):
        for number, value in enumerate(node):
            yield from string_fields(value, (*path, number))
    elif isinstance(node, str):
        yield path, "value"


def mutated(node, path, kind: str, suffix: str):
    node = copy.deepcopy(node)
    parent = node
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if kind == "key":
        parent[str(last) + suffix] = parent.pop(last)
    else:
        parent[last] = parent[last] + suffix
    return node


def config_refused(config: dict) -> str | None:
    """What the workflow's start-up (common.smk) says of a configuration: None = accepted."""
    try:
        grid.check_grid(grid.resolve_paths(grid.validate_config(config)))
    except grid.GridError as error:
        return str(error)
    return None


def artifact_refused(artifact: dict, names: set[str]) -> str | None:
    """What the manifest reader says of one artifact (the workflow reads the manifest through it),
    and whether the configuration's data.layout still finds it by name."""
    try:
        parsed = amc_download.manifest._parse_artifact(artifact, "manifest: artifact")
    except AmcError as error:
        return str(error)
    return (
        None
        if parsed.name in names or not names
        else f"{parsed.name!r}: no data.layout artifact has this name"
    )


def hostile_variants(config: dict, manifest: list[dict]):
    """Every string field made hostile in turn: (refused fields, the config and manifest with every
    accepted hostile value at once, the hostile texts in them)."""
    refused, texts, accepted = {}, [], []
    fields = [("config", p, k) for p, k in string_fields(config)]
    fields += [("manifest", p, k) for p, k in string_fields(manifest)]
    layout_names = {n for layout in config["data"]["layout"].values() for n in layout.get("artifacts", [])}
    for index, (where, path, kind) in enumerate(fields):
        for newline in (True, False):
            text = hostile(index, newline)
            if where == "config":
                reason = config_refused(mutated(config, path, kind, text))
            else:
                artifact = mutated(manifest, path, kind, text)[path[0]]
                reason = artifact_refused(
                    artifact, layout_names if manifest[path[0]]["name"] in layout_names else set()
                )
            if reason is None:
                break
        if reason is not None:
            refused[(where, path, kind)] = reason
            continue
        texts.append((where, f"PWNED{index})", text))
        accepted.append((where, path, kind, text))
    # All at once: values first, then keys, deepest first (a renamed key moves what lies under it).
    documents = {"config": copy.deepcopy(config), "manifest": copy.deepcopy(manifest)}
    for where, path, kind, text in sorted(accepted, key=lambda a: (a[2] == "key", -len(a[1]))):
        documents[where] = mutated(documents[where], path, kind, text)
    return refused, documents["config"], documents["manifest"], texts


def shell_commands(output: str) -> list[tuple[str, str]]:
    """(rule, command) of every job a `snakemake -n -p` run printed."""
    commands = []
    for block in output.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        if "Shell command: " in block:
            command = block.split("Shell command: ", 1)[1]
            command = re.split(r"\n(?=\n?\[[A-Z][a-z]{2} |\n?Job stats:|This was a dry-run)", command)[0]
            if command != "None":  # a rule without a shell command (all, released)
                commands.append((rule, command))
    return commands


def unquoted_syntax(command: str) -> list[str]:
    """Shell syntax a value could make: ``;``, a line break, a backtick or ``$(`` outside quotes, and
    ``$`` or a backtick inside double quotes (shlex.quote writes a single quote as '"'"')."""
    found, state, index = [], None, 0
    while index < len(command):
        char = command[index]
        if state == "'":
            state = None if char == "'" else state
        elif state == '"':
            if char in "$`\\":
                found.append(char)
            state = None if char == '"' else state
        elif char in "'\"":
            state = char
        elif char == "\\":
            index += 1
        elif char in ";`\n" or command.startswith("$(", index):
            found.append(char)
        index += 1
    return found


def dry_run(workdir: Path, configfile: Path) -> str:
    """`snakemake -n -p all`; inputs no rule makes (the hostile source files) are created as empty files."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(REPO))
    for _ in range(12):
        result = subprocess.run(
            [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--nolock",
             "-n", "-p", "all", "--configfile", str(configfile)],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = result.stdout + result.stderr
        if result.returncode == 0:
            return output
        if "Missing input files" not in output:
            raise AssertionError(f"snakemake refused the hostile configuration:\n{output[-4000:]}")
        affected = output.split("affected files:", 1)[1].split("\n")[1:]
        for line in affected:
            if not line.startswith("        "):
                break
            path = workdir / line.strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    raise AssertionError("snakemake kept finding missing inputs")


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_hostile_values_are_refused_or_quoted(tmp_path, name):
    config = grid.validate_config(yaml.safe_load((REPO / "config" / name).read_text()))
    manifest_path = CONFIGS[name]
    config["data"]["manifest"] = manifest_path
    # strings the shipped configurations leave empty: extra evaluation arguments, a string override
    config["evaluate"]["extra_args"] = ["--limit", "100"]
    config["finetune"]["overrides"]["precision"] = "tf32"
    manifest = yaml.safe_load((REPO / manifest_path).read_text())["artifacts"]
    refused, config_h, manifest_h, texts = hostile_variants(config, manifest)

    # What must be refused, with a message naming it: names that become paths, rule names and arguments.
    refused_fields = {(where, path[0] if where == "config" else path[-1]) for where, path, _ in refused}
    assert {
        ("config", "run"),
        ("config", "methods"),
        ("config", "sweeps"),
        ("manifest", "name"),
    } <= refused_fields
    run_reason = refused[("config", ("run",), "value")]
    assert "config.run" in run_reason
    # A line break is refused in every string of the configuration (file names, commands, labels).
    assert not [text for where, _, text in texts if where == "config" and "\n" in text]

    # Everything accepted at once: the workflow renders every command with the hostile values quoted.
    workdir = tmp_path / "work"
    for folder in ("config", "amc/resources"):
        shutil.copytree(REPO / folder, workdir / folder)
    shutil.copytree(REPO / "results/paper", workdir / "results/paper")
    manifest_file = workdir / config_h["data"]["manifest"]
    manifest_file.parent.mkdir(parents=True, exist_ok=True)
    manifest_file.write_text(yaml.safe_dump({"version": 1, "artifacts": manifest_h}))
    for key in ("model_config",):  # source files the hostile config names: copies under the hostile name
        (workdir / config_h[key]).write_text((REPO / config[key]).read_text())
    for section in ("finetune", "pretrain"):
        if config_h[section].get("config"):
            (workdir / config_h[section]["config"]).write_text((REPO / config[section]["config"]).read_text())
    (workdir / config_h["table1"]["paper"]).write_text((REPO / config["table1"]["paper"]).read_text())
    configfile = workdir / "hostile.yaml"
    configfile.write_text(yaml.safe_dump(config_h, allow_unicode=True))

    output = dry_run(workdir, configfile)
    commands = shell_commands(output)
    assert len(commands) > 20
    reached, reached_rules = set(), set()
    for rule, command in commands:
        assert unquoted_syntax(command) == [], (rule, command)
        words = shlex.split(command)
        for _, marker, text in texts:
            carriers = [w for w in words if marker in w]
            # whole, as is or JSON-escaped (the resolved configuration goes to `amc report config` as JSON)
            assert all(text in w or json.dumps(text)[1:-1] in w for w in carriers), (rule, text, carriers)
            if carriers:
                reached.add(rule.split("_")[0])
                reached_rules.add(rule)
    # The hostile values did reach the commands of every stage (the check above is not vacuous).
    stages = {"prepare", "train", "evaluate", "run"} | ({"download"} if name == "config.yaml" else set())
    assert stages <= reached, reached
    assert {"evaluate", "evaluate_explainers", "html_report"} <= reached_rules, reached_rules
