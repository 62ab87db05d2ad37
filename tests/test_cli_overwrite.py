"""No output destroys an input: every command refuses (exit 2) an output that is, or lies inside, an input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokcal import synthetic
from tokcal.calibrators import Temperature
from tokcal.cli import app

runner = CliRunner()


def _digest(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ow")
    synthetic.make_table(600, 60, seed=1).write_parquet(d / "t.parquet")
    ds = d / "ds"
    synthetic.make_table(300, 60, seed=2).write_parquet(ds / "part-00000.parquet")
    synthetic.make_table(300, 60, seed=3).write_parquet(ds / "part-00001.parquet")
    Temperature(temperature=1.3).save(d / "cal.json")
    res = runner.invoke(app, ["evaluate", str(d / "t.parquet"), "--bootstrap", "0", "--json", str(d / "ev.json")])
    assert res.exit_code == 0, res.output
    os.link(d / "t.parquet", d / "hard.parquet")
    os.symlink(d / "cal.json", d / "sym.json")
    (d / "sub").mkdir()
    return d


CASES = {
    "fit over its table": ["fit", "{d}/t.parquet", "-o", "{d}/t.parquet"],
    "fit into its dataset": ["fit", "{d}/ds", "-o", "{d}/ds/part-00001.parquet"],
    "fit over a hard link of its table": ["fit", "{d}/t.parquet", "-o", "{d}/hard.parquet"],
    "fit to the dataset directory": ["fit", "{d}/ds", "-o", "{d}/ds"],
    "evaluate json over calibrator": ["evaluate", "{d}/t.parquet", "-c", "{d}/cal.json", "--json", "{d}/cal.json"],
    "evaluate json over calibrator symlink": ["evaluate", "{d}/t.parquet", "-c", "{d}/sym.json", "--json",
                                              "{d}/cal.json"],
    "evaluate html over table": ["evaluate", "{d}/t.parquet", "--html", "{d}/sub/../t.parquet"],
    "evaluate json and html the same": ["evaluate", "{d}/t.parquet", "--json", "{d}/o", "--html", "{d}/o"],
    "report over its evaluation": ["report", "{d}/ev.json", "-o", "{d}/ev.json"],
    "report over a named evaluation": ["report", "a={d}/ev.json", "-o", "{d}/ev.json"],
    "import-logprobs into its input": ["import-logprobs", "{d}/ev.json", "-o", "{d}/ev.json"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_over_input_is_refused(inputs, name):
    before = _digest(inputs)
    args = [a.format(d=inputs) for a in CASES[name]]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and ("destroy" in res.output or "same path" in res.output), res.output
    assert _digest(inputs) == before
    assert not (inputs / "o").exists()


def test_outputs_beside_inputs_are_fine(inputs, tmp_path):
    res = runner.invoke(app, ["fit", str(inputs / "ds"), "-o", str(tmp_path / "ds-cal.json"), "--holdout", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ds-cal.json").exists()
