"""Paired differences between evaluations of the same tokens, the verdict's words, and suggested gate limits.

The stored replicate values are checked against a brute-force weighted ECE per resample (numpy, weights
from the bootstrap's own generator); the verdict's words against tables with known truth (domain b
over-confident with beta* = 0.5, fixed by its own temperature 2).
"""

from __future__ import annotations

import numpy as np
import pytest

import tokcal
from tokcal import gate, paired
from tokcal.bootstrap import replicate_weights, resampling_units
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.probs import token_probs
from tokcal.report.verdict import sentences, verdict
from tokcal.synthetic import make_table

R = 60


@pytest.fixture(scope="module")
def table():
    return make_table(n_tokens=6000, vocab_size=200, seq_len=40, domains={"a": 1.0, "b": 0.5}, seed=4)


def weighted_ece(c, a, w, bins=15):
    b = np.minimum((c * bins).astype(int), bins - 1)
    n = np.bincount(b, w, minlength=bins)
    return float(np.abs(np.bincount(b, w * a, minlength=bins) - np.bincount(b, w * c, minlength=bins)).sum() / n.sum())


def test_replicates_are_the_resampled_ece(table):
    ev = tokcal.evaluate(table, slices=["group:domain"], bootstrap=R, seed=3).to_dict()
    p = token_probs(table)
    keep = table.labeled
    c = np.clip(np.asarray(p.confidence, float)[keep], 0, 1)
    a = (np.asarray(p.predicted) == table.label)[keep].astype(float)
    units = resampling_units(table, keep)
    w = replicate_weights(units.n_units, R, 3)[:, units.ids]
    stored = ev["replicates"]["overall"]["ece"]
    for r in (0, 7, R - 1):
        assert stored[r] == pytest.approx(weighted_ece(c, a, w[r]), rel=1e-5)
    dom = table.groups["domain"]
    in_b = (dom.codes == dom.categories.index("b"))[keep]
    assert ev["replicates"]["slices"]["group:domain"]["b"]["ece"][5] == pytest.approx(
        weighted_ece(c[in_b], a[in_b], w[5][in_b]), rel=1e-5)


def test_difference_pairs_only_the_same_tokens_and_resamples(table):
    kw = {"slices": ["group:domain"], "bootstrap": R, "seed": 0}
    before = tokcal.evaluate(table, **kw).to_dict()
    after = tokcal.evaluate(table, calibrator=Temperature(temperature=1.6), **kw).to_dict()
    same = paired.difference(before, before)
    assert same.paired and same.diff == 0 and same.ci == (0.0, 0.0) and paired.verdict(same) == "no significant change"
    d = paired.difference(before, after)
    assert d.paired and d.diff == pytest.approx(after["overall"]["ece"] - before["overall"]["ece"])
    assert d.ci[0] <= d.diff <= d.ci[1] and paired.verdict(d) == "lower"
    reseeded = tokcal.evaluate(table, calibrator=Temperature(temperature=1.6), slices=["group:domain"],
                               bootstrap=R, seed=1).to_dict()
    assert not paired.difference(before, reseeded).paired
    assert "bootstraps differ" in paired.difference(before, reseeded).reason
    other = tokcal.evaluate(table.select(np.arange(len(table)) < 4000), **kw).to_dict()
    d = paired.difference(before, other)
    assert not d.paired and d.ci is None and "different tokens" in d.reason and paired.verdict(d) == "unpaired"
    none = tokcal.evaluate(table, slices=["group:domain"], bootstrap=0).to_dict()
    assert "no bootstrap replicates" in paired.pairing(none, none)[1]



def test_fingerprint_hashes_the_labelled_rows_and_old_definitions_do_not_pair(table):
    import hashlib

    from tokcal.evaluation import table_fingerprint

    keep = table.labeled
    rows = np.stack([table.sequence_id[keep], table.position[keep], table.label[keep]], axis=1).astype(np.int64)
    assert table_fingerprint(table) == "sha256-rows:" + hashlib.sha256(rows.tobytes()).hexdigest()
    relabelled = table.select(np.arange(len(table)))
    relabelled.label = relabelled.label.copy()
    relabelled.label[np.flatnonzero(keep)[7]] = (relabelled.label[np.flatnonzero(keep)[7]] + 1) % table.vocab_size
    assert table_fingerprint(relabelled) != table_fingerprint(table)
    ev = tokcal.evaluate(table, bootstrap=R).to_dict()
    old = {**ev, "table_fingerprint": "sha256:" + "0" * 64}  # as tokcal wrote it before (per column)
    ok, reason = paired.pairing(old, ev)
    assert not ok and "different definitions" in reason and "older tokcal" in reason

def test_verdict_words_follow_the_rules(table):
    kw = {"slices": ["group:domain"], "bootstrap": R, "seed": 0}
    evs = {"uncalibrated": tokcal.evaluate(table, **kw).to_dict(),
           "per-domain": tokcal.evaluate(table, calibrator=GroupTemperature(by="domain").fit(table), **kw).to_dict()}
    v = verdict(evs)
    assert (v.baseline, v.candidate) == ("uncalibrated", "per-domain") and v.paired
    assert ("group:domain", "b", "over-confident") in v.miscalibrated
    assert ("group:domain", "b") in v.fixes
    text = " ".join(sentences(evs, v))
    assert text.startswith("per-domain cuts ECE from ") and "fixes group:domain=b" in text
    assert "paired difference -" in text
    # an identical "calibrator" changes nothing: no significant change, no fixes
    evs["T=1"] = tokcal.evaluate(table, calibrator=Temperature(temperature=1.0), **kw).to_dict()
    v1 = verdict(evs, recommended="T=1")
    assert v1.fixes == [] and not v1.overall.significant
    assert "without a significant change" in " ".join(sentences(evs, v1))


def test_suggested_limits_pass_on_the_same_table_and_catch_a_regression(table):
    cal = GroupTemperature(by="domain").fit(table)
    ev = tokcal.evaluate(table, calibrator=cal, slices=["group:domain"], bootstrap=R)
    limits = gate.suggest_limits(ev, slices=["group:domain"])
    assert limits["max_ece"] >= ev.overall["ece"] and round(limits["max_ece"], 3) == limits["max_ece"]
    res = gate.check(table, cal, slices=["group:domain"], bootstrap=0, **limits)
    assert res.passed, [o for o in res.outcomes if not o.ok]
    assert not gate.check(table, None, slices=["group:domain"], bootstrap=0, **limits).passed
