"""``tokcal check``: exit codes and messages on passing and failing synthetic tables.

Tables come from :mod:`tokcal.synthetic` with known truth: beta* = 1 is calibrated, beta* = 0.5 is
over-confident (its ideal temperature is 2). Printed ECEs are compared with a numpy binned ECE.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import tokcal
from tokcal.calibrators import Temperature
from tokcal.cli import app
from tokcal.probs import token_probs
from tokcal.synthetic import make_table

runner = CliRunner()
SMALL = {"n_tokens": 4000, "vocab_size": 300, "seq_len": 40}


def reference_ece(table, temperature: float = 1.0, bins: int = 15, rows=None) -> float:
    """Equal-width top-label ECE in plain numpy."""
    p = token_probs(table, temperature=temperature)
    keep = table.labeled if rows is None else table.labeled & rows
    c = np.asarray(p.confidence)[keep]
    a = (np.asarray(p.predicted) == table.label)[keep].astype(float)
    b = np.minimum((c * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, a, minlength=bins) - np.bincount(b, c, minlength=bins))
    return float(gap.sum() / n.sum())


def flat(text: str) -> str:
    return " ".join(text.split())


def printed(output: str, pattern: str) -> float:
    m = re.search(pattern, flat(output))
    assert m, output
    return float(m.group(1))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("check")
    made = {"good": make_table(**SMALL, beta_star=1.0, seed=1),
            "over": make_table(**SMALL, beta_star=0.5, seed=2),
            "domains": make_table(**SMALL, domains={"a": 1.0, "b": 0.4}, seed=3)}
    paths = {}
    for name, t in made.items():
        paths[name] = d / f"{name}.parquet"
        t.write_parquet(paths[name])
    cal = d / "t2.json"
    Temperature(temperature=2.0).save(cal)
    paths["t2"] = cal
    return made, paths


def check(*args) -> tuple[int, str]:
    res = runner.invoke(app, ["check", *map(str, args), "--bootstrap", "20"])
    return res.exit_code, res.output


def test_passing_table(tables):
    made, paths = tables
    code, out = check(paths["good"], "--max-ece", 0.1)
    assert code == 0, out
    value = printed(out, r"ok ece = ([\d.]+) \(95% CI [\d.]+ to [\d.]+\) <= --max-ece 0.1")
    assert value == pytest.approx(reference_ece(made["good"]), abs=5e-5)
    assert "check passed" in out and "signature: ece|" in flat(out)


def test_failing_table_names_metric_value_and_limit(tables):
    made, paths = tables
    expected = reference_ece(made["over"])
    assert expected > 0.05  # beta* = 0.5 is clearly over-confident
    code, out = check(paths["over"], "--max-ece", 0.05)
    assert code == 1, out
    value = printed(out, r"FAIL ece = ([\d.]+) \(95% CI [\d.]+ to [\d.]+\) exceeds --max-ece 0.05")
    assert value == pytest.approx(expected, abs=5e-5)
    assert "check failed: 1 condition not met" in flat(out)


def test_calibrator_is_applied(tables):
    made, paths = tables
    code, out = check(paths["over"], "--calibrator", paths["t2"], "--max-ece", 0.05)
    assert code == 0, out
    value = printed(out, r"ok ece = ([\d.]+)")
    assert value == pytest.approx(reference_ece(made["over"], temperature=2.0), abs=5e-5)
    assert value < reference_ece(made["over"]) / 2


def test_other_metric(tables):
    _, paths = tables
    code, out = check(paths["good"], "--max-ece", 0.1, "--metric", "ece_debiased")
    assert code == 0 and "ok ece_debiased = " in flat(out), out


def test_slice_limits(tables):
    made, paths = tables
    t = made["domains"]
    dom = t.groups["domain"]
    in_b = dom.codes == dom.categories.index("b")
    ece_a, ece_b = reference_ece(t, rows=~in_b), reference_ece(t, rows=in_b)
    assert ece_a < 0.05 < ece_b
    code, out = check(paths["domains"], "--slice", "group:domain", "--max-slice-ece", 0.05)
    assert code == 1, out
    text = flat(out)
    assert printed(out, r"FAIL slice group:domain=b \(\d+ tokens\): ece = ([\d.]+)") == pytest.approx(
        ece_b, abs=5e-5)
    assert printed(out, r"ok slice group:domain=a \(\d+ tokens\): ece = ([\d.]+)") == pytest.approx(
        ece_a, abs=5e-5)
    assert "exceeds --max-slice-ece 0.05" in text and "check failed: 1 condition not met" in text
    code, out = check(paths["domains"], "--slice", "group:domain", "--max-slice-ece", 0.05,
                      "--min-slice-tokens", 10**6)
    assert code == 0 and "slice group:domain: not checked (< 1000000 tokens): a, b" in flat(out), out


def test_baseline_regression(tables, tmp_path):
    made, paths = tables
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(tokcal.evaluate(made["good"], bootstrap=20, seed=0).to_dict()))
    code, out = check(paths["good"], "--baseline", base, "--max-regression", 0.0)
    assert code == 0 and "change +0.0000 <= --max-regression 0" in flat(out), out
    code, out = check(paths["over"], "--baseline", base, "--max-regression", 0.01)
    assert code == 1, out
    change = printed(out, r"FAIL ece = [\d.]+ vs [\d.]+ in \S+baseline.json: change \+([\d.]+) exceeds "
                          r"--max-regression 0.01")
    assert change == pytest.approx(reference_ece(made["over"]) - reference_ece(made["good"]), abs=2e-4)


def test_baseline_with_other_settings_is_refused(tables, tmp_path):
    made, paths = tables
    base = tmp_path / "b10.json"
    base.write_text(json.dumps(tokcal.evaluate(made["good"], bins=10, bootstrap=20, seed=0).to_dict()))
    code, out = check(paths["good"], "--baseline", base, "--max-regression", 0.01)  # takes bins=10 from it
    assert code == 0, out
    code, out = check(paths["good"], "--baseline", base, "--max-regression", 0.01, "--bins", 15)
    assert code == 2 and "not comparable" in flat(out) and "bins=10" in out and "bins=15" in out, out


@pytest.mark.parametrize("args, message", [
    (["--max-ece", "0.1", "--slice", "group:domain"], "--slice and --max-slice-ece go together"),
    (["--max-ece", "-1"], "--max-ece must be a finite number >= 0"),
    ([], "nothing to check"),
    (["--max-ece", "0.1", "--metric", "mce"], "--metric must be one of ece, ece_debiased, smooth_ece"),
    (["--max-ece", "0.1", "--slice", "nonsense", "--max-slice-ece", "0.1"],
     "--slice must be freq, freq:predicted, type, type:predicted, group:NAME, position or words:FILE, got 'nonsense'"),
    (["--max-ece", "0.1", "--slice", "group:topic", "--max-slice-ece", "0.1"], "topic"),
    (["--max-regression", "0.1"], "--baseline and --max-regression go together"),
])
def test_bad_input_exits_2(tables, args, message):
    _, paths = tables
    code, out = check(paths["domains"], *args)
    assert code == 2 and message in flat(out), out


def test_missing_files_exit_2(tables, tmp_path):
    _, paths = tables
    code, out = check(tmp_path / "none.parquet", "--max-ece", 0.1)
    assert code == 2 and "none.parquet" in flat(out), out
    code, out = check(paths["good"], "--max-ece", 0.1, "--baseline", tmp_path / "b.json", "--max-regression", 0)
    assert code == 2 and "b.json: no such evaluation file" in flat(out), out
    code, out = check(paths["good"], "--max-ece", 0.1, "--calibrator", tmp_path / "c.json")
    assert code == 2 and "c.json" in flat(out), out


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "true", '"0.01"', "1e999"])
def test_non_finite_or_non_numeric_baseline_is_bad_input(tables, tmp_path, value):
    """A baseline whose ECE is NaN, infinite or not a number used to pass every check."""
    made, paths = tables
    d = tokcal.evaluate(made["good"], bootstrap=20, seed=0).to_dict()
    d["overall"]["ece"] = "@"
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(d).replace('"@"', value))
    code, out = check(paths["over"], "--baseline", base, "--max-regression", 0.01)
    assert code == 2 and "error:" in out and "baseline.json" in flat(out), out
    assert "overall.ece" in out or "JSON" in out, out
