"""``tokcal synth`` and ``tokcal evaluate`` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.evaluation import evaluate

runner = CliRunner()


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "syn.parquet"
    res = runner.invoke(app, ["synth", "-o", str(out), "--n", "1500", "--vocab", "80",
                              "--domains", "news=0.7,code=1.5", "--seed", "3", "--seq-len", "30"])
    assert res.exit_code == 0, res.output
    return out


def test_synth_writes_the_table(table_path):
    t = TokenTable.read_parquet(table_path)
    assert len(t) == 1500 and t.vocab_size == 80 and t.source["domains"] == {"news": 0.7, "code": 1.5}
    assert set(t.groups["domain"].categories) == {"news", "code"}


def test_evaluate_prints_summary_and_writes_json_equal_to_library(table_path, tmp_path):
    out = tmp_path / "ev.json"
    res = runner.invoke(app, ["evaluate", str(table_path), "--slice", "group:domain", "--slice", "type",
                              "--bins", "10", "--bootstrap", "30", "--seed", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "ece" in res.output and "most miscalibrated slice values" in res.output
    d = json.loads(out.read_text())
    lib = evaluate(TokenTable.read_parquet(table_path), slices=["group:domain", "type"], bins=10,
                   bootstrap=30, seed=2).to_dict()
    assert d == lib


def test_evaluate_with_calibrator_and_html(table_path, tmp_path):
    from tokcal.calibrators import Temperature

    cal_path = tmp_path / "t.json"
    Temperature(temperature=1.3).save(cal_path)
    html = tmp_path / "r.html"
    res = runner.invoke(app, ["evaluate", str(table_path), "--calibrator", str(cal_path), "--bootstrap", "0",
                              "--json", str(tmp_path / "e.json"), "--html", str(html)])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["settings"]["calibrator"]["type"] == "temperature"
    assert html.read_text().lstrip().lower().startswith("<!doctype html")


@pytest.mark.parametrize("args,match", [
    (["evaluate", "/nonexistent/t.parquet"], "no such file"),
    (["evaluate", "TABLE", "--slice", "bogus"], "--slice must be freq, freq:predicted"),
    (["evaluate", "TABLE", "--binning", "log"], "--binning"),
    (["synth", "-o", "OUT", "--domains", "news"], "--domains"),
    (["synth", "-o", "OUT", "--n", "0"], "--n must be greater than or equal to 1, got 0"),
])
def test_bad_input_gives_error_and_exit_2(args, match, table_path, tmp_path):
    args = [str(table_path) if a == "TABLE" else str(tmp_path / "o.parquet") if a == "OUT" else a for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "error:" in res.output and match in res.output
