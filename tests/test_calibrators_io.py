"""Every calibrator: JSON round trip with identical outputs, corrupt and foreign files, held-out ECE."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tokcal
from tokcal import synthetic
from tokcal.calibrators import (
    AdaptiveTemperature,
    BetaCalibration,
    Calibrator,
    ConformalTokenSets,
    GroupTemperature,
    HistogramBinning,
    Isotonic,
    Selective,
    Temperature,
    compare,
    load_calibrator,
    split_by_sequence,
)
from tokcal.errors import SchemaError, ValidationError


def all_calibrators() -> dict[str, Calibrator]:
    return {
        "temperature": Temperature(), "group": GroupTemperature("domain"),
        "adaptive": AdaptiveTemperature(groups=("domain",)), "histogram": HistogramBinning(),
        "isotonic": Isotonic(), "beta": BetaCalibration(), "selective": Selective(Temperature(), 0.6),
    }


@pytest.fixture(scope="module")
def over():
    """Over-confident (beta* = 0.5 / 0.6): every calibrator should help."""
    return split_by_sequence(synthetic.make_table(16000, 300, domains={"a": 0.5, "b": 0.6}, seed=41), 0.4, seed=1)


@pytest.fixture(scope="module")
def calibrated():
    return split_by_sequence(synthetic.make_table(16000, 300, domains={"a": 1.0, "b": 1.0}, seed=42), 0.4, seed=1)


@pytest.mark.parametrize("name", list(all_calibrators()) + ["conformal"])
def test_json_round_trip_gives_identical_outputs(over, tmp_path, name):
    train, test = over
    cal = ConformalTokenSets(0.1, calibrator=Temperature()) if name == "conformal" else all_calibrators()[name]
    if name == "conformal":
        cal.calibrator.fit(train)
    cal.fit(train)
    path = cal.save(tmp_path / "c.json")
    back = tokcal.load_calibrator(path)
    assert type(back) is type(cal) and back.to_dict() == cal.to_dict()
    a, b = cal.token_probs(test), back.token_probs(test)
    for field in ("top_ids", "top_probs", "label_prob", "sum_sq", "entropy"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    z = synthetic.make_logits(8, 300, seed=0)
    ctx = {"position": np.arange(8), "domain": ["a", "b"] * 4}
    np.testing.assert_array_equal(cal.transform_logits(z, ctx), back.transform_logits(z, ctx))
    d = json.loads(path.read_text())
    assert d["schema_version"] == 2 and d["type"] == cal.type_name
    assert d["settings"] == cal.params.model_dump(mode="json")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_temperature_json_names_are_stable(tmp_path):
    path = Temperature(temperature=1.3).save(tmp_path / "t.json")
    d = json.loads(path.read_text())
    assert d["type"] == "temperature" and d["temperature"] == 1.3
    assert Temperature.load(path).temperature == 1.3


def test_corrupt_foreign_and_wrong_type_files(tmp_path):
    good = Temperature(temperature=2.0).save(tmp_path / "good.json")
    text = good.read_text()
    d = json.loads(text)

    def variant(**changes):
        out = {**d, **changes}
        return json.dumps({k: v for k, v in out.items() if v is not ...})

    cases = {
        "truncated.json": (text[: len(text) // 2], "not valid JSON"),
        "foreign.json": (json.dumps({"model": "gpt2", "temperature": 2.0}), "not a tokcal calibrator"),
        "array.json": ("[1, 2, 3]", "expected a JSON object"),
        "future.json": (variant(schema_version=99), "schema version 99"),
        "unknown.json": (variant(type="magic"), "unknown calibrator type"),
        "negative.json": (variant(temperature=-2.0, settings={}),
                          r"negative.json: temperature must be greater than or equal to 0.001, got -2.0"),
        "missing.json": (variant(temperature=...), "negative.json|missing.json: temperature is required"),
        "nan.json": (text.replace('"temperature": 2.0', '"temperature": NaN'), "NaN is not a JSON number"),
        "bool.json": (variant(temperature=True, settings={}), "temperature must be a number, got True"),
        "string.json": (variant(temperature="1.5", settings={}), "temperature must be a number, got '1.5'"),
        "tiny.json": (variant(temperature=1e-300, settings={}), "temperature must be greater than or equal to 0.001"),
        "outside.json": (variant(temperature=25.0, settings={}),
                         r"temperature must lie within settings.bounds \[0.05, 20\]"),
        "settings.json": (variant(settings={"bounds": [5, 1]}), r"settings.bounds must satisfy 0 < T_min < T_max"),
        "unknown_setting.json": (variant(settings={"colour": 1}), "settings.colour is not a known field"),
    }
    for fname, (content, message) in cases.items():
        p = tmp_path / fname
        p.write_text(content)
        with pytest.raises(SchemaError, match=message) as err:
            load_calibrator(p)
        assert fname in str(err.value)
    with pytest.raises(SchemaError, match="no such"):
        load_calibrator(tmp_path / "absent.json")
    with pytest.raises(SchemaError, match="holds a 'temperature'"):
        Isotonic.load(good)
    with pytest.raises(ValidationError, match="not fitted"):
        Isotonic().save(tmp_path / "x.json")


def test_every_calibrator_lowers_held_out_ece_on_miscalibrated_data(over):
    train, test = over
    rows = compare(all_calibrators(), train, test, bootstrap=100, seed=0)
    base = next(r for r in rows if r["method"] == "none")
    assert base["ece"] > 0.1
    for r in rows:
        if r["method"] != "none":
            assert r["ece"] < base["ece_lo"], r
            assert r["ece"] < 0.5 * base["ece"], r


def test_no_calibrator_worsens_calibrated_data_beyond_interval(calibrated):
    train, test = calibrated
    rows = compare(all_calibrators(), train, test, slices="domain", bootstrap=100, seed=0)
    base = {r["slice"]: r for r in rows if r["method"] == "none"}
    assert set(base) == {"all", "domain=a", "domain=b"}
    for r in rows:
        if r["method"] != "none" and r["slice"] == "all":
            # the intervals are evaluate's (basic bootstrap for the ECE, which does not inflate the upper end);
            # a fitted map adds its own estimation noise, so ask that the two intervals overlap
            assert r["ece_lo"] <= base["all"]["ece_hi"], r
            assert r["ece"] < 2 * base["all"]["ece_hi"], r
            if r["method"] in ("temperature", "group", "adaptive", "selective"):
                # (top-label maps are fitted on the confidence alone and may cost NLL on the other ids)
                assert r["nll"] <= base["all"]["nll_hi"], r


def test_split_by_sequence_and_compare_guards():
    t = synthetic.make_table(2000, 100, seed=1)
    a, b = split_by_sequence(t, 0.25, seed=3)
    assert not np.intersect1d(a.sequence_id, b.sequence_id).size
    assert len(a) + len(b) == len(t) and b.n_sequences == 10
    a2, b2 = split_by_sequence(t, 0.25, seed=3)
    np.testing.assert_array_equal(b.sequence_id, b2.sequence_id)
    with pytest.raises(ValidationError, match="both train and test"):
        compare([Temperature()], t, b)
    one = t.select(t.sequence_id == 0)
    with pytest.raises(ValidationError, match="at least 2"):
        split_by_sequence(one, 0.5)
