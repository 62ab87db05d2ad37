"""Fitting hygiene: split by resampling unit, compare calibrators on held-out tokens with intervals.

Tokens of one sequence are not independent, so a held-out set must not share sequences with the
fitting set (:func:`split_by_sequence`) and intervals resample whole sequences. When the table's
resampling unit is a block (one long document, a few sequences, one sequence holding most tokens: the
rule of :mod:`tokcal.bootstrap`), the split is by those contiguous blocks instead: no block lands on
both sides, and each block becomes its own ``sequence_id`` in the two tables, so the sides still share
no id (which :func:`compare` checks) and an evaluation of either side resamples the same blocks. The
numbers and their intervals are those of :func:`tokcal.evaluate` (bootstrap over resampling units,
seeded), so ``tokcal fit`` prints what ``tokcal evaluate`` reports for the same table and calibrator.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bootstrap import ResamplingUnits, ResamplingWarning, resampling_units
from ..errors import ParameterError, ValidationError
from ..progress import ProgressCallback
from ..table import TokenTable
from .base import Calibrator


@dataclass(frozen=True)
class HeldOutSplit:
    """The result of :func:`held_out_split`: the two tables, the units split, and a message (None when
    whole sequences were split, else what was done instead)."""

    fit: TokenTable
    held_out: TokenTable
    units: ResamplingUnits
    n_held_out: int
    message: str | None


def held_out_split(table: TokenTable, frac: float = 0.2, seed: int = 0, *,
                   block_length: int | None = None) -> HeldOutSplit:
    """Split ``table``'s resampling units (:func:`tokcal.bootstrap.resampling_units` over all rows): a
    random ``frac`` of them (at least one, never all) goes to the held-out side.

    Sequences: as :func:`split_by_sequence` has always done (the same seeded draw). Blocks: the same draw
    over the blocks, and both tables get the block index as ``sequence_id``. Needs at least 2 units.
    """
    if not 0.0 < float(frac) < 1.0:
        raise ParameterError(f"{{frac}} must be in (0, 1), got {frac!r}", "held_out_split")
    units = resampling_units(table, block_length=block_length)
    if units.n_units < 2:
        raise ValidationError(f"split_by_sequence: the table has {units.describe()} ({len(table)} tokens), 1 "
                              "resampling unit; a held-out split needs at least 2 (give sequence_ids when "
                              "building the table, or use more text)")
    rng = np.random.default_rng(seed)
    n_out = min(max(1, round(frac * units.n_units)), units.n_units - 1)
    if units.kind == "sequence":
        seqs = np.unique(table.sequence_id)
        held = rng.choice(seqs, size=n_out, replace=False)
        mask = np.isin(table.sequence_id, held)
        return HeldOutSplit(table.select(~mask), table.select(mask), units, n_out, None)
    held = rng.choice(units.n_units, size=n_out, replace=False)
    mask = np.isin(units.ids, held)
    sides = []
    for m in (~mask, mask):
        side = table.select(m)
        side.sequence_id = units.ids[m].copy()  # a fresh table from select: its own arrays
        sides.append(side)
    message = (f"split_by_sequence: {units.reason}, so the split is by contiguous blocks: {n_out} of "
               f"{units.describe()} held out, no block on both sides; each block is its own sequence_id "
               "in the two tables")
    return HeldOutSplit(sides[0], sides[1], units, n_out, message)


def split_by_sequence(table: TokenTable, frac: float = 0.2, seed: int = 0) -> tuple[TokenTable, TokenTable]:
    """``(fit, held_out)``: a random ``frac`` of the sequences (at least one) goes to ``held_out``.

    No sequence lands on both sides. When the resampling unit of the table is a block (module
    docstring), blocks are split instead and a :class:`~tokcal.bootstrap.ResamplingWarning` says so.
    Needs at least two units (:func:`held_out_split`).
    """
    split = held_out_split(table, frac, seed)
    if split.message is not None:
        warnings.warn(split.message, ResamplingWarning, stacklevel=2)
    return split.fit, split.held_out


HELD_OUT_METRICS = ("ece", "nll", "brier", "accuracy")


def held_out_metrics(table: TokenTable, calibrator: Calibrator | None = None, *, bins: int = 15,
                     bootstrap: int = 200, seed: int = 0,
                     progress: ProgressCallback | None = None) -> dict[str, Any]:
    """``n`` and the ECE (width bins), NLL, full Brier and accuracy of the labelled rows of ``table`` after
    ``calibrator`` (None: the model), each with its 95 % interval as ``<metric>_lo``/``<metric>_hi``
    (``bootstrap=0``: no intervals): the overall numbers and ``ci`` of :func:`tokcal.evaluate`, which gets
    ``progress`` (:mod:`tokcal.progress`)."""
    from ..evaluation import evaluate

    o = evaluate(table, calibrator, slices=[], bins=bins, bootstrap=bootstrap, seed=seed, worst=0,
                 progress=progress).overall
    return held_out_row(o, bootstrap)


def held_out_row(o: dict[str, Any], bootstrap: int) -> dict[str, Any]:
    """The :func:`held_out_metrics` dict from an evaluation's ``overall`` entry."""
    out: dict[str, Any] = {"n": o["n"], **{k: o[k] for k in HELD_OUT_METRICS}}
    if bootstrap:
        for key in HELD_OUT_METRICS:
            out[f"{key}_lo"], out[f"{key}_hi"] = o["ci"][key]
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
    ``<metric>_lo/_hi`` intervals (:func:`held_out_metrics`; a slice's rows are those of its tokens).
    Sequences shared by train and test raise an error.
    """
    shared = np.intersect1d(train.sequence_id, test.sequence_id)
    if shared.size:
        raise ValidationError(f"compare: {shared.size} sequence(s) are in both train and test (e.g. "
                              f"{int(shared[0])}); use split_by_sequence")
    named = dict(calibrators) if isinstance(calibrators, Mapping) else {
        f"{type(c).__name__}" if sum(type(d) is type(c) for d in calibrators) == 1 else f"{type(c).__name__}#{i}": c
        for i, c in enumerate(calibrators)}
    slice_names = [slices] if isinstance(slices, str) else list(slices or [])
    fitted: dict[str, Calibrator | None] = {"none": None}
    for name, cal in named.items():
        fitted[name] = cal.fit(train) if not refit else copy.deepcopy(cal).fit(train)
    rows = []
    for name, cal in fitted.items():
        rows.append({"method": name, "slice": "all",
                     **held_out_metrics(test, cal, bins=bins, bootstrap=bootstrap, seed=seed)})
        for s in slice_names:
            g = test.group(s)
            for code, cat in enumerate(g.categories):
                mask = (g.codes == code) & test.labeled
                if mask.any():
                    rows.append({"method": name, "slice": f"{s}={cat}",
                                 **held_out_metrics(test.select(mask), cal, bins=bins, bootstrap=bootstrap,
                                                    seed=seed)})
    return rows
