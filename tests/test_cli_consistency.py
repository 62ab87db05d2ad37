"""The command line reads alike everywhere: usage lines, flags, output options, version, error wording."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import tokcal
from tokcal import load_calibrator, synthetic
from tokcal.cli import app

runner = CliRunner()
COMMANDS = ("collect", "import-logprobs", "evaluate", "synth", "fit", "check", "report", "annotate", "generate",
            "demo")


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"tokcal {tokcal.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_clean_usage_and_flag_types(command):
    res = runner.invoke(app, [command, "--help"], terminal_width=160)
    assert res.exit_code == 0, res.output
    usage = next(line for line in res.output.splitlines() if "Usage:" in line)
    assert re.fullmatch(rf"\s*Usage: (root|tokcal) {command} \[OPTIONS\]( \[?[A-Z_]+(\.\.\.)?\]?)*\s*", usage), usage
    for noise in ("{", "<bool>", "<list[", "<path>", "<str>", "<int>"):
        assert noise not in res.output, (noise, res.output)


def test_a_flag_given_a_value_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["collect", str(tmp_path), "x.txt", "--paragraphs", "true", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--paragraphs is a flag and takes no value" in " ".join(res.output.split())


def test_fit_takes_out_and_the_old_output_spelling(tmp_path):
    path = tmp_path / "t.parquet"
    synthetic.make_table(600, 50, seed=0).write_parquet(path)
    for spelling in ("-o", "--out", "--output"):
        out = tmp_path / f"c{spelling.strip('-')}.json"
        res = runner.invoke(app, ["fit", str(path), spelling, str(out), "--holdout", "0"])
        assert res.exit_code == 0, res.output
        assert load_calibrator(out).temperature > 0


def test_errors_name_flags_not_python_arguments(tmp_path):
    path = tmp_path / "t.parquet"
    synthetic.make_table(600, 50, seed=0).write_parquet(path)
    res = runner.invoke(app, ["check", str(path), "--max-regression", "0.1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--baseline and --max-regression go together" in text, text
    assert "max_regression" not in text
