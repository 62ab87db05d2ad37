"""The one validation layer: strict parameter types, one message format, the one JSON reader."""

from __future__ import annotations

import numpy as np
import pytest

from tokcal.errors import SchemaError, ValidationError
from tokcal.validation import (
    Binning,
    NonNegativeFloat,
    Params,
    PositiveInt,
    TemperatureBounds,
    check_params,
    validate_abstainer,
    validate_evaluation,
    validate_manifest,
)


class _P(Params):
    bounds: TemperatureBounds = (0.05, 20.0)
    l2: NonNegativeFloat = 1e-3
    bins: PositiveInt = 15
    binning: Binning = "width"


@pytest.mark.parametrize(("kw", "message"), [
    ({"bounds": (5, 1)}, "owner: bounds must satisfy 0 < T_min < T_max, got (5, 1)"),
    ({"bounds": (1e-300, 1)}, "owner: bounds must lie within [0.001, 1000], got (1e-300, 1)"),
    ({"l2": -1}, "owner: l2 must be greater than or equal to 0, got -1"),
    ({"l2": float("nan")}, "owner: l2 must be a finite number, got nan"),
    ({"bins": 2.5}, "owner: bins must be an integer, got 2.5"),
    ({"bins": True}, "owner: bins must be an integer, got True"),
    ({"bins": "8"}, "owner: bins must be an integer, got '8'"),
    ({"binning": "x"}, "owner: binning must be 'width' or 'mass', got 'x'"),
    ({"colour": 1}, "owner: colour is not a known field, got 1"),
])
def test_one_message_format_for_every_violation(kw, message):
    with pytest.raises(ValidationError) as err:
        check_params("owner", _P, **kw)
    assert str(err.value) == message


def test_numpy_scalars_and_lists_are_accepted():
    p = check_params("owner", _P, bins=np.int64(4), l2=np.float32(0.5), bounds=[0.1, 10])
    assert p.bins == 4 and type(p.bins) is int and p.l2 == 0.5 and p.bounds == (0.1, 10.0)


def test_small_schemas():
    with pytest.raises(SchemaError, match=r"a.json: threshold must be a number, got True"):
        validate_abstainer({"type": "abstainer", "threshold": True}, "a.json")
    assert validate_abstainer({"type": "abstainer", "threshold": None}, "a.json").threshold is None
    m = {"format": "tokcal-dataset", "version": 1, "settings_hash": "x", "settings": {},
         "parts": [{"file": "../x.parquet", "rows": 1, "documents": [{"id": "a", "hash": "h", "sequence_id": None}]}]}
    with pytest.raises(SchemaError, match=r"parts\[0\]\.file must match.*parts\[0\]\.documents\[0\]\.sequence_id"):
        validate_manifest(m, "m.json")
    ev = {"signature": "s", "settings": {"bins": 15, "binning": "width", "bootstrap": 0, "seed": 0},
          "overall": {"n": 10, "ece": 0.1, "nll": None, "ci": {"ece": [0.0, 0.2], "nll": None}}, "signatures": {},
          "bins": [], "slices": {}, "worst_tokens": []}
    assert validate_evaluation(ev) is ev
    for bad, field in [({"n": 1, "ece": True}, "overall.ece"), ({"n": 1, "ci": {"ece": [0, "x"]}}, "overall.ci.ece[1]"),
                       ({"ece": 0.1}, "overall.n is required")]:
        with pytest.raises(SchemaError, match=field.replace(".", r"\.").replace("[", r"\[")):
            validate_evaluation({**ev, "overall": bad}, "e.json")
    with pytest.raises(SchemaError, match="settings.bins must be less than or equal to 10000"):
        validate_evaluation({**ev, "settings": {**ev["settings"], "bins": 10**9}}, "e.json")
