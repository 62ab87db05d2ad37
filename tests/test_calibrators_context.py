"""Group and adaptive temperatures: recovery of per-domain and feature-dependent beta*, apply-time context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokcal import TokenTable, synthetic
from tokcal.calibrators import AdaptiveTemperature, GroupTemperature, Temperature
from tokcal.calibrators.adaptive import logit_features, table_logit_features
from tokcal.probs import token_probs
from tokcal.slices import TokenTypeSlice
from tokcal.vocab import TOKEN_TYPES

DOMAINS = {"news": 0.5, "chat": 1.0, "code": 2.0}


@pytest.fixture(scope="module")
def domain_table():
    return synthetic.make_table(15000, 500, domains=DOMAINS, seed=3)


def test_group_temperatures_recover_domain_beta_star(domain_table):
    cal = GroupTemperature("domain").fit(domain_table)
    for name, beta in DOMAINS.items():
        rows = domain_table.group("domain").values() == name
        own = Temperature().fit(domain_table.select(rows))
        lo, hi = own.interval(domain_table.select(rows), level=0.99, n_boot=1000)
        assert lo <= 1.0 / beta <= hi
        # heterogeneity is large, so shrinkage barely moves the well-estimated groups
        assert cal.temperatures[name] == pytest.approx(1.0 / beta, rel=0.04)
        assert cal.raw_temperatures[name] == pytest.approx(own.temperature, rel=1e-6)
    np.testing.assert_allclose(cal.row_temperatures(domain_table),
                               [cal.temperatures[v] for v in domain_table.group("domain").values()])


def test_sparse_group_is_shrunk_and_unseen_group_gets_global(domain_table):
    vals = domain_table.group("domain").values().astype(object)
    seq = domain_table.sequence_id
    tiny = np.isin(seq, np.unique(seq[vals == "news"])[:2])  # two sequences of 'news' -> group 'rare'
    vals = np.where(tiny, "rare", vals)
    t = domain_table.with_groups(domain=vals.astype(str))
    cal = GroupTemperature("domain").fit(t)
    raw, shrunk, glob = cal.raw_temperatures["rare"], cal.temperatures["rare"], cal.global_temperature
    assert abs(np.log(shrunk / glob)) < abs(np.log(raw / glob))
    no_shrink = GroupTemperature("domain", shrink=False).fit(t)
    assert no_shrink.temperatures["rare"] == pytest.approx(raw)
    z = synthetic.make_logits(3, 100, seed=1)
    out = cal.transform_logits(z, {"domain": ["code", "never-seen", "news"]})
    expect = np.array([cal.temperatures["code"], glob, cal.temperatures["news"]])
    np.testing.assert_allclose(out, (z - z.max(axis=1, keepdims=True)) / expect[:, None], rtol=1e-6)


def test_token_type_groups_are_the_type_slice():
    """GroupTemperature("token_type") groups tokens exactly as the ``type:predicted`` slice does."""
    t = synthetic.make_table(4000, 300, beta_star=0.7, seed=5)
    cal = GroupTemperature("token_type").fit(t)
    assert set(cal.temperatures) <= set(TOKEN_TYPES)
    assert len(cal.type_codes) == t.vocab_size
    sl = TokenTypeSlice(on="predicted")
    by_slice = np.asarray(sl.labels)[sl.codes(t)]
    np.testing.assert_array_equal(cal._table_groups(t), by_slice)
    assert cal.counts == {k: int(v) for k, v in zip(*np.unique(by_slice, return_counts=True), strict=True)}
    z = synthetic.make_logits(5, 300, seed=2)
    types = [t.vocabulary.token_type(i) for i in z.argmax(axis=1)]
    expect = np.array([cal.temperatures.get(x, cal.global_temperature) for x in types])
    np.testing.assert_allclose(cal.transform_logits(z), (z - z.max(axis=1, keepdims=True)) / expect[:, None],
                               rtol=1e-6)
    back = GroupTemperature.from_dict(cal.to_dict())
    np.testing.assert_allclose(back.transform_logits(z), cal.transform_logits(z), rtol=0)


def test_token_type_calibrator_saved_with_old_names_still_loads():
    """Files written before the unification used word/punct/number: same letters, names mapped."""
    t = synthetic.make_table(2000, 300, beta_star=0.7, seed=6)
    d = GroupTemperature("token_type").fit(t).to_dict()
    old = {"word-initial": "word", "punctuation": "punct", "digits": "number"}
    for key in ("temperatures", "raw_temperatures", "counts"):
        d[key] = {old.get(k, k): v for k, v in d[key].items()}
    d["type_codes"] = d["type_codes"].replace("e", "s").replace("o", "p")  # old alphabet
    back = GroupTemperature.from_dict(d)
    assert set(back.temperatures) <= set(TOKEN_TYPES) and "word" not in back.temperatures
    assert back.temperatures["word-initial"] == d["temperatures"]["word"]


def test_adaptive_recovers_feature_dependent_beta():
    w_true = 0.6
    t = synthetic.make_table(15000, 400, feature_beta=(w_true, 0.0), seed=7)
    cal = AdaptiveTemperature(l2=0.0).fit(t)
    coef = cal.coefficients()
    w_feat = coef["feature0"] / cal.scale[cal.feature_names.index("feature0")]
    assert w_feat == pytest.approx(w_true, abs=0.05)
    for name in ("entropy", "top1_logprob", "margin", "log_position", "freq_bucket"):
        assert abs(coef[name]) < 0.05, (name, coef)
    beta_hat = 1.0 / cal.row_temperatures(t)
    beta_true = synthetic.true_beta(t)
    assert np.median(np.abs(np.log(beta_hat / beta_true))) < 0.05
    # better held-out NLL than one global temperature
    test = synthetic.make_table(5000, 400, feature_beta=(w_true, 0.0), seed=8)
    nll_a = -np.log(cal.token_probs(test).label_prob).mean()
    nll_t = -np.log(Temperature().fit(t).token_probs(test).label_prob).mean()
    assert nll_a < nll_t - 0.005


def test_adaptive_features_and_transform_match_the_table():
    z = synthetic.make_logits(300, 800, seed=4)
    y = synthetic.sample_labels(z, 0.6, seed=5)
    pos = np.arange(300) % 37
    dom = np.where(np.arange(300) % 2 == 0, "a", "b")
    feats = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    t = TokenTable.from_logits(z, y, positions=pos, groups={"dom": dom}, features=feats,
                               sequence_ids=np.arange(300) // 10)
    # entropy from the sketch uses the tail histogram mean: agreement to ~1e-5, not bit-exact
    np.testing.assert_allclose(logit_features(z), table_logit_features(t), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logit_features(torch.from_numpy(z)), logit_features(z), rtol=1e-6, atol=1e-6)
    cal = AdaptiveTemperature(groups=("dom",)).fit(t)
    ctx = {"position": pos, "dom": dom, "features": feats}
    temps = cal.row_temperatures(t)
    out = cal.transform_logits(z, ctx)
    np.testing.assert_allclose(out, (z - z.max(axis=1, keepdims=True)) / temps[:, None], rtol=1e-4, atol=1e-6)
    out_t = cal.transform_logits(torch.from_numpy(z), {**ctx, "position": torch.from_numpy(pos)})
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-5)
    np.testing.assert_array_equal(out.argmax(1), z.argmax(1))
    tp = cal.token_probs(t)
    np.testing.assert_allclose(tp.top_probs, token_probs(t, temps).top_probs)
    with pytest.raises(Exception, match="position"):
        cal.transform_logits(z, {"dom": dom, "features": feats})
