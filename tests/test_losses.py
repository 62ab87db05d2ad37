"""tokcal.losses against oracles ported from the authors' public code (the formulas as they wrote
them, over full log-softmax matrices), values and gradients, plus reductions, dtypes and bad input.

Oracle sources: focal / FLSD-53 / MMCE: torrvision/focal_calibration (Mukhoti et al. 2020),
AdaFocal: 3mcloud/adafocal (Ghosh et al. 2022), dual focal: Linwei94/ICML2023-DualFocalLoss (Tao et
al. 2023), soft-binned ECE: uncertainty-baselines' soft-calibration secondary losses (Karandikar et
al. 2021, TensorFlow, ported to torch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokcal import losses as L
from tokcal.errors import ValidationError

V = 300


def _data(n=200, v=V, scale=3.0, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g) * scale
    y = torch.randint(0, v, (n,), generator=g)
    # make some predictions right so correct/incorrect both occur
    y[: n // 3] = z[: n // 3].argmax(1)
    if ignore:
        y[5] = y[17] = -100
    return z, y


# ---- oracles (the authors' formulas, full-softmax) -----------------------------------------------

def oracle_focal(z, y, gamma):  # FocalLoss.forward (mean)
    logpt = F.log_softmax(z, dim=1).gather(1, y.view(-1, 1)).view(-1)
    pt = logpt.exp()
    return (-1 * (1 - pt) ** gamma * logpt).mean()


def oracle_flsd53(z, y):  # FocalLossAdaptive(gamma=3): gamma_dic {0.2: 5, 0.5: 3}, 3 at >= 0.5
    logpt = F.log_softmax(z, dim=1).gather(1, y.view(-1, 1)).view(-1)
    pt = logpt.exp()
    gammas = []
    for p in pt.tolist():
        if p >= 0.5:
            gammas.append(3.0)
            continue
        for key in sorted({0.2: 5.0, 0.5: 3.0}):
            if p < key:
                gammas.append({0.2: 5.0, 0.5: 3.0}[key])
                break
    return (-1 * (1 - pt) ** torch.tensor(gammas) * logpt).mean()


def oracle_dual_focal(z, y, gamma):  # DualFocalLoss.forward (mean)
    logp_k = F.log_softmax(z, dim=1)
    softmax_logits = logp_k.exp()
    logp_k = logp_k.gather(1, y.view(-1, 1)).view(-1)
    p_k = logp_k.exp()
    p_j_mask = torch.lt(softmax_logits, p_k.reshape(p_k.shape[0], 1)) * 1
    p_j = torch.topk(p_j_mask * softmax_logits, 1)[0].squeeze()
    return (-1 * (1 - p_k + p_j) ** gamma * logp_k).mean()


class OracleAdaFocal:  # AdaFocal (3mcloud/adafocal): bin_stats, update_bin_stats, get_gamma_per_sample, forward
    def __init__(self, num_bins=15, lamda=1.0, gamma_initial=1.0, switch_pt=0.2, gamma_max=20.0, gamma_min=-2.0):
        self.num_bins, self.lamda, self.switch_pt = num_bins, lamda, switch_pt
        self.gamma_max, self.gamma_min = gamma_max, gamma_min
        self.bin_stats = {b: {"lower_boundary": b / num_bins, "upper_boundary": (b + 1) / num_bins,
                              "gamma": gamma_initial} for b in range(num_bins)}

    def update_bin_stats(self, val_adabin_dict):
        for b in range(self.num_bins):
            prev = self.bin_stats[b]["gamma"]
            gap = val_adabin_dict[b]["calibration_gap"]
            nxt = prev * math.exp(self.lamda * gap) if prev > 0 else prev * math.exp(-self.lamda * gap)
            if abs(nxt) < self.switch_pt:
                nxt = -self.switch_pt if nxt > 0 else self.switch_pt
            self.bin_stats[b]["gamma"] = max(min(nxt, self.gamma_max), self.gamma_min)
            self.bin_stats[b]["lower_boundary"] = val_adabin_dict[b]["lower_bound"]
            self.bin_stats[b]["upper_boundary"] = val_adabin_dict[b]["upper_bound"]

    def gamma_per_sample(self, pt):
        out = []
        for p in pt.tolist():
            for b, st in self.bin_stats.items():
                if b == 0 and p < st["upper_boundary"]:
                    break
                if b == self.num_bins - 1 and p >= st["lower_boundary"]:
                    break
                if st["lower_boundary"] <= p < st["upper_boundary"]:
                    break
            out.append(st["gamma"])
        return torch.tensor(out)

    def __call__(self, z, y):  # mean instead of the authors' sum
        logpt = F.log_softmax(z, dim=1).gather(1, y.view(-1, 1)).view(-1)
        pt = logpt.exp()
        gamma = self.gamma_per_sample(pt.detach())
        pt = torch.sign(gamma) * pt
        return (-1 * ((1 - pt + 1e-20) ** gamma.abs()) * logpt).mean()


def oracle_mmce(z, y):  # MMCE.forward: tiled probability pairs, Laplacian kernel width 0.4
    probs, pred = torch.max(F.softmax(z, dim=1), 1)
    correct = torch.where(torch.eq(pred, y), torch.ones(pred.shape), torch.zeros(pred.shape))
    c_minus_r = correct - probs
    dot = torch.mm(c_minus_r.unsqueeze(1), c_minus_r.unsqueeze(0))
    tiled = probs.unsqueeze(1).repeat(1, probs.shape[0]).unsqueeze(2)
    pairs = torch.cat([tiled, tiled.permute(1, 0, 2)], dim=2)
    kernel = torch.exp(-1.0 * torch.abs(pairs[:, :, 0] - pairs[:, :, 1]) / 0.4)
    return torch.sum(dot * kernel) / float(correct.shape[0]) ** 2


def oracle_soft_ece(z, y, bins=15, temp=0.01):  # get_soft_binning_ece_tensor(use_decay=False)
    eps = 1e-5
    probs, pred = torch.max(F.softmax(z, dim=1), 1)
    labels = (pred == y).float()
    anchors = torch.tensor(np.arange(1.0 / (2.0 * bins), 1.0, 1.0 / bins), dtype=torch.float32)
    pt = probs.unsqueeze(1).tile(1, len(anchors))
    at = anchors.unsqueeze(0).tile(len(probs), 1)
    coeffs = torch.softmax(-((pt - at) ** 2) / temp, dim=1)
    s = coeffs.sum(0)
    conf = (pt * coeffs).sum(0) / torch.maximum(s, eps * torch.ones_like(s))
    acc = (labels.unsqueeze(1).tile(1, len(anchors)) * coeffs).sum(0) / torch.maximum(s, eps * torch.ones_like(s))
    w = s / s.abs().sum()
    return torch.sqrt(torch.dot((conf - acc) ** 2, w))


def oracle_entropy_penalty(z, y, beta):  # Pereyra et al. eq. (2): CE - beta * H
    lp = F.log_softmax(z, dim=1)
    h = -(lp.exp() * lp).sum(1)
    return (F.nll_loss(lp, y, reduction="none") - beta * h).mean()


def oracle_gls(z, y, conf):  # Wang et al. 2020: eps 0 / 0.1 / 0.3 by confidence, torch's smoothing convention
    eps = torch.where(conf < 0.3, 0.0, torch.where(conf < 0.7, 0.1, 0.3))
    lp = F.log_softmax(z, dim=1)
    return ((1 - eps) * -lp.gather(1, y[:, None])[:, 0] + eps * -lp.mean(1)).mean()


# ---- comparisons -----------------------------------------------------------------------------------

def _value_and_grad(fn, z, y):
    z = z.clone().requires_grad_(True)
    out = fn(z, y)
    (g,) = torch.autograd.grad(out, z)
    return out.detach(), g


def _kept(z, y):
    m = y != -100
    return z[m], y[m]


def _compare(ours, oracle, z, y, rtol=2e-5, atol=1e-7):
    v1, g1 = _value_and_grad(ours, z, y)
    zk, yk = _kept(z, y)
    v2, g2k = _value_and_grad(oracle, zk, yk)
    g2 = torch.zeros_like(z)
    g2[y != -100] = g2k
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=atol)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_equals_authors(gamma):
    z, y = _data()
    _compare(lambda a, b: L.focal(a, b, gamma), lambda a, b: oracle_focal(a, b, gamma), z, y)


def test_focal_gamma_zero_is_cross_entropy():
    z, y = _data()
    torch.testing.assert_close(L.focal(z, y, 0.0), F.cross_entropy(z, y))
    torch.testing.assert_close(L.cross_entropy(z, y), F.cross_entropy(z, y))


def test_flsd53_equals_authors():
    z, y = _data(scale=5.0)  # p_y on both sides of 0.2 and 0.5
    p = F.softmax(z, 1).gather(1, y.clamp(min=0)[:, None])[:, 0]
    assert (p < 0.2).any() and (p >= 0.5).any()
    _compare(L.flsd53, oracle_flsd53, z, y)


@pytest.mark.parametrize("gamma", [2.0, 5.0])
def test_dual_focal_equals_authors(gamma):
    z, y = _data()
    y[40] = z[40].argmin()  # p_y the smallest: p_j = 0
    _compare(lambda a, b: L.dual_focal(a, b, gamma), lambda a, b: oracle_dual_focal(a, b, gamma), z, y)


def test_label_smoothing_equals_torch():
    z, y = _data()
    for eps in (0.0, 0.1, 0.4):
        _compare(lambda a, b, e=eps: L.label_smoothing(a, b, e),
                 lambda a, b, e=eps: F.cross_entropy(a, b, label_smoothing=e), z, y)


def test_graduated_label_smoothing_equals_formula():
    z, y = _data()
    conf = torch.rand(len(y), generator=torch.Generator().manual_seed(3))
    conf[0], conf[1] = 0.3, 0.7  # the boundaries: 0.1 and 0.3
    v1, g1 = _value_and_grad(lambda a, b: L.graduated_label_smoothing(a, b, conf), z, y)
    m = y != -100
    v2, g2 = _value_and_grad(lambda a, b: oracle_gls(a, b, conf[m]), z[m], y[m])
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1[m], g2, rtol=1e-4, atol=1e-7)
    assert L.graduated_epsilon(torch.tensor([0.0, 0.29, 0.3, 0.69, 0.7, 1.0])).tolist() == pytest.approx(
        [0.0, 0.0, 0.1, 0.1, 0.3, 0.3])


def test_confidence_penalty_equals_pereyra_and_raises_entropy():
    z, y = _data()
    _compare(lambda a, b: L.confidence_penalty(a, b, 0.3), lambda a, b: oracle_entropy_penalty(a, b, 0.3), z, y)
    # the sign: a gradient step on the penalty term alone (CE removed) raises the entropy
    zk, yk = _kept(z, y)
    w = zk.clone().requires_grad_(True)
    pen = L.confidence_penalty(w, yk, 1.0) - F.cross_entropy(w, yk)
    (g,) = torch.autograd.grad(pen, w)

    def entropy(x):
        lp = F.log_softmax(x, 1)
        return -(lp.exp() * lp).sum(1).mean()

    assert entropy(zk - 0.5 * g) > entropy(zk)


def test_mmce_equals_authors():
    z, y = _data(n=120)
    _compare(L.mmce, oracle_mmce, z, y, rtol=1e-4, atol=1e-7)


def _brute_mmce(conf, correct, width):  # the n x n Laplacian kernel sum, float64
    d = correct - conf
    k = torch.exp(-(conf[:, None] - conf[None, :]).abs() / width)
    return (d[:, None] * d[None, :] * k).sum() / conf.numel() ** 2


@pytest.mark.parametrize("width", [0.4, 0.05, 0.001])
def test_mmce_sorted_sum_equals_brute_force_with_ties(width):
    from tokcal.losses.auxiliary import _mmce_value

    g = torch.Generator().manual_seed(3)
    n = 3000
    conf = torch.rand(n, generator=g, dtype=torch.float64)
    conf[:1200] = torch.round(conf[:1200] * 20) / 20  # 21 values shared by 1200 tokens
    conf[1200:1300] = 1.0
    correct = (torch.rand(n, generator=g, dtype=torch.float64) < conf).double()
    a = conf.clone().requires_grad_(True)
    b = conf.clone().requires_grad_(True)
    fast, slow = _mmce_value(a, correct, width), _brute_mmce(b, correct, width)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-15)
    assert float(slow.detach()) > 0 and a.grad.abs().max() > 0


def test_second_derivatives_raise():
    from tokcal.losses.auxiliary import _mmce_value

    z, y = _data(n=20)
    z.requires_grad_(True)
    conf = torch.rand(30, dtype=torch.float64, requires_grad=True)
    for out, x in ((L.focal(z, y), z), (_mmce_value(conf, (conf.detach() > 0.5).double(), 0.4), conf)):
        (g,) = torch.autograd.grad(out, x, create_graph=True)
        with pytest.raises(RuntimeError):
            g.sum().backward()


def test_mmce_on_tied_logit_rows_equals_authors():
    z, y = _data(n=150)
    z[50:100] = z[0]  # 51 identical rows: equal confidences
    y[50:75] = z[0].argmax()
    _compare(L.mmce, oracle_mmce, z, y, rtol=1e-4, atol=1e-7)
    _compare(lambda a, b: L.mmce(a, b, kernel_width=0.05), _oracle_mmce_width(0.05), z, y, rtol=1e-4, atol=1e-7)


def _oracle_mmce_width(width):
    def fn(z, y):
        probs, pred = torch.max(F.softmax(z, dim=1), 1)
        return _brute_mmce(probs, (pred == y).float(), width)
    return fn


def test_soft_binned_ece_equals_authors_and_tends_to_binned_ece():
    z, y = _data(n=150, scale=1.0)
    _compare(L.soft_binned_ece, oracle_soft_ece, z, y, rtol=1e-4, atol=1e-7)
    _compare(lambda a, b: L.soft_binned_ece(a, b, 10, temperature=0.05),
             lambda a, b: oracle_soft_ece(a, b, 10, 0.05), z, y, rtol=1e-4, atol=1e-7)
    # T -> 0: the hard-binned l2 ECE (tokcal.metrics, RMSCE) at bin centres' Voronoi cells = width bins
    from tokcal import metrics

    zk, yk = _kept(z, y)
    p = F.softmax(zk, 1)
    c, a = p.max(1).values.numpy(), (p.argmax(1) == yk).numpy()
    hard = metrics.ece(c.astype(np.float64), a, bins=15, norm="l2")
    assert float(L.soft_binned_ece(zk, yk, 15, temperature=1e-6)) == pytest.approx(hard, rel=1e-4)


def test_cross_entropy_plus_is_ce_plus_term():
    z, y = _data(n=100)
    for term, fn in (("mmce", L.mmce), ("soft_binned_ece", L.soft_binned_ece)):
        _compare(lambda a, b, t=term: L.cross_entropy_plus(a, b, t, 0.7),
                 lambda a, b, f=fn: F.cross_entropy(a, b) + 0.7 * f(a, b), z, y, rtol=1e-5, atol=1e-6)
        n = int((y != -100).sum())
        s = L.cross_entropy_plus(z, y, term, 0.7, reduction="sum")
        torch.testing.assert_close(s, F.cross_entropy(z, y, reduction="sum") + 0.7 * n * fn(z, y))


def test_frequency_weighted_ce_equals_torch_weight():
    z, y = _data()
    counts = np.random.default_rng(0).zipf(1.5, V).astype(float)
    w = L.frequency_weights(counts, alpha=0.5)
    f = counts / counts.sum()
    assert float(f @ w) == pytest.approx(1.0)
    assert w[np.argmin(counts)] > w[np.argmax(counts)]  # rare ids up-weighted
    assert np.allclose(L.frequency_weights(counts, alpha=0.0), 1.0)
    wt = torch.as_tensor(w, dtype=torch.float32)
    for red in ("mean", "sum", "none"):
        _compare(lambda a, b, r=red: L.frequency_weighted_ce(a, b, w, reduction=r).sum(),
                 lambda a, b, r=red: F.cross_entropy(a, b, weight=wt, reduction=r).sum(), z, y)


def test_adafocal_update_and_loss_equal_authors():
    z, y = _data(scale=1.0)
    ours, theirs = L.AdaFocal(), OracleAdaFocal()
    _compare(ours, theirs, z, y)
    rng = np.random.default_rng(2)
    for _ in range(3):  # three validation rounds with equal-mass-like boundaries and mixed gaps
        edges = np.sort(np.r_[0.0, rng.uniform(0.05, 0.95, 14), 1.0])
        gaps = rng.normal(0, 0.6, 15)
        gaps[4] = -3.0  # pushes gamma below the switch point: inverse focal
        rows = [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": 10, "gap": float(gaps[b])} for b in range(15)]
        ours.update({"bins": rows})
        theirs.update_bin_stats({b: {"calibration_gap": float(gaps[b]), "lower_bound": float(edges[b]),
                                     "upper_bound": float(edges[b + 1])} for b in range(15)})
        np.testing.assert_allclose(ours.gammas, [theirs.bin_stats[b]["gamma"] for b in range(15)])
    assert (ours.gammas < 0).any() and (ours.gammas > 0).any()
    _compare(ours, theirs, z, y)


def test_adafocal_updates_from_an_evaluation():
    import tokcal
    from tokcal.synthetic import make_logits, sample_labels

    logits = make_logits(3000, 200, seed=0)
    t = tokcal.TokenTable.from_logits(logits, sample_labels(logits, beta_star=0.6, seed=1), top_k=8)
    ev = tokcal.evaluate(t, bins=15, binning="mass", bootstrap=0, slices=[])
    af = L.AdaFocal().update(ev)
    gaps = np.array([b["gap"] for b in ev["bins"]])
    assert (gaps > 0).mean() > 0.5  # over-confident model: most gammas grow
    np.testing.assert_allclose(af.gammas[gaps > 0] > 1.0, True)
    np.testing.assert_allclose(af.edges, [b["lo"] for b in ev["bins"]] + [ev["bins"][-1]["hi"]])
    with pytest.raises(ValidationError, match="bins"):
        L.AdaFocal(bins=10).update(ev)


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "flsd53", "dual_focal", "label_smoothing",
                                  "confidence_penalty"])
def test_reductions_and_shapes(name):
    fn = getattr(L, name)
    z, y = _data(n=60)
    z3, y3 = z.reshape(3, 20, V), y.reshape(3, 20)
    none = fn(z3, y3, reduction="none")
    assert none.shape == (3, 20) and float(none[y3 == -100].abs().sum()) == 0.0
    torch.testing.assert_close(fn(z3, y3, reduction="sum"), none.sum())
    torch.testing.assert_close(fn(z3, y3), none.sum() / (y3 != -100).sum())
    y_all = torch.full_like(y3, -100)
    assert torch.isnan(fn(z3, y_all))  # like F.cross_entropy: 0 / 0
    assert float(fn(z3, y_all, reduction="sum")) == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype):
    z, y = _data(n=80, scale=8.0)
    z[0, 3] = 60.0  # large logits: no overflow in the float32 inside
    for fn in (L.focal, L.confidence_penalty, L.dual_focal, L.label_smoothing):
        zl = z.to(dtype).requires_grad_(True)
        out = fn(zl, y)
        out.backward()
        assert out.dtype == dtype and zl.grad.dtype == dtype and torch.isfinite(zl.grad.float()).all()
        ref = fn(z.to(dtype).float(), y)
        torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_masked_logits_are_probability_zero():
    z, y = _data(n=30, ignore=False)
    z[:, 10:20] = float("-inf")
    y = torch.where((y >= 10) & (y < 20), 0, y)
    zm = z.clone()
    for fn, ref in ((L.confidence_penalty, lambda a, b: oracle_entropy_penalty(a, b, 0.1)),
                    (L.cross_entropy, F.cross_entropy)):
        w = z.clone().requires_grad_(True)
        out = fn(w, y)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(w.grad).all()
        if fn is L.cross_entropy:
            torch.testing.assert_close(out, ref(zm, y))


def test_bad_input_errors():
    z, y = _data(n=10, ignore=False)
    with pytest.raises(ValidationError, match="token 2 has id 300"):
        y2 = y.clone()
        y2[2] = 300
        L.focal(z, y2)
    with pytest.raises(ValidationError, match="shape"):
        L.focal(z, y[:5])
    with pytest.raises(ValidationError, match="reduction"):
        L.focal(z, y, reduction="avg")
    with pytest.raises(ValidationError, match="gamma"):
        L.focal(z, y, gamma=-1)
    with pytest.raises(ValidationError, match="epsilon"):
        L.label_smoothing(z, y, 1.5)
    with pytest.raises(ValidationError, match="weights"):
        L.frequency_weighted_ce(z, y, torch.ones(5))
    with pytest.raises(ValidationError, match="per-token"):
        L.mmce(z, y, reduction="none")
    with pytest.raises(ValidationError, match="kernel_width"):
        L.mmce(z, y, kernel_width=1e-4)
    with pytest.raises(ValidationError, match="integer"):
        L.focal(z, y.float())
