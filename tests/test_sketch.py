"""The logit sketch against brute force on full logits (the exactness contract)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp, softmax

from tokcal import sketch
from tokcal.errors import ValidationError

TEMPERATURES = [0.25, 0.33, 0.5, 0.7, 0.9, 1.0, 1.3, 1.7, 2.0, 3.0, 4.0]


def zipf_logits(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Heavy-tailed, LM-like: Zipf log-frequencies permuted per context, scaled, plus noise."""
    base = -np.log(np.arange(1, vocab + 1))
    z = np.empty((n, vocab), np.float32)
    for i in range(n):
        z[i] = rng.permutation(base) * rng.uniform(0.8, 3.0) + rng.normal(0.0, 1.0, vocab)
    return z


def gaussian_logits(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Light-tailed: Gaussian logits with a few boosted candidates."""
    z = rng.normal(0.0, rng.uniform(1.0, 4.0, (n, 1)), (n, vocab)).astype(np.float32)
    z[:, :5] += rng.uniform(0.0, 15.0, (n, 1)).astype(np.float32)
    return z


def far_tail_logits(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Zipf-like logits with a fifth of the vocabulary pushed 100-10^4 below (suppressed ids,
    padded vocabulary rows): offsets past the fine histogram's last edge."""
    z = zipf_logits(rng, n, vocab)
    far = rng.random((n, vocab)) < 0.2
    z[far] -= rng.uniform(100.0, 1e4, far.sum()).astype(np.float32)
    return z


@pytest.fixture(scope="module")
def cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"zipf50k": zipf_logits(rng, 60, 50_000), "gauss50k": gaussian_logits(rng, 60, 50_000),
            "zipf2k": zipf_logits(rng, 200, 2_000), "far8k": far_tail_logits(rng, 40, 8_000)}


@pytest.mark.parametrize("name", ["zipf50k", "gauss50k", "zipf2k", "far8k"])
def test_exact_at_temperature_one(cases, name):
    z = cases[name]
    labels = np.random.default_rng(1).integers(0, z.shape[1], len(z))
    sk = sketch.sketch_logits(z, labels, top_k=32)
    z64 = z.astype(np.float64)
    order = np.argsort(-z, axis=1, kind="stable")[:, :32]
    np.testing.assert_array_equal(sk.top_ids, order)
    np.testing.assert_array_equal(sk.top_logits, np.take_along_axis(z, order, 1))
    np.testing.assert_array_equal(sk.label_logit, z[np.arange(len(z)), labels])
    np.testing.assert_allclose(sk.log_normalizer, logsumexp(z64, axis=1), rtol=2e-7, atol=1e-6)
    p = softmax(z64, axis=1)
    np.testing.assert_allclose(sketch.log_partition(sk, 1.0), sk.log_normalizer.astype(np.float64))
    np.testing.assert_allclose(sketch.confidence(sk), p.max(1), rtol=1e-6)
    np.testing.assert_allclose(np.exp(sketch.label_logprob(sk)), p[np.arange(len(z)), labels], rtol=1e-5)
    np.testing.assert_allclose(sketch.sum_sq_probs(sk), (p * p).sum(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["zipf50k", "gauss50k", "zipf2k", "far8k"])
def test_log_partition_within_bound_at_other_temperatures(cases, name):
    z = cases[name].astype(np.float64)
    sk = sketch.sketch_logits(cases[name], top_k=32)
    for t in TEMPERATURES:
        exact = logsumexp(z / t, axis=1)
        err = np.abs(sketch.log_partition(sk, t) - exact).max()
        assert err < 1e-3, f"T={t}: log-partition off by {err:.2e} nats"
        p = softmax(z / t, axis=1)
        ent = -(p * np.log(np.maximum(p, 1e-300))).sum(1)
        assert np.abs(sketch.entropy(sk, t) - ent).max() < 5e-3
        np.testing.assert_allclose(sketch.sum_sq_probs(sk, t), (p * p).sum(1), atol=1e-4)


def test_per_row_temperatures_and_moments(cases):
    z = cases["zipf2k"]
    sk = sketch.sketch_logits(z, top_k=16)
    t = np.random.default_rng(3).uniform(0.3, 3.0, len(z))
    zt = z.astype(np.float64) / t[:, None]
    logz, mean, var = sketch.logit_moments(sk, t)
    p = softmax(zt, axis=1)
    np.testing.assert_allclose(logz, logsumexp(zt, axis=1), atol=1e-3)
    np.testing.assert_allclose(mean, (p * z).sum(1), atol=5e-3)
    true_var = (p * z * z).sum(1) - (p * z).sum(1) ** 2
    np.testing.assert_allclose(var, true_var, rtol=2e-2, atol=5e-3)


def test_torch_input_matches_numpy(cases):
    z = cases["zipf2k"]
    labels = np.random.default_rng(2).integers(-1, z.shape[1], len(z))
    a = sketch.sketch_logits(z, labels, top_k=32)
    b = sketch.sketch_logits(torch.from_numpy(z), torch.from_numpy(labels), top_k=32, chunk_rows=37)
    np.testing.assert_array_equal(a.top_ids, b.top_ids)
    np.testing.assert_array_equal(a.top_logits, b.top_logits)
    np.testing.assert_array_equal(a.label_logit, b.label_logit)
    np.testing.assert_allclose(a.log_normalizer, b.log_normalizer, rtol=2e-7, atol=1e-6)  # float32 rounding
    for t in (0.5, 2.0):
        np.testing.assert_allclose(sketch.log_partition(a, t), sketch.log_partition(b, t), atol=1e-5)


def test_ties_and_full_vocabulary():
    z = np.zeros((3, 10), np.float32)
    z[1, 3] = 1.0
    sk = sketch.sketch_logits(z, np.array([0, 3, 9]), top_k=4)
    assert sk.top_ids[0].tolist() == [0, 1, 2, 3]
    assert sk.top_ids[1, 0] == 3
    np.testing.assert_allclose(sketch.confidence(sk)[0], 0.1, rtol=1e-6)
    full = sketch.sketch_logits(z, top_k=10)
    assert full.layout.kind == "empty"
    for t in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(sketch.log_partition(full, t), logsumexp(z / t, axis=1), rtol=1e-6)


def test_logprob_sketch_unknown_tail():
    ids = np.array([[5, 2, 9], [1, 0, 3]])
    lp = np.log(np.array([[0.5, 0.2, 0.1], [0.7, 0.29, 1e-12]]))
    lp[1, 2] = -9999.0
    sk = sketch.sketch_logprobs(ids, lp, np.log([0.2, np.nan]), vocab_size=100)
    assert sk.layout.kind == "uniform-remainder" and not sk.layout.tail_known
    np.testing.assert_allclose(sketch.log_partition(sk, 1.0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.exp(sketch.top_logprobs(sk))[0], [0.5, 0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(np.exp(sketch.label_logprob(sk))[0], 0.2, rtol=1e-6)
    # the remaining 0.2 of row 0 is spread over 97 ids: log Z(T) is exact for that model
    probs = np.concatenate([[0.5, 0.2, 0.1], np.full(97, 0.2 / 97)])
    for t in (0.5, 2.0):
        np.testing.assert_allclose(sketch.log_partition(sk, t)[0], logsumexp(np.log(probs) / t), rtol=1e-6)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.array([[0.0, np.nan, 1.0], [0, 1, 2]], np.float32), None, "row 0 contains NaN or inf"),
        (np.array([[0.0, 1, 2], [0, np.inf, 1]], np.float32), None, "row 1 contains NaN or inf (id 1 is inf)"),
        (np.array([[0.0, 1, 2], [0, -np.inf, -np.inf]], np.float32), None,
         "row 1 has 1 finite logits (the rest -inf, masked ids), fewer than top_k=2"),
        (np.zeros((2, 3), np.float32), np.array([0, 3]), "row 1 has id 3, outside [0, 3)"),
        (np.zeros((2, 3), np.float32), np.array([0]), "labels: expected shape (2,)"),
        (np.zeros((0, 3), np.float32), None, "empty"),
        (np.zeros(3, np.float32), None, "2-D"),
        (np.zeros((2, 3), np.int64), None, "floating point"),
    ],
)
def test_bad_logits_are_named(logits, labels, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        sketch.sketch_logits(logits, labels, top_k=2)


def test_vocabulary_beyond_the_kernel_counters_is_refused():
    with pytest.raises(ValidationError, match="8,388,608 ids"):
        sketch.sketch_logits(np.zeros((1, 1 << 23), np.float32), top_k=2)


def test_bad_temperature_and_top_k():
    sk = sketch.sketch_logits(np.zeros((2, 4), np.float32), top_k=2)
    with pytest.raises(ValidationError, match="temperature"):
        sketch.log_partition(sk, 0.0)
    with pytest.raises(ValidationError, match="top_k=5"):
        sketch.sketch_logits(np.zeros((2, 4), np.float32), top_k=5)


def test_kernel_exponential_is_within_one_float32_ulp():
    """The sketch's vectorisable float32 exp (Cephes expf) against float64 numpy on [-87, 0]."""
    from tokcal._sketch_kernel import exp_block

    x = np.linspace(-87.0, 0.0, 2_000_001).astype(np.float32)
    e = np.empty(len(x), np.float32)
    bits = np.empty(len(x), np.int32)
    exp_block(x, np.float32(0.0), e, bits)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(e - exact) / exact) < 1.2e-7  # float32 epsilon
    below = np.array([-100.0, -500.0, -np.inf], np.float32)
    exp_block(below, np.float32(0.0), e, bits)
    assert (e[:3] == 0).all()  # below float32's normal range, and masked ids: exactly 0



def test_temperature_stats_exponential_is_within_two_float64_ulp():
    """The probabilities of temperature_stats (the kernel's vectorised double exp) against numpy's exp of
    the same exponents, over the whole normal range, at several temperatures (masked ids: see
    test_masked_ids_at_minus_infinity_have_probability_zero)."""
    k = 32
    z = np.random.default_rng(0).uniform(-700.0, 0.0, (6000, k)).astype(np.float32)
    z[:, 0] = 0.0
    sk = sketch.sketch_logits(z, top_k=k)  # k = V: exact, no tail
    for t in (1.0, 0.7, 3.0):
        st_ = sketch.temperature_stats(sk, t, top_probs=True)
        b = 1.0 / t
        mx = b * sk.top_logits[:, :1].astype(np.float64)
        x = b * sk.top_logits.astype(np.float64) - mx
        assert np.allclose(st_.logz, np.log(np.exp(x).sum(1)) + mx[:, 0], rtol=0, atol=1e-6 if t == 1 else 1e-12)
        want = np.exp(x) * np.exp(mx - st_.logz[:, None])  # the kernel's normaliser (the stored one at T = 1)
        ok = want > 1e-300
        assert np.max(np.abs(st_.top_probs[ok] - want[ok]) / want[ok]) < 1e-15
        assert (st_.top_probs[~ok] < 1e-290).all()


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(1, 3000), st.integers(0, 2**32 - 1), st.sampled_from([2, 5, 1000]))
def test_top_k_and_normaliser_match_brute_force_with_ties(k, vocab, seed, levels):
    """The block-maximum top-k selection against a stable argsort: any vocabulary size (below,
    at and far above k blocks of 32), heavy ties (few distinct values), ties broken by lower id."""
    vocab = max(vocab, k)
    rng = np.random.default_rng(seed)
    z = (rng.integers(0, levels, (7, vocab)) * (4.0 / levels)).astype(np.float32)
    z[1] = rng.normal(0, 3, vocab)  # no ties
    labels = rng.integers(0, vocab, 7)
    sk = sketch.sketch_logits(z, labels, top_k=k)
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(sk.top_ids, order)
    np.testing.assert_array_equal(sk.top_logits, np.take_along_axis(z, order, 1))
    np.testing.assert_array_equal(sk.label_logit, z[np.arange(7), labels])
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(sk.log_normalizer, logsumexp(z64, axis=1), rtol=2e-7, atol=1e-6)
    if k < vocab:  # the tail's exact beta = 1 node: logsumexp of everything outside the top-k
        rest = z64.copy()
        np.put_along_axis(rest, order, -np.inf, 1)
        i1 = sk.layout.betas.index(1.0)
        np.testing.assert_allclose(sk.tail[:, i1, 0], logsumexp(rest, axis=1), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("where", [0, 31, 32, 33, 500, 4095])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_logit_anywhere_is_named(where, value):
    """A NaN or infinite logit at a block boundary, inside the top-k or deep in the tail."""
    z = np.random.default_rng(0).normal(0, 2, (3, 4096)).astype(np.float32)
    z[2, where] = value
    with pytest.raises(ValidationError, match="row 2 contains NaN or inf"):
        sketch.sketch_logits(z, top_k=32)
    with pytest.raises(ValidationError, match="row 2 contains NaN or inf"):
        sketch.sketch_logits(z, top_k=1)


@pytest.mark.parametrize("name", ["zipf2k", "far8k"])
def test_beta_zero_node_is_the_tail_count_and_mean(cases, name):
    """f(0) = log(#tail), f'(0) = the tail's mean logit, far offsets (overflow bin) included."""
    z = cases[name]
    sk = sketch.sketch_logits(z, top_k=32)
    rest = z.astype(np.float64).copy()
    np.put_along_axis(rest, sk.top_ids.astype(np.int64), np.nan, 1)
    np.testing.assert_allclose(sk.tail[:, 0, 0], np.log(z.shape[1] - 32), rtol=1e-6)
    np.testing.assert_allclose(sk.tail[:, 0, 1], np.nanmean(rest, axis=1), rtol=1e-4, atol=1e-4)


def test_float64_logits_sketch_like_their_float32_rounding():
    """The stored top-k logits are float32: a float64 row is sketched as its float32 rounding, so
    the exact beta = 1 tail never counts a top-k logit that rounding moved across z_k."""
    z = np.random.default_rng(0).normal(0, 3, (50, 5000))
    a = sketch.sketch_logits(z, top_k=32)
    b = sketch.sketch_logits(z.astype(np.float32), top_k=32)
    np.testing.assert_array_equal(a.top_ids, b.top_ids)
    np.testing.assert_array_equal(a.tail, b.tail)
    np.testing.assert_array_equal(a.log_normalizer, b.log_normalizer)


@pytest.mark.parametrize("name", ["zipf2k", "gauss50k", "far8k"])
def test_log_partition_at_high_temperatures(cases, name):
    """T up to 20 (the fit's default bound): the interpolant stays between the convexity bounds, so
    a tail with ids 100+ below (f bends sharply just above beta = 0) stays within 0.05 nats."""
    z = cases[name].astype(np.float64)
    sk = sketch.sketch_logits(cases[name], top_k=32)
    bound = 0.05 if name == "far8k" else 1e-3
    for t in (6.0, 10.0, 15.0, 20.0):
        err = np.abs(sketch.log_partition(sk, t) - logsumexp(z / t, axis=1)).max()
        assert err < bound, f"T={t}: log-partition off by {err:.2e} nats"
        f = sketch.tail_cumulants(sk, np.full(len(z), 1 / t))[0]  # the numpy twin of the kernel's interpolant
        via_numpy = np.logaddexp(logsumexp(sk.top_logits.astype(np.float64) / t, axis=1), f)
        np.testing.assert_allclose(via_numpy, sketch.log_partition(sk, t), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_masked_ids_at_minus_infinity_have_probability_zero(backend):
    """-inf logits (masked ids, anywhere: block edges, whole blocks) are left out of everything:
    the sketch equals the brute force over the finite ids, at T = 1 exactly and at other T."""
    rng = np.random.default_rng(3)
    z = zipf_logits(rng, 30, 6000)
    mask = rng.random(z.shape) < 0.3
    mask[:, 64:192] = True  # four whole blocks
    mask[:, [0, 31, 32, 5999]] = True
    z[mask] = -np.inf
    labels = np.array([int(np.flatnonzero(~m)[0]) for m in mask])
    sk = sketch.sketch_logits(torch.from_numpy(z) if backend == "torch" else z, labels, top_k=32)
    order = np.argsort(-z, axis=1, kind="stable")[:, :32]
    np.testing.assert_array_equal(sk.top_ids, order)
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(sk.log_normalizer, logsumexp(z64, axis=1), rtol=2e-7, atol=1e-6)
    rest = z64.copy()
    np.put_along_axis(rest, order, -np.inf, 1)
    np.testing.assert_allclose(sk.tail[:, sk.layout.betas.index(1.0), 0], logsumexp(rest, axis=1), rtol=2e-6)
    n_tail = (~mask).sum(1) - 32
    np.testing.assert_allclose(sk.tail[:, 0, 0], np.log(n_tail), rtol=1e-6)  # f(0): finite tail ids only
    for t in TEMPERATURES:
        assert np.abs(sketch.log_partition(sk, t) - logsumexp(z64 / t, axis=1)).max() < 1e-3, t
