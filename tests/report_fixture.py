"""Evaluation dicts for the report tests, computed with plain numpy from synthetic tokens.

Stand-in for ``tokcal.evaluate(...).to_dict()`` until that lands: same shape, real numbers (binned ECE,
cluster bootstrap intervals, per-slice and per-token statistics) from a model whose labels are drawn
at a known temperature, so the uncalibrated evaluation is over-confident and the calibrated one is not.
"""

from __future__ import annotations

import numpy as np

NASTY = ["<script>alert(1)</script>", "&amp;", "\n", " the", "\"q'", "</td>", "é", " "]


def _tokens(n_seq: int, seq_len: int, vocab: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = n_seq * seq_len
    logits = rng.normal(0, 3.0, size=(n, vocab)) + np.linspace(3, 0, vocab)
    true = np.exp(logits / 2.0 - (logits / 2.0).max(1, keepdims=True))  # labels drawn at T = 2
    true /= true.sum(1, keepdims=True)
    label = (true.cumsum(1) > rng.random((n, 1))).argmax(1)
    return {"logits": logits, "label": label, "seq": np.repeat(np.arange(n_seq), seq_len),
            "pos": np.tile(np.arange(seq_len), n_seq), "domain": np.where(np.arange(n) % 3 == 0, "b", "a")}


def _bin_stats(c: np.ndarray, a: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.minimum((c * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    conf = np.bincount(b, c, minlength=bins) / np.maximum(n, 1)
    acc = np.bincount(b, a, minlength=bins) / np.maximum(n, 1)
    return n, conf, acc


def _ece(c: np.ndarray, a: np.ndarray, bins: int) -> float:
    n, conf, acc = _bin_stats(c, a, bins)
    return float(np.sum(n / len(c) * np.abs(acc - conf)))


def _stats(p: np.ndarray, label: np.ndarray, bins: int) -> dict:
    c, pred = p.max(1), p.argmax(1)
    a = (pred == label).astype(float)
    py = p[np.arange(len(p)), label]
    n, conf, acc = _bin_stats(c, a, bins)
    w = n / len(c)
    debiased = np.clip((acc - conf) ** 2 - acc * (1 - acc) / np.maximum(n - 1, 1), 0, None)
    return {
        "n": len(c), "accuracy": a.mean(), "confidence": c.mean(), "ece": _ece(c, a, bins),
        "ece_debiased": float(np.sqrt(np.sum(w * debiased))), "mce": float(np.abs(acc - conf)[n > 0].max()),
        "rmsce": float(np.sqrt(np.sum(w * (acc - conf) ** 2))),
        "brier": float(np.mean((p**2).sum(1) - 2 * py + 1)), "top_label_brier": float(np.mean((c - a) ** 2)),
        "nll": float(np.mean(-np.log(py))), "signed_gap": float(c.mean() - a.mean()),
    }


def _boot(seq: np.ndarray, fn, rng: np.random.Generator, reps: int = 60) -> list[float]:
    ids = np.unique(seq)
    rows = [np.flatnonzero(seq == s) for s in ids]
    vals = [fn(np.concatenate([rows[i] for i in rng.integers(0, len(ids), len(ids))])) for _ in range(reps)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def evaluation_dict(temperature: float = 1.0, seed: int = 0, n_seq: int = 40, seq_len: int = 25,
                    vocab: int = 12, bins: int = 15) -> dict:
    """``Evaluation.to_dict()``-shaped dict of synthetic tokens evaluated at ``temperature``."""
    d = _tokens(n_seq, seq_len, vocab, seed)
    rng = np.random.default_rng(seed + 1)
    z = d["logits"] / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    label, seq = d["label"], d["seq"]
    c, pred = p.max(1), p.argmax(1)
    a = (pred == label).astype(float)
    overall = _stats(p, label, bins)
    overall["n_sequences"] = n_seq
    overall["smooth_ece"] = None  # undefined values travel as null
    gap = c - a
    overall["over_share"] = float(np.sum(np.clip(gap, 0, None)) / max(np.abs(gap).sum(), 1e-12))
    overall["under_share"] = 1 - overall["over_share"]
    order = np.argsort(-c, kind="stable")
    cov = np.arange(1, len(c) + 1) / len(c)
    risk = np.cumsum(1 - a[order]) / np.arange(1, len(c) + 1)
    overall["aurc"] = float(risk.mean())
    overall["classwise_ece"] = None
    overall["ci"] = {k: _boot(seq, lambda r, k=k: _stats(p[r], label[r], bins)[k], rng)
                     for k in ("ece", "ece_debiased", "signed_gap", "nll", "brier", "accuracy")}
    n, conf, acc = _bin_stats(c, a, bins)
    cb = np.minimum((c * bins).astype(int), bins - 1)
    bin_rows = []
    for b in range(bins):
        inside = cb == b
        ci = _boot(seq, lambda r, inside=inside: a[r][inside[r]].mean() if inside[r].any() else np.nan, rng,
                   reps=30) if n[b] else None
        bin_rows.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(n[b]),
                         "confidence": float(conf[b]) if n[b] else None,
                         "accuracy": float(acc[b]) if n[b] else None,
                         "gap": float(conf[b] - acc[b]) if n[b] else None,
                         "acc_ci": None if ci is None or np.isnan(ci).any() else ci})
    slices = {}
    for sname, values in (("domain", d["domain"]), ("position", np.where(d["pos"] < 5, "first 5", "later"))):
        rows = []
        for v in np.unique(values):
            m = values == v
            st = _stats(p[m], label[m], bins)
            gap_ci = _boot(seq[m], lambda r, m=m: c[m][r].mean() - a[m][r].mean(), rng)
            rows.append({"value": str(v), "n": int(m.sum()), "n_sequences": int(np.unique(seq[m]).size),
                         "accuracy": st["accuracy"], "confidence": st["confidence"], "ece": st["ece"],
                         "ece_ci": _boot(seq[m], lambda r, m=m: _ece(c[m][r], a[m][r], bins), rng),
                         "signed_gap": st["signed_gap"], "gap_ci": gap_ci, "nll": st["nll"],
                         "brier": st["brier"], "significant": bool(gap_ci[0] > 0 or gap_ci[1] < 0)})
        slices[sname] = rows
    vocab_strings = (NASTY + [f"w{i}" for i in range(vocab)])[:vocab]
    worst = []
    for t in np.unique(pred):
        m = pred == t
        worst.append({"id": int(t), "token": vocab_strings[t], "n": int(m.sum()),
                      "confidence": float(c[m].mean()), "accuracy": float(a[m].mean()),
                      "gap": float(c[m].mean() - a[m].mean()),
                      "ece_share": float(abs(gap[m].sum()) / max(abs(gap).sum(), 1e-12)),
                      "contexts": ["".join(vocab_strings[j] for j in label[max(i - 4, 0):i]) + " ⟨"
                                   + vocab_strings[t] + "⟩" for i in np.flatnonzero(m)[:2]]})
    worst.sort(key=lambda r: -r["ece_share"])
    counts, edges = np.histogram(c, bins=20, range=(0, 1))
    passage = [{"token": vocab_strings[label[i]], "label_prob": float(p[i, label[i]]),
                "confidence": float(c[i]), "correct": bool(a[i])} for i in range(seq_len)]
    sig = f"bins={bins}|binning=width|norm=l1|conf=top1|labels=teacher-forced|tokcal=0.1.0"
    return {
        "signature": sig,
        "settings": {"bins": bins, "binning": "width", "bootstrap": 60, "seed": seed,
                     "calibrator": None if temperature == 1.0 else {"type": "temperature",
                                                                    "temperature": temperature},
                     "tokcal": "0.1.0", "labels": "teacher-forced"},
        "overall": {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in overall.items()},
        "signatures": {m: f"{m}|{sig}" for m in ("ece", "ece_debiased", "mce", "brier", "nll")},
        "bins": bin_rows, "slices": slices, "worst_tokens": worst[:5],
        "risk_coverage": {"coverage": cov[::10].tolist(), "risk": risk[::10].tolist(), "aurc": overall["aurc"]},
        "confidence_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "passage": passage,
    }


def evaluations() -> dict:
    """Before/after evaluations of one synthetic table: uncalibrated and at the temperature that fits it."""
    return {"uncalibrated": evaluation_dict(), "temperature": evaluation_dict(temperature=2.0)}
