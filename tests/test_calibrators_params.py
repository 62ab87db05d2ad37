"""Calibrator settings apart from learned state; one parameter validation; bounded temperatures; conformal
sets truncated by the table's top-k."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from typer.testing import CliRunner

from tokcal import evaluate, load_calibrator, synthetic
from tokcal.calibrators import (
    AdaptiveTemperature,
    BetaCalibration,
    CalibrationWarning,
    Calibrator,
    ConformalTokenSets,
    GroupTemperature,
    HistogramBinning,
    Isotonic,
    Selective,
    Temperature,
)
from tokcal.cli import app
from tokcal.errors import ValidationError


@pytest.fixture(scope="module")
def tables():
    a = synthetic.make_table(3000, 200, domains={"x": 0.5, "y": 0.8}, seed=1)
    b = synthetic.make_table(3000, 200, domains={"x": 1.5, "y": 1.2}, seed=2)
    return a, b


# -- settings apart from learned state --------------------------------------------------------------


def test_loaded_temperature_refits_and_a_given_one_stays(tables, tmp_path):
    a, b = tables
    cal = Temperature(seed=5).fit(a)
    assert cal.temperature == cal.learned_temperature > 1.2 and not cal.fixed
    back = load_calibrator(cal.save(tmp_path / "t.json"))
    assert back.temperature == cal.temperature and back.seed == 5 and not back.fixed
    refit = back.fit(b)
    assert refit.temperature < 1.0  # b is under-confident: refitting on it moves T below 1
    assert refit.temperature == pytest.approx(Temperature().fit(b).temperature, rel=1e-9)
    given = load_calibrator(Temperature(temperature=1.3).save(tmp_path / "g.json"))
    assert given.fixed and given.fit(b).temperature == 1.3 and given.learned_temperature is None
    d = json.loads((tmp_path / "g.json").read_text())
    assert d["temperature"] == 1.3 and d["settings"] == {"bounds": [0.05, 20.0], "seed": 0, "temperature": 1.3}


@pytest.mark.parametrize("cal", [
    Temperature(seed=3, bounds=(0.1, 10)), GroupTemperature("domain", shrink=False, seed=4),
    AdaptiveTemperature(groups=("domain",), l2=0.01, max_iter=50, seed=6), HistogramBinning(7, binning="width"),
    ConformalTokenSets(0.2, "aps", seed=9), Selective(Temperature(seed=2), 0.7, fit_on="all"),
], ids=lambda c: type(c).__name__)
def test_everything_needed_to_refit_is_saved(tables, cal):
    a, b = tables
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        cal.fit(a)
        back = Calibrator.from_dict(cal.to_dict())
        assert back.get_params().keys() == cal.get_params().keys()
        for k, v in cal.get_params().items():
            assert v == v if isinstance(v, Calibrator) else back.get_params()[k] == v, k
        assert back.to_dict() == cal.to_dict()
        np.testing.assert_array_equal(back.fit(b).token_probs(b).top_probs, cal.fit(b).token_probs(b).top_probs)


def test_old_schema_version_1_files_load_as_fitted_with_their_settings(tables):
    a, b = tables
    v1 = {"format": "tokcal-calibrator", "schema_version": 1, "tokcal_version": "0.1.0", "type": "temperature",
          "temperature": 1.4, "bounds": [0.1, 10.0], "fit": {"n": 100}}
    cal = Calibrator.from_dict(v1)
    assert cal.temperature == 1.4 and cal.bounds == (0.1, 10.0) and not cal.fixed
    assert cal.fit(b).temperature != 1.4
    g = {"format": "tokcal-calibrator", "schema_version": 1, "type": "group_temperature", "by": "domain",
         "shrink": False, "bounds": [0.05, 20.0], "global_temperature": 1.2, "temperatures": {"x": 1.5},
         "raw_temperatures": {"x": 1.5}, "counts": {"x": 10}, "tau": None, "type_codes": None}
    cal = Calibrator.from_dict(g)
    assert cal.by == "domain" and cal.shrink is False and cal.temperatures == {"x": 1.5}


def test_generic_repr_and_params():
    assert repr(Temperature()) == "Temperature() unfitted"
    assert repr(GroupTemperature("lang", seed=3)) == "GroupTemperature(by='lang', seed=3) unfitted"
    cal = Temperature()
    cal.learned_temperature = 1.23456789
    assert repr(cal) == "Temperature() fitted temperature=1.23457"
    assert repr(Temperature(temperature=1.3)) == "Temperature(temperature=1.3)"
    assert Temperature(seed=2).get_params() == {"bounds": (0.05, 20.0), "seed": 2, "temperature": None}
    assert HistogramBinning().set_params(bins=4).bins == 4
    cal = GroupTemperature()
    cal.by = "lang"  # assignment goes through the same validation
    assert cal.params.by == "lang"
    with pytest.raises(ValidationError, match=r"^GroupTemperature: bounds must satisfy 0 < T_min < T_max"):
        cal.bounds = (5, 1)
    assert repr(Isotonic()) == "Isotonic() unfitted" and repr(BetaCalibration()) == "BetaCalibration() unfitted"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: GroupTemperature(bounds=(5, 1)), "GroupTemperature: bounds must satisfy 0 < T_min < T_max, got (5, 1)"),
    (lambda: AdaptiveTemperature(l2=-1), "AdaptiveTemperature: l2 must be greater than or equal to 0, got -1"),
    (lambda: HistogramBinning(2.5), "HistogramBinning: bins must be an integer, got 2.5"),
    (lambda: HistogramBinning(True), "HistogramBinning: bins must be an integer, got True"),
    (lambda: HistogramBinning(0), "HistogramBinning: bins must be greater than or equal to 1, got 0"),
    (lambda: HistogramBinning(binning="log"), "HistogramBinning: binning must be 'width' or 'mass', got 'log'"),
    (lambda: GroupTemperature(shrink="no"), "GroupTemperature: shrink must be true or false, got 'no'"),
    (lambda: Temperature(seed=-1), "Temperature: seed must be greater than or equal to 0, got -1"),
    (lambda: Temperature(temperature=1e-300), "Temperature: temperature must be greater than or equal to 0.001"),
    (lambda: Temperature(temperature=30), "Temperature: temperature must lie within bounds [0.05, 20]"),
    (lambda: Temperature(temperature=float("nan")), "Temperature: temperature must be a finite number, got nan"),
    (lambda: ConformalTokenSets(alpha=1.0), "ConformalTokenSets: alpha must be less than 1, got 1.0"),
    (lambda: ConformalTokenSets(score="raps"), "ConformalTokenSets: score must be 'lac' or 'aps', got 'raps'"),
    (lambda: Selective(Temperature(), threshold=0), "Selective: threshold must be greater than 0, got 0"),
    (lambda: Selective("temperature"), "Selective: calibrator must be an instance of Calibrator, got 'temperature'"),
    (lambda: AdaptiveTemperature(max_iter=0), "AdaptiveTemperature: max_iter must be greater than or equal to 1"),
])
def test_one_validation_one_message_format(make, message):
    with pytest.raises(ValidationError) as err:
        make()
    assert str(err.value).startswith(message), str(err.value)


def test_fit_of_something_else_than_a_table_is_a_clear_error():
    for cal in (Temperature(), GroupTemperature(), HistogramBinning(), ConformalTokenSets()):
        with pytest.raises(ValidationError, match=r"\.fit: expected a TokenTable, got NoneType"):
            cal.fit(None)


# -- bounded temperatures ---------------------------------------------------------------------------


def test_small_temperature_on_float16_logits_does_not_overflow():
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((6, 50)) * 100 + 6e4).astype(np.float16)  # logits near float16's maximum
    cal = Temperature(temperature=0.05)
    ref = log_softmax(z.astype(np.float64) / 0.05, axis=1)
    for out in (cal.transform_logits(z), cal.transform_logits(torch.from_numpy(z)).numpy()):
        assert out.dtype == np.float16 and not np.isposinf(out).any() and (out.max(axis=1) == 0).all()
        got = log_softmax(out.astype(np.float64), axis=1)
        keep = ref > -30  # entries that carry probability; the rest round to -inf in float16
        np.testing.assert_allclose(got[keep], ref[keep], atol=0.5)  # float16 spacing at 6e4 is 32
    masked = np.array([[0.0, -np.inf, 2.0], [-np.inf, -np.inf, -np.inf]], np.float32)
    out = Temperature(temperature=0.5).transform_logits(masked)
    np.testing.assert_array_equal(out, [[-4.0, -np.inf, 0.0], [-np.inf, -np.inf, -np.inf]])


def test_adaptive_temperature_warns_at_its_bounds():
    t = synthetic.make_table(2000, 100, beta_star=0.05, seed=3)  # wants T = 20: at the default T_max
    with pytest.warns(CalibrationWarning, match=r"AdaptiveTemperature: the temperature of .*% of the fitting "
                                                r"tokens hit the bound T=1.5 \(T_max\)"):
        cal = AdaptiveTemperature(bounds=(0.05, 1.5)).fit(t)
    assert cal.fit_info["share_at_T_max"] > 0.5


# -- conformal sets truncated by the table's top-k --------------------------------------------------


def test_truncated_conformal_sets_fail_the_guarantee_loudly(tmp_path):
    t = synthetic.make_table(4000, 200, top_k=4, seed=3)
    with pytest.warns(CalibrationWarning, match=r"of the calibration sets need more ids than the table's top-k=4 "
                                                r"and are truncated .*larger top-k.*larger alpha"):
        cal = ConformalTokenSets(0.05).fit(t)
    assert cal.truncated_share > 0.5
    with pytest.warns(CalibrationWarning, match=r"the listed sets cover"):
        cov = cal.coverage(t)
    o = cov["overall"]
    assert cov["guarantee"] is False and o["truncated"] == cal.truncated_share
    assert o["coverage"] >= 0.95 > o["listed_coverage"]  # the nominal coverage holds only for the untruncated sets
    ids, member, _ = cal.set_mask(t)
    listed = np.mean([y in row[m] for y, row, m in zip(t.label, ids, member, strict=True)])  # brute force
    assert o["listed_coverage"] == pytest.approx(listed)
    d = cal.to_dict()
    assert d["truncated"] is True and d["truncated_share"] == cal.truncated_share
    assert load_calibrator(cal.save(tmp_path / "c.json")).truncated_share == cal.truncated_share
    wide = synthetic.make_table(4000, 200, top_k=32, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        ok = ConformalTokenSets(0.2).fit(wide)
        assert ok.coverage(wide)["guarantee"] is True and ok.to_dict()["truncated"] is False


def test_cli_fit_conformal_says_the_sets_are_truncated(tmp_path):
    path = tmp_path / "t.parquet"
    synthetic.make_table(4000, 200, top_k=4, seed=3).write_parquet(path)
    res = CliRunner().invoke(app, ["fit", str(path), "--method", "conformal", "--alpha", "0.05",
                                   "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    text = re.sub(r"\s+", " ", res.output)
    assert "warning: ConformalTokenSets:" in text and "larger top-k" in text
    assert "coverage guarantee: FAILED" in text


def test_evaluate_reports_a_loaded_calibrator_with_its_settings(tables, tmp_path):
    a, _ = tables
    cal = load_calibrator(GroupTemperature("domain", seed=4).fit(a).save(tmp_path / "g.json"))
    d = evaluate(a, calibrator=cal, slices=[], bootstrap=0).to_dict()
    assert d["settings"]["calibrator"]["settings"]["seed"] == 4
