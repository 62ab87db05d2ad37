"""``tokcal fit``: every method writes a loadable calibrator and prints held-out before/after."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from tokcal import load_calibrator, synthetic
from tokcal.calibrators import Temperature, split_by_sequence
from tokcal.cli import app
from tokcal.table import TokenTable

runner = CliRunner()


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "t.parquet"
    synthetic.make_table(4000, 200, domains={"a": 0.5, "b": 0.8}, seed=3).write_parquet(path)
    return path


@pytest.mark.parametrize("method,extra", [
    ("temperature", []), ("group", ["--by", "domain"]), ("adaptive", ["--by", "domain"]), ("histogram", []),
    ("isotonic", []), ("beta", []), ("selective", ["--threshold", "0.6"]), ("conformal", ["--alpha", "0.2"]),
])
def test_fit_every_method(table_path, tmp_path, method, extra):
    out = tmp_path / "c.json"
    res = runner.invoke(app, ["fit", str(table_path), "--method", method, "-o", str(out), "--bootstrap", "20",
                              *extra])
    assert res.exit_code == 0, res.output
    cal = load_calibrator(out)
    assert json.loads(out.read_text())["type"] == cal.type_name
    if method == "conformal":
        assert "coverage" in res.output
    else:
        assert "before" in res.output and "after" in res.output and "ece" in res.output


def test_fit_matches_library_on_the_same_split(table_path, tmp_path):
    out = tmp_path / "t.json"
    res = runner.invoke(app, ["fit", str(table_path), "-o", str(out), "--holdout", "0.25", "--seed", "5"])
    assert res.exit_code == 0, res.output
    train, _ = split_by_sequence(TokenTable.read_parquet(table_path), 0.25, seed=5)
    assert load_calibrator(out).temperature == pytest.approx(Temperature().fit(train).temperature, rel=1e-12)
    res = runner.invoke(app, ["fit", str(table_path), "-o", str(out), "--holdout", "0"])
    assert res.exit_code == 0 and "held out" not in res.output


def test_fit_before_after_equal_tokcal_evaluate(table_path, tmp_path):
    """The held-out printout of ``tokcal fit`` is what ``tokcal evaluate`` reports on the held-out split."""
    out = tmp_path / "t.json"
    res = runner.invoke(app, ["fit", str(table_path), "-o", str(out), "--holdout", "0.3", "--seed", "2",
                              "--bins", "12", "--bootstrap", "30"], terminal_width=200)
    assert res.exit_code == 0, res.output
    _, test = split_by_sequence(TokenTable.read_parquet(table_path), 0.3, seed=2)
    test_path = tmp_path / "test.parquet"
    test.write_parquet(test_path)
    printed = {}
    for line in res.output.splitlines():
        m = re.match(r"\W*(ece|nll|brier|accuracy)\W+" + r"\W+".join([r"([0-9.]+) \[([0-9.]+), ([0-9.]+)\]"] * 2),
                     line)
        if m:
            printed[m.group(1)] = [float(x) for x in m.groups()[1:]]
    assert set(printed) == {"ece", "nll", "brier", "accuracy"}, res.output
    for col, cal in ((0, []), (3, ["--calibrator", str(out)])):
        ev_path = tmp_path / f"ev{col}.json"
        res = runner.invoke(app, ["evaluate", str(test_path), *cal, "--bins", "12", "--bootstrap", "30",
                                  "--seed", "2", "--json", str(ev_path)])
        assert res.exit_code == 0, res.output
        o = json.loads(ev_path.read_text())["overall"]
        for key, vals in printed.items():
            assert vals[col:col + 3] == [round(o[key], 4), round(o["ci"][key][0], 4), round(o["ci"][key][1], 4)], key


def test_fit_help_lists_every_method_at_80_columns():
    from tokcal.cli.fit_cmd import METHODS

    res = runner.invoke(app, ["fit", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    text = " ".join(res.output.split())
    for method in METHODS:
        assert re.search(rf"\b{method}\b", text), (method, res.output)
    assert "…" not in res.output


def test_fit_errors_are_friendly(table_path, tmp_path):
    res = runner.invoke(app, ["fit", str(table_path), "--method", "magic", "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "magic" in res.output
    res = runner.invoke(app, ["fit", str(table_path), "--method", "group", "--by", "nope", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(app, ["fit", str(tmp_path / "absent.parquet"), "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "absent.parquet" in res.output
