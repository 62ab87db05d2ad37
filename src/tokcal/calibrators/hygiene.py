"""Fitting hygiene: split by sequence, compare calibrators on held-out tokens with intervals.

Tokens of one sequence are not independent, so a held-out set must not share sequences with the
fitting set (:func:`split_by_sequence`) and intervals resample whole sequences (cluster bootstrap,
percentile 95 %, seeded; DESIGN §3).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..probs import TokenProbs, token_probs
from ..table import TokenTable
from .base import Calibrator


def split_by_sequence(table: TokenTable, frac: float = 0.2, seed: int = 0) -> tuple[TokenTable, TokenTable]:
    """``(fit, held_out)``: a random ``frac`` of the sequences (at least one) goes to ``held_out``.

    No sequence lands on both sides. Needs at least two sequences.
    """
    if not 0.0 < float(frac) < 1.0:
        raise ValidationError(f"split_by_sequence: frac must be in (0, 1), got {frac!r}")
    seqs = np.unique(table.sequence_id)
    if len(seqs) < 2:
        raise ValidationError(f"split_by_sequence: the table has {len(seqs)} sequence(s); a held-out split needs "
                              "at least 2 (give sequence_ids when building the table)")
    rng = np.random.default_rng(seed)
    n_out = min(max(1, round(frac * len(seqs))), len(seqs) - 1)
    held = rng.choice(seqs, size=n_out, replace=False)
    mask = np.isin(table.sequence_id, held)
    return table.select(~mask), table.select(mask)


def held_out_metrics(tp: TokenProbs, sequence_id: np.ndarray, *, bins: int = 15, bootstrap: int = 200,
                     seed: int = 0) -> dict[str, Any]:
    """ECE (width bins), NLL, full Brier and accuracy of labelled rows, each with a cluster-bootstrap
    95 % interval over ``sequence_id`` (``bootstrap=0``: no intervals)."""
    from ..metrics import ece

    keep = tp.labeled
    if not keep.any():
        raise ValidationError("held-out metrics: no labelled rows")
    conf, corr = tp.confidence[keep], tp.correct[keep]
    with np.errstate(divide="ignore"):
        nll = -np.log(np.maximum(tp.label_prob[keep], 1e-300))
    brier = tp.sum_sq[keep] - 2.0 * tp.label_prob[keep] + 1.0
    seq = sequence_id[keep]

    def stats(idx: np.ndarray | slice) -> dict[str, float]:
        return {"ece": float(ece(conf[idx], corr[idx], bins=bins)), "nll": float(nll[idx].mean()),
                "brier": float(brier[idx].mean()), "accuracy": float(corr[idx].mean())}

    out: dict[str, Any] = {"n": int(keep.sum()), **stats(slice(None))}
    if bootstrap:
        _, inv = np.unique(seq, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.searchsorted(inv[order], np.arange(inv.max() + 2))
        rng = np.random.default_rng(seed)
        reps = []
        for _ in range(bootstrap):
            pick = rng.integers(0, len(starts) - 1, len(starts) - 1)
            idx = np.concatenate([order[starts[s]:starts[s + 1]] for s in pick])
            reps.append(stats(idx))
        for key in ("ece", "nll", "brier", "accuracy"):
            vals = np.asarray([r[key] for r in reps])
            out[f"{key}_lo"], out[f"{key}_hi"] = (float(v) for v in np.quantile(vals, [0.025, 0.975]))
    return out


def compare(
    calibrators: Mapping[str, Calibrator] | Sequence[Calibrator],
    train: TokenTable,
    test: TokenTable,
    *,
    slices: str | Sequence[str] | None = None,
    bins: int = 15,
    bootstrap: int = 200,
    seed: int = 0,
    refit: bool = True,
) -> list[dict[str, Any]]:
    """Fit each calibrator on ``train`` (a copy; ``refit=False`` uses them as given) and report held-out
    metrics on ``test``: one row per (method, slice), the uncalibrated model first as ``"none"``.

    Each row: ``method, slice ("all" or "group=value"), n, ece, nll, brier, accuracy`` and
    ``<metric>_lo/_hi`` cluster-bootstrap intervals. Sequences shared by train and test raise an error.
    """
    shared = np.intersect1d(train.sequence_id, test.sequence_id)
    if shared.size:
        raise ValidationError(f"compare: {shared.size} sequence(s) are in both train and test (e.g. "
                              f"{int(shared[0])}); use split_by_sequence")
    named = dict(calibrators) if isinstance(calibrators, Mapping) else {
        f"{type(c).__name__}" if sum(type(d) is type(c) for d in calibrators) == 1 else f"{type(c).__name__}#{i}": c
        for i, c in enumerate(calibrators)}
    slice_names = [slices] if isinstance(slices, str) else list(slices or [])
    probs: dict[str, TokenProbs] = {"none": token_probs(test)}
    for name, cal in named.items():
        fitted = cal.fit(train) if not refit else copy.deepcopy(cal).fit(train)
        probs[name] = fitted.token_probs(test)
    rows = []
    for name, tp in probs.items():
        rows.append({"method": name, "slice": "all",
                     **held_out_metrics(tp, test.sequence_id, bins=bins, bootstrap=bootstrap, seed=seed)})
        for s in slice_names:
            g = test.group(s)
            for code, cat in enumerate(g.categories):
                mask = (g.codes == code) & test.labeled
                if mask.any():
                    rows.append({"method": name, "slice": f"{s}={cat}",
                                 **held_out_metrics(tp.select(mask), test.sequence_id[mask], bins=bins,
                                                    bootstrap=bootstrap, seed=seed)})
    return rows
