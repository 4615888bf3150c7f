"""The command line of the core commands: `amc train` and `amc evaluate --help`, option by option.

Their options, arguments and help texts are the commands' documented interface; the golden files
in tests/golden/ hold them. After an intended change, regenerate them with
`AMC_REGEN_GOLDEN=1 pytest tests/test_cli.py` and say why in the commit.
"""

from __future__ import annotations

import os

import pytest

from amc.cli import main as amc_main
from tests.helpers import GOLDEN


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_the_help_of_a_core_command_is_its_golden_file(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as done:
        amc_main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    golden = GOLDEN / f"cli-help-{command}.txt"
    if os.environ.get("AMC_REGEN_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_core_command_without_its_required_options_stops_with_usage(command, capsys):
    with pytest.raises(SystemExit) as done:
        amc_main([command])
    assert done.value.code == 2
    assert "the following arguments are required: " in capsys.readouterr().err
