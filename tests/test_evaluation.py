"""tokcal.evaluate: every number against brute force on full logits, synthetic truth, bootstrap, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tokcal
from tokcal import TokcalError, TokenTable
from tokcal.bootstrap import ResamplingWarning
from tokcal.evaluation import Evaluation, evaluate
from tokcal.probs import token_probs
from tokcal.synthetic import make_logits, make_table, make_vocab, sample_labels

KEYS = ["schema_version", "signature", "settings", "overall", "signatures", "bins", "slices", "worst_tokens",
        "risk_coverage", "confidence_histogram", "passage", "slice_bins", "table_fingerprint", "replicates"]
OVERALL = ["n", "n_sequences", "n_units", "accuracy", "confidence", "ece", "ece_debiased", "smooth_ece", "mce", "rmsce",
           "brier", "top_label_brier", "nll", "signed_gap", "over_share", "under_share", "aurc", "classwise_ece",
           "ci"]
SLICE_ROW = ["value", "n", "n_sequences", "n_units", "accuracy", "confidence", "ece", "ece_ci", "signed_gap", "gap_ci",
             "nll", "brier", "significant"]


def _brute_binned(c, a, bins=15):
    """Independent width-binned ECE/MCE/RMSCE/debiased ECE with a python loop over bins."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)
    ece = mce = ms = deb = 0.0
    for b in range(bins):
        m = idx == b
        nb = m.sum()
        if nb == 0:
            continue
        gap = c[m].mean() - a[m].mean()
        ece += nb / len(c) * abs(gap)
        ms += nb / len(c) * gap**2
        mce = max(mce, abs(gap))
        if nb > 1:
            acc = a[m].mean()
            deb += nb / len(c) * np.sqrt(max(0.0, gap**2 - acc * (1 - acc) / (nb - 1)))
    return ece, mce, np.sqrt(ms), deb


@pytest.fixture(scope="module")
def full():
    """Full logits, labels, groups; a table with k < V and sequences of 30."""
    n, v = 1200, 60
    z = make_logits(n, v, seed=11)
    y = sample_labels(z, 0.8, seed=12)
    seq = np.arange(n) // 30
    dom = np.where(seq % 3 == 0, "x", "y")
    t = TokenTable.from_logits(z, y, sequence_ids=seq, positions=np.arange(n) % 30, top_k=8,
                               groups={"dom": dom}, vocab=make_vocab(v))
    return z.astype(np.float64), y, t


def test_every_metric_equals_brute_force_full_softmax(full):
    z, y, t = full
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = p.max(1)
    a = (p.argmax(1) == y).astype(float)
    py = p[np.arange(len(y)), y]
    o = evaluate(t, slices=[], bootstrap=0).overall
    ece, mce, rms, deb = _brute_binned(c, a)
    tol = dict(rel=1e-5, abs=1e-6)  # float32 storage of the logits
    assert o["n"] == len(y) and o["n_sequences"] == 40
    assert o["accuracy"] == pytest.approx(a.mean(), abs=1e-12)
    assert o["confidence"] == pytest.approx(c.mean(), **tol)
    assert o["ece"] == pytest.approx(ece, **tol) and o["mce"] == pytest.approx(mce, **tol)
    assert o["rmsce"] == pytest.approx(rms, **tol) and o["ece_debiased"] == pytest.approx(deb, **tol)
    assert o["nll"] == pytest.approx(-np.log(py).mean(), **tol)
    assert o["brier"] == pytest.approx(((p - np.eye(p.shape[1])[y]) ** 2).sum(1).mean(), **tol)
    assert o["top_label_brier"] == pytest.approx(((c - a) ** 2).mean(), **tol)
    assert o["signed_gap"] == pytest.approx(c.mean() - a.mean(), **tol)
    order = np.argsort(-c)
    assert o["aurc"] == pytest.approx(np.mean(np.cumsum(1 - a[order]) / np.arange(1, len(a) + 1)), **tol)
    import relplot

    assert o["smooth_ece"] == pytest.approx(relplot.smECE(c, a), abs=1e-3)
    edges = np.linspace(0, 1, 16)
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, 14)
    contrib = np.array([(c[idx == b].sum() - a[idx == b].sum()) / len(c) for b in range(15)])
    over = contrib[contrib > 0].sum() / np.abs(contrib).sum()
    assert o["over_share"] == pytest.approx(over, **tol) and o["over_share"] + o["under_share"] == pytest.approx(1)


def test_classwise_ece_brute_force_when_k_equals_v():
    n, v = 600, 12
    z = make_logits(n, v, seed=3).astype(np.float64)
    y = sample_labels(z, 1.0, seed=4)
    t = TokenTable.from_logits(z.astype(np.float32), y, top_k=v)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    counts = np.bincount(y, minlength=v)
    classes = np.lexsort((np.arange(v), -counts))[:5]
    per = []
    for j in classes:
        pj = p[:, j]
        idx = np.clip(np.searchsorted(np.linspace(0, 1, 16), pj, side="right") - 1, 0, 14)
        per.append(sum((idx == b).sum() / n * abs(pj[idx == b].mean() - (y[idx == b] == j).mean())
                       for b in range(15) if (idx == b).any()))
    o = evaluate(t, slices=[], bootstrap=0, classwise_top=5).overall
    assert o["classwise_ece"] == pytest.approx(np.mean(per), rel=1e-5)


def test_slices_bins_and_worst_tokens_brute_force(full):
    z, y, t = full
    probs = token_probs(t)
    c, a = probs.confidence, probs.correct.astype(float)
    d = evaluate(t, slices=["group:dom", "position", "type"], bootstrap=50, seed=1, worst=5).to_dict()
    dom = t.groups["dom"].values()
    rows = {r["value"]: r for r in d["slices"]["group:dom"]}
    for val in ("x", "y"):
        m = dom == val
        r = rows[val]
        assert r["n"] == m.sum() and r["n_sequences"] == np.unique(t.sequence_id[m]).size
        assert r["accuracy"] == pytest.approx(a[m].mean()) and r["confidence"] == pytest.approx(c[m].mean())
        assert r["ece"] == pytest.approx(_brute_binned(c[m], a[m])[0])
        assert r["nll"] == pytest.approx(-np.log(probs.label_prob[m]).mean())
        assert r["ece_ci"][0] <= r["ece"] <= r["ece_ci"][1]
    assert sum(r["n"] for r in d["slices"]["position"]) == len(t)
    assert sum(r["n"] for r in d["slices"]["type"]) == len(t)
    # bins
    edges = np.linspace(0, 1, 16)
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, 14)
    for b, row in enumerate(d["bins"]):
        assert row["n"] == (idx == b).sum()
        if row["n"]:
            assert row["accuracy"] == pytest.approx(a[idx == b].mean())
            assert row["acc_ci"][0] <= row["accuracy"] + 1e-12 and row["acc_ci"][1] >= row["accuracy"] - 1e-12
        else:
            assert row["accuracy"] is None and row["acc_ci"] == [None, None]
    # worst tokens: largest n_t |conf_t - acc_t|
    pred = t.predicted
    contrib = {int(i): abs(c[pred == i].sum() - a[pred == i].sum()) for i in np.unique(pred)}
    best = sorted(contrib, key=lambda i: -contrib[i])[:5]
    assert [w["id"] for w in d["worst_tokens"]] == best
    w = d["worst_tokens"][0]
    assert w["token"] == t.vocab[w["id"]] and w["n"] == (pred == w["id"]).sum()
    assert w["ece_share"] == pytest.approx(contrib[w["id"]] / sum(contrib.values()))
    assert 1 <= len(w["contexts"]) <= 3 and all(set(ctx) == {"before", "token", "gold"} for ctx in w["contexts"])
    assert all(ctx["token"] == t.token_strings([w["id"]])[0] for ctx in w["contexts"])
    first = int(np.flatnonzero(t.labeled & (pred == w["id"]))[0])
    assert w["contexts"][0]["gold"] == t.token_strings([t.label[first]])[0]
    # passage: first sequence in position order
    assert len(d["passage"]) == 30
    assert d["passage"][0]["label_prob"] == pytest.approx(probs.label_prob[0])


def test_json_shape_round_trip_and_no_nan(tmp_path, full):
    _, _, t = full
    ev = evaluate(t, slices=["group:dom", "freq:predicted"], bootstrap=20, seed=3)
    d = ev.to_dict()
    assert list(d) == KEYS and list(d["overall"]) == OVERALL
    assert set(d["overall"]["ci"]) == {"ece", "ece_debiased", "signed_gap", "nll", "brier", "accuracy"}
    assert set(d["settings"]) == {"bins", "binning", "bootstrap", "seed", "calibrator", "tokcal", "labels",
                                  "resampling", "slices"}
    assert d["schema_version"] == 2 and d["settings"]["resampling"]["unit"] == "sequence"
    assert all(list(r) == SLICE_ROW for rows in d["slices"].values() for r in rows)
    assert list(d["bins"][0]) == ["lo", "hi", "n", "confidence", "accuracy", "gap", "acc_ci"]
    assert list(d["worst_tokens"][0]) == ["id", "token", "n", "confidence", "accuracy", "gap", "ece_share",
                                         "contexts"]
    assert len(d["risk_coverage"]["coverage"]) <= 101 and d["risk_coverage"]["coverage"][-1] == 1.0
    assert sum(d["confidence_histogram"]["counts"]) == len(t)
    sig = f"ece|bins=15|binning=width|norm=l1|conf=top1|labels=teacher-forced|def=1|tokcal={tokcal.__version__}"
    assert d["signature"] == sig
    text = ev.to_json(tmp_path / "ev.json")
    assert "NaN" not in text and "Infinity" not in text
    back = Evaluation.from_json(tmp_path / "ev.json")
    assert back.to_dict() == json.loads(text) == d
    assert Evaluation.from_dict(d).to_dict() == d
    with pytest.raises(TokcalError, match="missing"):
        Evaluation.from_dict({"signature": "x"})


def test_bootstrap_is_seeded_and_depends_on_seed(full):
    _, _, t = full
    a = evaluate(t, slices=["group:dom"], bootstrap=40, seed=5).to_dict()
    b = evaluate(t, slices=["group:dom"], bootstrap=40, seed=5).to_dict()
    c = evaluate(t, slices=["group:dom"], bootstrap=40, seed=6).to_dict()
    assert a == b
    assert a["overall"]["ci"] != c["overall"]["ci"]
    none = evaluate(t, slices=["group:dom"], bootstrap=0).to_dict()
    assert none["overall"]["ci"]["ece"] == [None, None] and none["slices"]["group:dom"][0]["gap_ci"] == [None, None]


def test_bootstrap_resamples_whole_sequences():
    """Tokens identical within a sequence: the cluster interval is as wide as the per-sequence spread."""
    t = make_table(2000, 50, seq_len=100, seed=2)  # 20 sequences
    d = evaluate(t, slices=[], bootstrap=300, seed=0).to_dict()
    acc = np.array([t.correct[t.sequence_id == s].mean() for s in range(20)])
    lo, hi = d["overall"]["ci"]["accuracy"]
    # the percentile interval of a mean of 20 sequence means ~ mean +- 1.96 sd / sqrt(20)
    half = 1.96 * acc.std() / np.sqrt(20)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.35)


def test_perfect_calibration_and_direction():
    small, big = (evaluate(make_table(n, 200, seq_len=40, seed=0), slices=[], bootstrap=100, seed=0).overall
                  for n in (1500, 24000))
    for o in (small, big):
        assert o["ci"]["ece_debiased"][0] == 0.0  # the interval contains 0
        assert o["ci"]["signed_gap"][0] < 0 < o["ci"]["signed_gap"][1]
    assert big["ece"] < small["ece"]
    over = evaluate(make_table(4000, 200, beta_star=0.6, seed=1), slices=[], bootstrap=100).overall
    under = evaluate(make_table(4000, 200, beta_star=1.7, seed=1), slices=[], bootstrap=100).overall
    assert over["ci"]["signed_gap"][0] > 0 and over["over_share"] > 0.9
    assert under["ci"]["signed_gap"][1] < 0 and under["under_share"] > 0.9


def test_domain_slices_flag_the_right_direction():
    t = make_table(6000, 200, domains={"hot": 0.6, "cold": 1.7, "ok": 1.0}, seq_len=40, seed=4)
    d = evaluate(t, slices=["group:domain"], bootstrap=100).to_dict()
    rows = {r["value"]: r for r in d["slices"]["group:domain"]}
    assert rows["hot"]["significant"] and rows["hot"]["gap_ci"][0] > 0
    assert rows["cold"]["significant"] and rows["cold"]["gap_ci"][1] < 0
    # the calibrated domain's gap is small next to theirs (its interval may miss 0 by chance, 5 %)
    assert abs(rows["ok"]["signed_gap"]) < 0.2 * min(abs(rows["hot"]["signed_gap"]), abs(rows["cold"]["signed_gap"]))


def test_one_token_and_one_class_slices_are_defined():
    z = np.array([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0], [1.0, 0.5, 0.0], [2.0, 0.0, 1.0]], np.float32)
    t = TokenTable.from_logits(z, [0, 1, 2, 0], sequence_ids=[0, 0, 1, 1], top_k=2,
                               groups={"g": ["solo", "pair", "pair", "last"]}, vocab=["a", "b", "c"])
    d = evaluate(t, slices=["group:g"], bootstrap=30).to_dict()
    solo = next(r for r in d["slices"]["group:g"] if r["value"] == "solo")
    c = float(np.exp(3) / np.exp(z[0].astype(float)).sum())
    assert solo["n"] == 1 and solo["ece"] == pytest.approx(1 - c, rel=1e-6) and not solo["significant"]
    assert solo["ece_ci"] == solo["gap_ci"] == [None, None]      # one unit: no (zero-width) interval
    text = Evaluation(d).to_json()
    assert "NaN" not in text
    one = TokenTable.from_logits(z[:1], [0], top_k=2)
    with pytest.warns(ResamplingWarning, match="1 resampling unit"):
        o = evaluate(one, slices=[], bootstrap=10).overall
    assert o["n"] == 1 and o["ece_debiased"] == 0.0 and o["ece"] == pytest.approx(1 - c, rel=1e-6)


def test_unknown_labels_are_excluded_and_calibrator_used(full):
    z, y, t = full
    lab = t.label.copy()
    lab[::4] = -1
    t2 = TokenTable.from_logits(z.astype(np.float32), lab, sequence_ids=t.sequence_id, top_k=8)
    d = evaluate(t2, slices=[], bootstrap=0).overall
    ref = evaluate(t.select(lab >= 0), slices=[], bootstrap=0).overall
    assert d["n"] == ref["n"] == (lab >= 0).sum() and d["ece"] == pytest.approx(ref["ece"])

    class Hot:
        def token_probs(self, table):
            return token_probs(table, 2.0)

        def to_dict(self):
            return {"type": "temperature", "temperature": 2.0}

    hot = evaluate(t, calibrator=Hot(), slices=[], bootstrap=0).to_dict()
    assert hot["settings"]["calibrator"] == {"type": "temperature", "temperature": 2.0}
    assert hot["overall"]["confidence"] == pytest.approx(token_probs(t, 2.0).confidence.mean())


def test_bad_inputs_raise_tokcal_errors(full):
    _, _, t = full
    for kwargs, match in [({"bins": 0}, "bins"), ({"binning": "log"}, "binning"), ({"bootstrap": -1}, "bootstrap"),
                          ({"slices": ["nope"]}, "slices must be freq, freq:predicted"),
                          ({"calibrator": object()}, "token_probs")]:
        with pytest.raises(TokcalError, match=match):
            evaluate(t, **kwargs)
    with pytest.raises(TokcalError, match="TokenTable"):
        evaluate(np.zeros(3))
    unl = TokenTable.from_logits(np.zeros((2, 3), np.float32), [-1, -1], top_k=2)
    with pytest.raises(TokcalError, match="no token has a known label"):
        evaluate(unl)


def test_mass_binning_and_print_summary(full):
    from io import StringIO

    from rich.console import Console

    _, _, t = full
    ev = evaluate(t, slices=["group:dom"], binning="mass", bootstrap=20)
    ns = [b["n"] for b in ev.to_dict()["bins"]]
    assert max(ns) - min(ns) <= 2  # equal mass (no ties in the confidences)
    buf = StringIO()
    ev.print_summary(Console(file=buf, width=140))
    out = buf.getvalue()
    assert "ece" in out and "group:dom" in out and "worst predicted tokens" in out


def test_signatures_are_built_by_metrics_signature(full):
    """One definition: every signature evaluate reports is tokcal.metrics.signature with its settings."""
    from tokcal.metrics import parse_signature, signature

    _, _, t = full
    d = evaluate(t, slices=[], bins=10, binning="mass", bootstrap=7, seed=4, classwise_top=30).to_dict()
    sig = d["signatures"]
    for key in ("ece", "ece_debiased", "mce", "rmsce"):
        assert sig[key] == signature(key, bins=10, binning="mass"), key
    for key in ("smooth_ece", "brier", "top_label_brier", "nll", "aurc"):
        assert sig[key] == signature(key), key
    assert sig["classwise_ece"] == signature("classwise_ece", bins=10, top_m=30)
    assert sig["ci"] == signature("ci", resamples=7, seed=4)
    assert d["signature"] == sig["ece"]
    assert set(sig) - {"ci"} <= set(d["overall"])
    metric, settings = parse_signature(sig["mce"])
    assert metric == "mce" and settings["norm"] == "max" and settings["bins"] == "10"
    assert parse_signature(sig["ci"])[1]["resamples"] == "7"


def test_bins_are_reliability_bins_to_list(full):
    from tokcal.metrics import reliability_bins

    _, _, t = full
    d = evaluate(t, slices=[], bins=12, bootstrap=0).to_dict()
    p = token_probs(t)
    ref = reliability_bins(p.confidence, p.correct, bins=12).to_list()
    assert len(d["bins"]) == len(ref) == 12
    for ours, theirs in zip(d["bins"], ref, strict=True):
        assert list(ours) == list(theirs) and ours["n"] == theirs["n"]
        for key in ("lo", "hi", "confidence", "accuracy", "gap"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12)
        assert ours["acc_ci"] == pytest.approx(theirs["acc_ci"], abs=1e-12)
    assert all(list(b) == ["lo", "hi", "n", "confidence", "accuracy", "gap", "acc_ci"] for b in d["bins"])


def test_one_sided_miscalibration_has_positive_zero_share():
    from io import StringIO

    from rich.console import Console

    ev = evaluate(make_table(3000, 200, beta_star=0.3, seed=1), slices=[], bootstrap=0)
    o = ev.overall
    assert o["over_share"] == 1.0 and o["under_share"] == 0.0
    assert np.copysign(1.0, o["under_share"]) == 1.0
    buf = StringIO()
    ev.print_summary(Console(file=buf, width=160))
    assert "under-confident 0%" in buf.getvalue() and "-0%" not in buf.getvalue()
