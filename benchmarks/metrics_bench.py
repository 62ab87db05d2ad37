"""Metrics benchmark: tokcal vs torchmetrics, netcal, scikit-learn and relplot, side by side.

    .venv/bin/python benchmarks/metrics_bench.py            # full sizes (10 M tokens, N=100k x V=1000)
    .venv/bin/python benchmarks/metrics_bench.py --quick    # tiny smoke run (CI)

Times are wall seconds, best of ``--repeat`` for tokcal (after one warm-up call that compiles the
numba kernels), one run for the slow peers. Peak RSS is the process high-water mark after each part.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def _timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(rows, part, impl, n, seconds, value, ref_seconds=None, note=""):
    ratio = "" if ref_seconds is None else f"{seconds / ref_seconds:.1f}x"
    rows.append((part, impl, n, f"{seconds:.4f}", f"{value:.10f}", ratio, f"{_rss_mb():.0f}", note))


def bench_binned(rows, n, repeat, peers_n):
    from tokcal.metrics import ece

    rng = np.random.default_rng(0)
    c = rng.beta(5, 2, n).astype(np.float32)
    a = rng.random(n) < c**1.2
    ece(c[:1000], a[:1000])
    t_ours, v_ours = _timed(lambda: ece(c, a, bins=15), repeat)
    _row(rows, "binned ECE", "tokcal (numba, float64 sums)", n, t_ours, v_ours)
    try:
        import torch
        from torchmetrics.functional.classification import binary_calibration_error

        tc, ta = torch.from_numpy(c), torch.from_numpy(a.astype(np.int64))
        t, v = _timed(lambda: binary_calibration_error(tc, ta, n_bins=15).item())
        _row(rows, "binned ECE", "torchmetrics (float32)", n, t, v, t_ours, f"|diff| {abs(v - v_ours):.2e}")
    except ImportError:
        pass
    cs, as_ = c[:peers_n].astype(np.float64), a[:peers_n]
    v_small = ece(cs, as_)
    note = "" if peers_n == n else f"on {peers_n:,} tokens"
    from netcal.metrics import ECE as NetcalECE

    t, v = _timed(lambda: NetcalECE(15).measure(cs, as_.astype(int)))
    _row(rows, "binned ECE", "netcal ECE(15)", peers_n, t, v, t_ours * peers_n / n,
         f"|diff| {abs(v - v_small):.1e} {note}".strip())

    def sk():
        from sklearn.calibration import calibration_curve

        pt, pp = calibration_curve(as_, cs, n_bins=15)
        cnt = np.bincount(np.searchsorted(np.linspace(0, 1, 16)[1:-1], cs), minlength=15)
        return float(cnt[cnt > 0] / cs.size @ np.abs(pt - pp))

    t, v = _timed(sk)
    _row(rows, "binned ECE", "scikit-learn calibration_curve + counts", peers_n, t, v, t_ours * peers_n / n,
         f"|diff| {abs(v - v_small):.1e} {note}".strip())
    import relplot.metrics

    t, v = _timed(lambda: relplot.metrics.binnedECE(cs, as_.astype(float), nbins=15))
    _row(rows, "binned ECE", "relplot binnedECE", peers_n, t, v, t_ours * peers_n / n,
         f"|diff| {abs(v - v_small):.1e} {note}".strip())


def bench_smooth(rows, n, repeat, relplot_n):
    import relplot

    from tokcal.metrics import smooth_ece

    rng = np.random.default_rng(1)
    c = rng.beta(5, 2, n)
    a = rng.random(n) < c**1.2
    smooth_ece(c[:1000], a[:1000])
    t_ours, v_ours = _timed(lambda: smooth_ece(c, a), repeat)
    _row(rows, "smooth ECE", "tokcal", n, t_ours, v_ours)
    cs, as_ = c[:relplot_n], a[:relplot_n]
    t_small, v_small = _timed(lambda: smooth_ece(cs, as_), repeat)
    if relplot_n != n:
        _row(rows, "smooth ECE", "tokcal", relplot_n, t_small, v_small)
    t, v = _timed(lambda: relplot.smECE(cs, as_.astype(float)))
    _row(rows, "smooth ECE", "relplot smECE", relplot_n, t, v, t_small, f"|diff| {abs(v - v_small):.1e}")


def bench_classwise(rows, n, v, repeat, top_m=50, k=32):
    from tokcal.metrics import classwise_ece

    rng = np.random.default_rng(2)
    ids = np.empty((n, k), np.int64)
    probs = np.empty((n, k))
    label = np.empty(n, np.int64)
    label_prob = np.empty(n)
    full_cols = {}
    chunk = 10_000
    prior = -0.8 * np.log1p(np.arange(v))
    cols = None
    for lo in range(0, n, chunk):
        z = rng.normal(size=(min(chunk, n - lo), v)) * 2.0 + prior
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = (p.cumsum(1) > rng.random((p.shape[0], 1))).argmax(1)
        top = np.argpartition(-p, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(p, top, 1), axis=1)
        ids[lo:lo + p.shape[0]] = np.take_along_axis(top, order, 1)
        probs[lo:lo + p.shape[0]] = np.take_along_axis(p, ids[lo:lo + p.shape[0]], 1)
        label[lo:lo + p.shape[0]] = y
        label_prob[lo:lo + p.shape[0]] = p[np.arange(p.shape[0]), y]
        if cols is None:  # the classes: the top_m most frequent under the prior (fixed for the loop)
            cols = np.arange(top_m)
        full_cols.setdefault("p", []).append(p[:, cols])
    pc = np.concatenate(full_cols["p"])
    kwargs = dict(vocab_size=v, classes=cols, bins=15)
    classwise_ece(ids[:100], probs[:100], label[:100], label_prob=label_prob[:100], **kwargs)
    kwargs["label_prob"] = label_prob
    t_ours, v_ours = _timed(lambda: classwise_ece(ids, probs, label, **kwargs), repeat)
    _row(rows, "classwise ECE", f"tokcal (top-{k} sketch, M={top_m})", f"{n:,} x V={v}", t_ours, v_ours)

    def sk_loop():
        from sklearn.calibration import calibration_curve

        vals = []
        edges = np.linspace(0, 1, 16)
        for j in range(top_m):
            pj, yj = pc[:, j], label == cols[j]
            pt, pp = calibration_curve(yj, pj, n_bins=15)
            cnt = np.bincount(np.searchsorted(edges[1:-1], pj), minlength=15)
            vals.append(cnt[cnt > 0] / n @ np.abs(pt - pp))
        return float(np.mean(vals))

    t, val = _timed(sk_loop)
    _row(rows, "classwise ECE", "scikit-learn loop (full probabilities)", f"{n:,} x V={v}", t, val, t_ours,
         f"|diff| {abs(val - v_ours):.1e} (sketch tail approx.)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--relplot-n", type=int, default=None, help="tokens for relplot smECE (default: all)")
    args = ap.parse_args()
    if args.quick:
        n, peers_n, relplot_n, cw_n, cw_v, repeat = 20_000, 20_000, 20_000, 2_000, 200, 1
    else:
        n, peers_n, repeat = 10_000_000, 1_000_000, args.repeat
        relplot_n = args.relplot_n or n
        cw_n, cw_v = 100_000, 1000
    rows: list[tuple] = []
    bench_binned(rows, n, repeat, peers_n)
    bench_smooth(rows, n, repeat, relplot_n)
    bench_classwise(rows, cw_n, cw_v, repeat)
    head = ("part", "implementation", "tokens", "seconds", "value", "x tokcal", "peak RSS MB", "note")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
