"""tokcal.synthetic: deterministic generators whose labels follow softmax(beta* z)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tokcal import TokcalError, TokenTable
from tokcal.probs import token_probs
from tokcal.synthetic import make_logits, make_table, make_vocab, sample_labels, true_beta


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.5])
def test_labels_follow_softmax_beta_z_chi_square(beta):
    row = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
    n = 60000
    y = sample_labels(np.tile(row, (n, 1)), beta, seed=3)
    counts = np.bincount(y, minlength=row.size)
    expected = n * _softmax(beta * row.astype(np.float64))
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    # a wrong beta is rejected by the same test (the test has power)
    wrong = n * _softmax(1.3 * beta * row.astype(np.float64))
    assert stats.chisquare(counts, wrong).pvalue < 1e-6


def test_per_row_beta_and_chunking():
    row = np.array([1.5, 0.0, -0.5, -2.0], np.float32)
    n = 40000
    beta = np.where(np.arange(n) % 2 == 0, 0.4, 3.0)
    # V small -> many rows per chunk; force several chunks with a wide vocabulary instead
    y = sample_labels(np.tile(row, (n, 1)), beta, seed=1)
    for b in (0.4, 3.0):
        counts = np.bincount(y[beta == b], minlength=row.size)
        assert stats.chisquare(counts, counts.sum() * _softmax(b * row.astype(np.float64))).pvalue > 1e-3
    wide = np.zeros((9000, 600), np.float32)
    wide[:, 7] = 3.0
    yw = sample_labels(wide, 1.0, seed=0)  # > 1 chunk of 2^22 / 600 rows
    p7 = np.exp(3.0) / (np.exp(3.0) + 599)
    assert abs((yw == 7).mean() - p7) < 4 * np.sqrt(p7 * (1 - p7) / 9000)


def test_make_logits_is_deterministic_and_lm_like():
    a = make_logits(500, 300, seed=4)
    b = make_logits(500, 300, seed=4)
    c = make_logits(500, 300, seed=5)
    assert a.dtype == np.float32 and a.shape == (500, 300)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    p = np.exp(a - a.max(1, keepdims=True))
    conf = (p / p.sum(1, keepdims=True)).max(1)
    assert conf.min() < 0.2 and conf.max() > 0.9  # a range of peakedness
    assert np.bincount(a.argmax(1), minlength=300)[:10].sum() > 500 * 0.1  # frequent ids exist


def test_make_table_is_deterministic():
    t1 = make_table(600, 200, seq_len=25, seed=7)
    t2 = make_table(600, 200, seq_len=25, seed=7)
    for col in ("label", "top_ids", "top_logits", "label_logit", "log_normalizer", "tail"):
        np.testing.assert_array_equal(getattr(t1, col), getattr(t2, col))
    assert t1.n_sequences == 24
    np.testing.assert_array_equal(t1.position[:26], np.r_[np.arange(25), 0])
    assert t1.source["beta_star"] == 1.0 and list(t1.vocabulary.pieces) == make_vocab(200)
    assert not np.array_equal(make_table(600, 200, seed=8).label, t1.label)


def test_beta_direction_matches_confidence_gap():
    # beta* < 1: the truth is flatter -> the model is over-confident (mean conf > accuracy)
    over = token_probs(make_table(6000, 300, beta_star=0.6, seed=1))
    under = token_probs(make_table(6000, 300, beta_star=1.8, seed=1))
    assert over.confidence.mean() - over.correct.mean() > 0.05
    assert under.confidence.mean() - under.correct.mean() < -0.05


def test_domains_and_feature_beta_recoverable(tmp_path):
    t = make_table(3000, 150, domains={"news": 0.7, "code": 1.5}, feature_beta=(0.3, 0.1), seq_len=30, seed=2)
    g = t.group("domain")
    assert set(g.categories) == {"news", "code"}
    # one domain per sequence
    for s in np.unique(t.sequence_id)[:20]:
        assert np.unique(g.codes[t.sequence_id == s]).size == 1
    dom_beta = np.where(g.values() == "news", 0.7, 1.5)
    expected = dom_beta * np.exp(0.1 + 0.3 * t.features[:, 0].astype(np.float64))
    np.testing.assert_allclose(true_beta(t), expected, rtol=1e-12)
    back = TokenTable.read_parquet(t.write_parquet(tmp_path / "syn.parquet"))
    np.testing.assert_allclose(true_beta(back), expected, rtol=1e-6)


def test_callable_feature_beta():
    t = make_table(500, 100, feature_beta=lambda f: np.where(f > 0, 2.0, 0.5), seed=0)
    np.testing.assert_array_equal(true_beta(t), np.where(t.features[:, 0] > 0, 2.0, 0.5))


def test_vocab_has_every_token_type():
    v = make_vocab(1000)
    assert len(set(v)) == 1000 and "<eos>" in v[:30] and v[-3:] == ["<bos>", "<pad>", "<unk>"]
    assert any(s.startswith("Ġ") and s[1:].isalpha() for s in v)
    assert any(s.isalpha() for s in v)  # continuation pieces
    assert any(s.isdigit() for s in v) and "\n" in v and "." in v


@pytest.mark.parametrize("kwargs", [
    {"n_tokens": 0}, {"vocab_size": 1}, {"beta_star": 0.0}, {"beta_star": float("nan")},
    {"domains": {}}, {"domains": {"a": -1.0}}, {"seq_len": 0}, {"feature_beta": "x"},
])
def test_bad_arguments_raise_tokcal_errors(kwargs):
    with pytest.raises(TokcalError):
        make_table(**{"n_tokens": 100, "vocab_size": 50, **kwargs})


def test_sample_labels_bad_input():
    with pytest.raises(TokcalError, match="beta_star"):
        sample_labels(np.zeros((3, 4)), [1.0, 2.0])
    with pytest.raises(TokcalError, match="shape"):
        sample_labels(np.zeros(4), 1.0)
