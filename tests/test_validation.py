"""The one validation layer: strict parameter types, one message format, the one JSON reader."""

from __future__ import annotations

import numpy as np
import pytest

from tokcal.errors import SchemaError, ValidationError
from tokcal.evaluation import evaluate
from tokcal.synthetic import make_table
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
    ev = evaluate(make_table(300, 50, seed=0), slices=["position"], bootstrap=5).to_dict()
    assert validate_evaluation(ev) is ev
    for bad, field in [({"ece": True}, "overall.ece"), ({"ci": {"ece": [0, "x"]}}, "overall.ci.ece[1]"),
                       ({"n": None}, "overall.n must be an integer"), ({"ece_debiased": "x"}, "overall.ece_debiased")]:
        with pytest.raises(SchemaError, match=field.replace(".", r"\.").replace("[", r"\[")):
            validate_evaluation({**ev, "overall": {**ev["overall"], **bad}}, "e.json")
    with pytest.raises(SchemaError, match="settings.bins must be less than or equal to 10000"):
        validate_evaluation({**ev, "settings": {**ev["settings"], "bins": 10**9}}, "e.json")


# -- parameters of evaluate and slices, and the API edges that used to raise raw errors -----------


@pytest.mark.parametrize(("call", "message"), [
    (lambda t: __import__("tokcal").evaluate(t, classwise_top=0),
     "evaluate: classwise_top must be greater than or equal to 1, got 0"),
    (lambda t: __import__("tokcal").evaluate(t, bins=10**9), "evaluate: bins must be less than or equal to 10000"),
    (lambda t: __import__("tokcal").evaluate(t, bins=2.5), "evaluate: bins must be an integer, got 2.5"),
    (lambda t: __import__("tokcal").evaluate(t, binning="log"), "evaluate: binning must be 'width' or 'mass'"),
    (lambda t: __import__("tokcal").evaluate(t, seed="1"), "evaluate: seed must be an integer, got '1'"),
    (lambda t: __import__("tokcal").evaluate(t, bootstrap=True), "evaluate: bootstrap must be an integer, got True"),
    (lambda t: t.select([]), "select: selection is empty"),
    (lambda t: t.select([0.5]), "select: expected a boolean mask or integer row indices"),
    (lambda t: __import__("tokcal.slices").slices.PositionSlice(edges=(0, 5)),
     "position slice: edges[0] must be greater than or equal to 1, got 0"),
    (lambda t: __import__("tokcal.slices").slices.FrequencySlice(edges=(10, 5)),
     "freq slice: edges must be a non-empty, strictly increasing list, got (10, 5)"),
    (lambda t: __import__("tokcal.slices").slices.FrequencySlice(on="label"),
     "freq slice: on must be 'gold' or 'predicted', got 'label'"),
])
def test_evaluate_and_slice_parameters(call, message):
    t = make_table(200, 40, seed=1)
    with pytest.raises(ValidationError) as err:
        call(t)
    assert str(err.value).startswith(message), str(err.value)


def test_logits_edges_are_clear_errors(tmp_path):
    import torch

    from tokcal import TokenTable
    from tokcal.synthetic import make_logits

    z = make_logits(6, 40, seed=0)
    y = np.zeros(6, np.int64)
    for top_k, shown in ((2.5, "2.5"), (True, "True"), ("8", "'8'")):
        with pytest.raises(ValidationError, match=rf"^sketch_logits: top_k must be an integer, got {shown}$"):
            TokenTable.from_logits(z, y, top_k=top_k)
    with pytest.raises(ValidationError, match="expected a numpy array or torch tensor .* got list"):
        TokenTable.from_logits(z.tolist(), y)
    for bad in (torch.ones(6, 40, dtype=torch.int64), torch.ones(6, 40, dtype=torch.bool), np.ones((6, 40), int)):
        with pytest.raises(ValidationError, match="expected floating point values"):  # numpy and torch alike
            TokenTable.from_logits(bad, y, top_k=4)
    big = z.astype(np.float64)
    big[2, 7] = 1e300
    with pytest.raises(ValidationError, match=r"row 2 id 7 is 1e\+300, beyond the float32 range"):
        TokenTable.from_logits(big, y, top_k=4)
    path = tmp_path / "t.parquet"
    TokenTable.from_logits(z, y, top_k=4).write_parquet(path)
    with pytest.raises(ValidationError, match="iter_parquet: batch_rows must be greater than or equal to 1, got 0"):
        list(TokenTable.iter_parquet(path, batch_rows=0))
    from tokcal.calibrators import Temperature

    with pytest.raises(ValidationError, match="got list"):
        Temperature(temperature=1.2).transform_logits(z.tolist())
    with pytest.raises(ValidationError, match="expected floating point values, got dtype torch.int64"):
        Temperature(temperature=1.2).transform_logits(torch.ones(2, 3, dtype=torch.int64))


def test_nll_has_one_definition_with_evaluate():
    from tokcal import TokenTable, evaluate, metrics

    z = np.array([[0.0, -20000.0, 1.0, 2.0], [3.0, 0.0, 1.0, 2.0]], np.float32)  # row 0: p(gold) underflows to 0
    t = TokenTable.from_logits(z, np.array([1, 0]), top_k=2, sequence_ids=[0, 1])
    ev = evaluate(t, slices=[], bootstrap=0).overall
    p = np.exp(z[1, 0] - np.log(np.exp(z[1].astype(np.float64)).sum()))
    assert ev["nll"] == pytest.approx(metrics.nll([0.0, p]), rel=1e-6)
    assert metrics.nll([0.0, p]) == pytest.approx((-np.log(np.finfo(np.float64).tiny) - np.log(p)) / 2)
