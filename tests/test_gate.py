"""tokcal.gate from Python: the same conditions as ``tokcal check``, on tables with known calibration.

beta* = 1 is calibrated, beta* = 0.5 over-confident (ideal temperature 2); the values the gate reports
are compared with a plain-numpy binned ECE.
"""

from __future__ import annotations

import pytest
from test_check_cmd import SMALL, reference_ece

import tokcal
from tokcal import gate
from tokcal.calibrators import Temperature
from tokcal.errors import ParameterError, ValidationError
from tokcal.report.terminal import gate_lines, outcome_line
from tokcal.synthetic import make_table


@pytest.fixture(scope="module")
def tables():
    return {"good": make_table(**SMALL, beta_star=1.0, seed=1), "over": make_table(**SMALL, beta_star=0.5, seed=2),
            "domains": make_table(**SMALL, domains={"a": 1.0, "b": 0.4}, seed=3)}


def test_overall_pass_and_fail_carry_the_numbers(tables):
    res = gate.check(tables["over"], max_ece=0.05, bootstrap=20)
    assert not res.passed and len(res.failures) == 1
    o = res.failures[0]
    assert o.condition == "max_ece" and o.limit == 0.05 and o.metric == "ece"
    assert o.value == pytest.approx(reference_ece(tables["over"]), abs=1e-9)
    assert o.ci is not None and o.ci[0] <= o.value <= o.ci[1]
    fixed = gate.check(tables["over"], Temperature(temperature=2.0), max_ece=0.05, bootstrap=20)
    assert fixed.passed
    assert fixed.outcomes[0].value == pytest.approx(reference_ece(tables["over"], temperature=2.0), abs=1e-9)
    assert res.signature.startswith("ece|bins=15|binning=width")


def test_slices_and_small_values(tables):
    t = tables["domains"]
    res = gate.check(t, slices=["group:domain"], max_slice_ece=0.05, bootstrap=20)
    by_value = {o.slice_value: o for o in res.outcomes}
    dom = t.groups["domain"]
    in_b = dom.codes == dom.categories.index("b")
    assert by_value["b"].value == pytest.approx(reference_ece(t, rows=in_b), abs=1e-9) and not by_value["b"].ok
    assert by_value["a"].ok and by_value["a"].n == int((~in_b & t.labeled).sum())
    skipped = gate.check(t, slices=["group:domain"], max_slice_ece=0.05, min_slice_tokens=10**6, bootstrap=0)
    assert skipped.passed and skipped.outcomes[0].skipped == ("a", "b")
    assert outcome_line(skipped.outcomes[0]) == "slice group:domain: not checked (< 1000000 tokens): a, b"


def test_check_evaluation_regression_and_signatures(tables):
    base = tokcal.evaluate(tables["good"], bootstrap=0)
    now = tokcal.evaluate(tables["over"], bootstrap=0)
    res = gate.check_evaluation(now, baseline=base, max_regression=0.01, baseline_name="main")
    o = res.outcomes[0]
    assert not res.passed and o.baseline == base.overall["ece"] and o.change == pytest.approx(
        now.overall["ece"] - base.overall["ece"])
    assert "in main: change +" in outcome_line(o) and gate_lines(res)[-1] == "check failed: 1 condition not met"
    other = tokcal.evaluate(tables["good"], bins=10, bootstrap=0)
    with pytest.raises(gate.SignatureMismatch, match="bins=10") as err:
        gate.check_evaluation(now, baseline=other, max_regression=0.01)
    assert "--bins/--binning" in err.value.render({"bins": "--bins", "binning": "--binning"})
    # gate.check takes the baseline's bins, so the comparison is like with like
    assert gate.check(tables["good"], baseline=other, max_regression=0.0, bootstrap=0).passed


@pytest.mark.parametrize("kwargs, python, flags", [
    ({"max_ece": -1}, "max_ece must be a finite number >= 0", "--max-ece must be a finite number >= 0"),
    ({}, "nothing to check: give max_ece", "nothing to check: give --max-ece"),
    ({"max_ece": 0.1, "metric": "mce"}, "metric must be one of", "--metric must be one of"),
    ({"slices": ["freq"]}, "slices and max_slice_ece go together", "--slice and --max-slice-ece go together"),
])
def test_bad_parameters_are_named_per_caller(tables, kwargs, python, flags):
    with pytest.raises(ParameterError) as err:
        gate.check_evaluation(tokcal.evaluate(tables["good"], bootstrap=0), **kwargs)
    assert python in str(err.value)
    names = {"max_ece": "--max-ece", "metric": "--metric", "slices": "--slice", "max_slice_ece": "--max-slice-ece"}
    assert flags in err.value.render(names)
    assert isinstance(err.value, ValidationError)
