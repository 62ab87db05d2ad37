"""evaluate(table) -> Evaluation: overall metrics, reliability bins, slices, worst tokens, intervals.

Metrics (binned ECE family, smooth ECE, Brier, NLL, classwise ECE, over/under split,
risk-coverage) over the tokens with a known label, after an optional calibrator.

Confidence intervals: a bootstrap over resampling units -- whole sequences, or fixed contiguous
blocks of tokens inside sequences when the sequences are few or one of them holds most tokens (the
rule, block length and references are in :mod:`tokcal.bootstrap`; ``settings["resampling"]`` and the
``ci`` signature record the unit). Each resample draws the U units with replacement (multinomial
counts w_ru), and every statistic is a function of weighted sums. So the per-(unit, slice value, bin)
sufficient statistics (token count, sum of confidences, sum of correct, and per-unit NLL/Brier sums)
are computed once, and the sums of all R resamples are one matrix product ``W [R, U] @ X [U, M]``
(units in chunks, so memory stays at O(chunk * M + R * M)). With fewer than 2 units there is no
interval (null) and a :class:`~tokcal.bootstrap.ResamplingWarning` says why. The interval is the percentile 95 %
interval (2.5 %, 97.5 %) of the resampled values, seeded -- except for the calibration errors
(ECE, debiased ECE, per-slice ECE): resampled calibration errors are biased upward (a resample
duplicates sequences and adds noise to every bin gap, and |gap| is convex), so their percentile
interval misses a true ECE of 0 even for a perfectly calibrated model. For them the interval is the
basic bootstrap interval [2 t - q97.5, 2 t - q2.5] (Davison & Hinkley 1997, eq. 5.6), which
reflects that bias, clipped at 0 and widened to hold the point estimate. With ``binning="mass"`` the bin edges are
those of the full data, held fixed across resamples.

A slice value (or reliability bin) whose tokens lie in fewer than two resampling units has no interval
(null): within one unit the bootstrap cannot see any variation. A slice value is ``significant`` when
its signed-gap interval excludes 0.

The replicate values of the headline metrics (:data:`OVERALL_CI`) are kept on the result as
``Evaluation.replicates`` (metric -> float [R], NaN where a resample leaves a metric undefined; not
in the JSON): the same units and seed give the same resamples, so two evaluations of one table (before
and after a calibrator) can be compared replicate by replicate.

Schema: ``to_dict()["schema_version"]`` is :data:`SCHEMA_VERSION`. Version 1 (files written before the
key existed) always resampled sequences; :meth:`Evaluation.from_dict` reads it and fills in
``settings["resampling"]``, ``overall["n_units"]`` and the slice rows' ``n_units`` accordingly.

JSON conventions: a number that is undefined (a slice value without tokens in a bin, an interval
when ``bootstrap=0``, when every resample misses the slice value, or when its tokens lie in fewer
than two units) is ``null``; the JSON never holds NaN or infinity. A one-token or one-class slice
gives defined numbers: its ECE is |c - a| per bin, its debiased ECE 0.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write, read_json
from ._version import __version__
from .bootstrap import (
    ResamplingUnits,
    ResamplingWarning,
    UnitStats,
    basic_interval,
    ci_pair,
    few_units_message,
    gap_acc,
    interval,
    resampling_units,
)
from .errors import SchemaError, ValidationError
from .metrics.binned import ReliabilityBins, ece_shares, mass_edges, stats_metrics, width_edges
from .metrics.classwise import classwise_ece
from .metrics.scores import token_nll
from .metrics.selective import aurc, risk_coverage
from .metrics.signature import LABELS, signature
from .metrics.smooth import smooth_ece
from .probs import TokenProbs, token_probs
from .progress import ProgressCallback, report
from .slices import parse_slices
from .table import TokenTable
from .validation import EvaluateParams, check_params, validate_evaluation

OVERALL_CI = ("ece", "ece_debiased", "signed_gap", "nll", "brier", "accuracy")
#: version of the ``to_dict()`` layout; 1 = files without the key (sequence units only)
SCHEMA_VERSION = 2


# -- public result ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """The result of :func:`evaluate`; ``to_dict()`` is the JSON contract (module docstring of
    :mod:`tokcal.evaluation` and docs/architecture.md). Build one from a saved dict with :meth:`from_dict`."""

    data: dict[str, Any] = field(repr=False)
    #: metric -> float [R] bootstrap replicate values of :data:`OVERALL_CI` (None: no bootstrap, or a
    #: loaded file); not part of the JSON
    replicates: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    _KEYS = ("schema_version", "signature", "settings", "overall", "signatures", "bins", "slices", "worst_tokens",
             "risk_coverage", "confidence_histogram", "passage")

    def __repr__(self) -> str:
        o = self.data["overall"]
        return (f"Evaluation(n={o['n']}, accuracy={_fmt(o['accuracy'])}, ece={_fmt(o['ece'])}, "
                f"nll={_fmt(o['nll'])}, slices={list(self.data['slices'])})")

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def overall(self) -> dict[str, Any]:
        return self.data["overall"]

    @property
    def signature(self) -> str:
        return self.data["signature"]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the JSON-safe result (no NaN: undefined numbers are None)."""
        return copy.deepcopy(self.data)

    @property
    def schema_version(self) -> int:
        return int(self.data["schema_version"])

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "evaluation") -> Evaluation:
        """From ``to_dict()`` output of this or an older schema version (module docstring). Every problem --
        not an object, missing or mistyped keys, a newer schema version -- is a
        :class:`~tokcal.errors.SchemaError` naming ``where``."""
        if not isinstance(d, dict):
            raise SchemaError(f"{where}: expected a tokcal evaluation (a JSON object), got {type(d).__name__}")
        d = upgrade_dict(d, where)
        missing = [k for k in cls._KEYS if k not in d]
        if missing:
            raise SchemaError(f"{where}: not a tokcal evaluation, missing key(s) {', '.join(missing)}")
        return cls(validate_evaluation(d, where))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Evaluation:
        """Read what :meth:`to_json` (``tokcal evaluate --json``) wrote. Every problem -- no such file, not
        readable, not JSON, not an evaluation (its schema: :class:`tokcal.validation.EvaluationDoc`) -- is a
        :class:`~tokcal.errors.SchemaError` naming the file."""
        return cls.from_dict(read_json(path, "evaluation file"), where=str(path))

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 1) -> str:
        """The JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.data, indent=indent, allow_nan=False, ensure_ascii=False)
        if path is not None:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return text

    def print_summary(self, console: Any = None, n_worst: int = 8) -> None:
        """Overall metrics with intervals, the most miscalibrated slice values and tokens
        (:func:`tokcal.report.terminal.print_summary`)."""
        from .report.terminal import print_summary

        print_summary(self.data, console, n_worst)


def upgrade_dict(d: dict[str, Any], where: str = "evaluation") -> dict[str, Any]:
    """A deep copy of an evaluation dict in the current schema (:data:`SCHEMA_VERSION`).

    Version 1 (no ``schema_version`` key) resampled whole sequences: the unit entries are filled in
    from ``n_sequences``. A version newer than this tokcal's raises :class:`~tokcal.SchemaError`.
    """
    version = d.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise SchemaError(f"{where}: evaluation schema_version {version!r}; this tokcal ({__version__}) reads "
                          f"1 to {SCHEMA_VERSION} (a newer tokcal wrote it?)")
    out = copy.deepcopy(d)
    if version == 1:
        out = {"schema_version": SCHEMA_VERSION, **out}
        overall = out.get("overall")
        if isinstance(overall, dict):
            n_seq = overall.get("n_sequences")
            out["overall"] = _insert_after(overall, "n_sequences", "n_units", n_seq)
            settings = out.get("settings")
            if isinstance(settings, dict) and "resampling" not in settings:
                settings["resampling"] = {"unit": "sequence", "block_length": None, "n_units": n_seq,
                                          "n_sequences": n_seq, "reason": "schema version 1: sequences"}
        for rows in (out.get("slices") or {}).values() if isinstance(out.get("slices"), dict) else ():
            for i, r in enumerate(rows if isinstance(rows, list) else ()):
                if isinstance(r, dict) and "n_units" not in r:
                    rows[i] = _insert_after(r, "n_sequences", "n_units", r.get("n_sequences"))
    return out


def _insert_after(d: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v
        if k == after:
            out[key] = value
    out.setdefault(key, value)
    return out


# -- evaluate -----------------------------------------------------------------------------------


def evaluate(
    table: TokenTable,
    calibrator: Any = None,
    slices: Any = None,
    bins: int = 15,
    binning: str = "width",
    bootstrap: int = 200,
    seed: int = 0,
    worst: int = 20,
    classwise_top: int = 100,
    unit: str = "auto",
    block_length: int | None = None,
    freq_ref: Any = None,
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Evaluate the calibration of ``table`` (optionally after ``calibrator``).

    ``calibrator``: any object with ``token_probs(table) -> TokenProbs`` (None: the model itself,
    temperature 1). ``slices``: specs or :class:`~tokcal.slices.Slice` objects (None: the default
    slices -- frequency of gold and predicted token, token type, position, every group column).
    ``bins``/``binning``: the reliability bins (``"width"`` or ``"mass"``). ``bootstrap``: number of
    cluster-bootstrap resamples (0: no intervals). ``worst``: how many worst tokens to list.
    ``classwise_top``: the M most frequent gold ids of the classwise ECE. ``unit``: the resampling
    unit, ``"auto"`` (the rule of :mod:`tokcal.bootstrap`), ``"sequence"`` or ``"block"``;
    ``block_length``: B for blocks (default: the source's ``max_length``, else 256). ``freq_ref``: the
    reference frequency of the ``freq`` slices (anything :func:`tokcal.frequency.load_reference` takes: a counts
    JSON path, counts, a TokenTable or its path, a text corpus; None: the documented default).
    ``settings["slices"]`` records each slice's definition (the frequency reference) and signature.
    ``progress``: an optional callback ``(step, done, total)`` (:mod:`tokcal.progress`), called for the steps
    ``"probabilities"``, ``"slices"``, ``"bootstrap"`` (units done) and ``"metrics"``.
    """
    if not isinstance(table, TokenTable):
        raise ValidationError(f"evaluate: expected a TokenTable, got {type(table).__name__}")
    args = check_params("evaluate", EvaluateParams, bins=bins, binning=binning, bootstrap=bootstrap, seed=seed,
                        worst=worst, classwise_top=classwise_top, unit=unit, block_length=block_length)
    bins, binning, bootstrap, seed, worst, classwise_top = (args.bins, args.binning, args.bootstrap, args.seed,
                                                            args.worst, args.classwise_top)
    report(progress, "probabilities", 0, 1)
    probs = _probs(table, calibrator)
    report(progress, "probabilities", 1, 1)
    keep = table.labeled
    if not keep.any():
        raise ValidationError("evaluate: no token has a known label (all labels are -1)")
    sl = parse_slices(slices, table, reference=freq_ref)
    slice_codes = []
    report(progress, "slices", 0, len(sl))
    for i, s in enumerate(sl):
        slice_codes.append(np.asarray(s.codes(table, probs), dtype=np.int64)[keep])
        report(progress, "slices", i + 1, len(sl))

    p = probs.select(keep) if not keep.all() else probs
    c = np.clip(np.asarray(p.confidence, dtype=np.float64), 0.0, 1.0)
    a = np.asarray(p.correct, dtype=np.float64)
    py = np.clip(np.asarray(p.label_prob, dtype=np.float64), 0.0, 1.0)
    nll_tok = token_nll(py)
    brier_tok = np.asarray(p.sum_sq, dtype=np.float64) - 2.0 * py + 1.0
    units = resampling_units(table, keep, unit=unit, block_length=block_length)
    edges = width_edges(bins) if binning == "width" else mass_edges(c, bins)
    tok_bin = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)

    parts = [np.zeros(c.shape[0], np.int64), *slice_codes]
    sizes = [1, *(len(s.labels) for s in sl)]
    stats = UnitStats(units, tok_bin, bins, parts, sizes, c, a, nll_tok, brier_tok)
    few = few_units_message(units) if bootstrap else None
    if few is not None:  # none (< 2 units) or rough (< FEW_UNITS) intervals
        warnings.warn(few, ResamplingWarning, stacklevel=2)
    if bootstrap and units.n_units >= 2:
        report(progress, "bootstrap", 0, units.n_units)
    boot = stats.bootstrap(bootstrap, seed, progress)
    report(progress, "metrics", 0, 1)

    n = c.shape[0]
    point = _point_metrics(c, a, p, nll_tok, brier_tok, bins, classwise_top, table.vocab_size)
    cov, risk = risk_coverage(c, a)
    return _result(stats, boot, sl, units, edges, n, point, bins=bins, binning=binning, bootstrap=bootstrap,
                   seed=seed, classwise_top=classwise_top, calibrator=calibrator,
                   worst_tokens=lambda: _worst_tokens(table, keep, p, c, a, bins, worst),
                   curve=(cov, risk), histogram=_histogram(c), passage=_passage(table, probs),
                   fingerprint=table_fingerprint(table), progress=progress)


def _result(stats: Any, boot: np.ndarray | None, sl: list[Any], units: ResamplingUnits, edges: np.ndarray, n: int,
            point: dict[str, float], *, bins: int, binning: str, bootstrap: int, seed: int, classwise_top: int,
            calibrator: Any, worst_tokens: Any, curve: tuple[np.ndarray, np.ndarray], histogram: dict[str, Any],
            passage: list[dict[str, Any]], fingerprint: str | None,
            extra_settings: dict[str, Any] | None = None, progress: ProgressCallback | None = None) -> Evaluation:
    """The :class:`Evaluation` from the unit statistics ``stats`` (a :class:`~tokcal.bootstrap.UnitStats`
    or the streamed sums of :mod:`tokcal.distributed.stats`), their bootstrap sums and the rest; the end of
    the ``metrics`` step goes to ``progress``."""
    settings = {"bins": bins, "binning": binning, "bootstrap": bootstrap, "seed": seed,
                "calibrator": _calibrator_dict(calibrator), "tokcal": __version__, "labels": LABELS,
                "resampling": units.to_dict(),
                "slices": {s.name: {**s.settings(), "signature": s.signature()} for s in sl},
                **(extra_settings or {})}
    sig = _signatures(bins, binning, bootstrap, seed, classwise_top, units)
    replicates = overall_replicates(stats, boot)
    overall = _overall(stats, replicates, n, point)
    data = {
        "schema_version": SCHEMA_VERSION,
        "signature": sig["ece"],
        "settings": settings,
        "overall": overall,
        "signatures": sig,
        "bins": _bins_list(stats, boot, edges),
        "slices": {s.name: _slice_rows(stats, boot, k + 1, s.labels) for k, s in enumerate(sl)},
        "worst_tokens": worst_tokens(),
        "risk_coverage": _curve(*curve, overall["aurc"]),
        "confidence_histogram": histogram,
        "passage": passage,
        "slice_bins": {s.name: _slice_bins(stats, k + 1, s.labels) for k, s in enumerate(sl)},
        "table_fingerprint": fingerprint,
        "replicates": _replicates(stats, boot, replicates, sl),
    }
    assert data["overall"]["n"] == n
    report(progress, "metrics", 1, 1)
    return Evaluation(_json_safe(data), replicates)


def _probs(table: TokenTable, calibrator: Any) -> TokenProbs:
    if calibrator is None:
        return token_probs(table)
    fn = getattr(calibrator, "token_probs", None)
    if not callable(fn):
        raise ValidationError(f"evaluate: calibrator {type(calibrator).__name__} has no token_probs(table) method")
    out = fn(table)
    if not isinstance(out, TokenProbs) or len(out) != len(table):
        raise ValidationError(f"evaluate: calibrator {type(calibrator).__name__}.token_probs returned "
                              f"{type(out).__name__} for {len(table)} tokens")
    return out


def _calibrator_dict(calibrator: Any) -> dict[str, Any] | None:
    if calibrator is None:
        return None
    to_dict = getattr(calibrator, "to_dict", None)
    d = to_dict() if callable(to_dict) else {"type": type(calibrator).__name__}
    return json.loads(json.dumps(_json_safe(d), allow_nan=False, default=str))


def overall_replicates(st: UnitStats, sums: np.ndarray | None) -> dict[str, np.ndarray] | None:
    """metric -> float [R] value of each :data:`OVERALL_CI` metric on each resample (``sums``: the
    [R, n_cols] output of :meth:`UnitStats.bootstrap`; None -> None). NaN where a resample leaves the
    metric undefined."""
    if sums is None:
        return None
    bc, bconf, bacc = st.part(sums, 0)
    bn, bmc, bma = gap_acc(bc[:, 0], bconf[:, 0], bacc[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "ece": stats_metrics(bc[:, 0], bconf[:, 0], bacc[:, 0], "l1"),
            "ece_debiased": stats_metrics(bc[:, 0], bconf[:, 0], bacc[:, 0], "l1", True),
            "signed_gap": bmc - bma,
            "nll": sums[:, -2] / bn,
            "brier": sums[:, -1] / bn,
            "accuracy": bma,
        }


def _point_metrics(c: np.ndarray, a: np.ndarray, p: TokenProbs, nll: np.ndarray, brier: np.ndarray, bins: int,
                   classwise_top: int, vocab_size: int) -> dict[str, float]:
    """The overall metrics that are not functions of the binned sums, from the labelled tokens."""
    return {
        "accuracy": float(a.mean()), "confidence": float(c.mean()), "smooth_ece": float(smooth_ece(c, a)),
        "brier": float(brier.mean()), "top_label_brier": float(np.mean((c - a) ** 2)), "nll": float(nll.mean()),
        "signed_gap": float(c.mean() - a.mean()), "aurc": float(aurc(c, a)),
        "classwise_ece": classwise_ece(p.top_ids, p.top_probs, p.label, top_m=classwise_top, bins=bins,
                                       label_prob=p.label_prob, vocab_size=vocab_size),
    }


def _overall(st: UnitStats, values: dict[str, np.ndarray] | None, n: int, point: dict[str, float]) -> dict[str, Any]:
    """The ``overall`` entry: binned metrics from ``st`` (any object with ``part``/``total``/``units``,
    also the streamed sums of :mod:`tokcal.distributed.stats`), the others from ``point``."""
    count, conf, acc = st.part(st.total, 0)
    ece = stats_metrics(count, conf, acc, "l1")[0]
    over_share, under_share = ece_shares(conf[0], acc[0], n)
    out: dict[str, Any] = {
        "n": int(n),
        "n_sequences": int(st.units.n_sequences),
        "n_units": int(st.n_units),
        "accuracy": float(point["accuracy"]),
        "confidence": float(point["confidence"]),
        "ece": float(ece),
        "ece_debiased": float(stats_metrics(count, conf, acc, "l1", True)[0]),
        "smooth_ece": float(point["smooth_ece"]),
        "mce": float(stats_metrics(count, conf, acc, "max")[0]),
        "rmsce": float(stats_metrics(count, conf, acc, "l2")[0]),
        "brier": float(point["brier"]),
        "top_label_brier": float(point["top_label_brier"]),
        "nll": float(point["nll"]),
        "signed_gap": float(point["signed_gap"]),
        "over_share": over_share,
        "under_share": under_share,
        "aurc": float(point["aurc"]),
        "classwise_ece": _num(point["classwise_ece"]),
    }
    ci: dict[str, list[float | None]] = {}
    if values is None:
        ci = {k: [None, None] for k in OVERALL_CI}
    else:
        ci = {k: ci_pair(interval(values[k])) for k in OVERALL_CI}
        for k in ("ece", "ece_debiased"):
            ci[k] = basic_interval(ci[k], out[k])
    out["ci"] = ci
    return out


def _bins_list(st: UnitStats, boot: np.ndarray | None, edges: np.ndarray) -> list[dict[str, Any]]:
    """:meth:`ReliabilityBins.to_list` with the bootstrap percentile interval of each bin's accuracy
    (Wilson's interval when ``bootstrap=0``); none for a bin whose tokens lie in fewer than 2 units."""
    rb = ReliabilityBins(edges, *(x[0] for x in st.part(st.total, 0)))
    if boot is None and st.n_units < 2:  # one unit: no interval (Wilson's would assume independent tokens)
        nan = np.full(rb.count.shape, np.nan)
        return rb.to_list(acc_ci=(nan, nan))
    if boot is None:
        return rb.to_list()
    bc, _, bacc = st.part(boot, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = interval(bacc[:, 0] / bc[:, 0])
    few = st.bin_units < 2
    return rb.to_list(acc_ci=(np.where(few, np.nan, q[0]), np.where(few, np.nan, q[1])))


def _slice_rows(st: UnitStats, boot: np.ndarray | None, k: int, labels: list[str]) -> list[dict[str, Any]]:
    count, conf, acc = st.part(st.total, k)
    n, mc, ma = gap_acc(count, conf, acc)
    ece = stats_metrics(count, conf, acc, "l1")
    value_nll, value_brier = st.value_sums(k)
    if boot is not None:
        bc, bconf, bacc = st.part(boot, k)
        bn, bmc, bma = gap_acc(bc, bconf, bacc)
        q_ece = interval(stats_metrics(bc, bconf, bacc, "l1"))
        q_gap = interval(bmc - bma)
    else:
        q_ece = q_gap = [None, None]
    rows = []
    for v, label in enumerate(labels):
        if n[v] == 0:
            continue
        # within one unit the bootstrap cannot vary: no interval rather than a zero-width one
        one = st.value_units[k][v] < 2
        gap_ci = [None, None] if one else ci_pair(q_gap, v)
        rows.append({
            "value": label, "n": int(round(n[v])), "n_sequences": int(st.value_seqs[k][v]),
            "n_units": int(st.value_units[k][v]),
            "accuracy": float(ma[v]), "confidence": float(mc[v]), "ece": float(ece[v]),
            "ece_ci": [None, None] if one else basic_interval(ci_pair(q_ece, v), ece[v]),
            "signed_gap": float(mc[v] - ma[v]), "gap_ci": gap_ci,
            "nll": float(value_nll[v] / n[v]), "brier": float(value_brier[v] / n[v]),
            "significant": bool(gap_ci[0] is not None and (gap_ci[0] > 0 or gap_ci[1] < 0)),
        })
    return rows


# -- per-slice reliability, pairing data -----------------------------------------------------------


def _slice_bins(st: UnitStats, k: int, labels: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Per value of slice block ``k``: the reliability bins' token count, mean confidence and accuracy
    (None in empty bins), for small-multiple diagrams."""
    count, conf, acc = st.part(st.total, k)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        mc, ma = conf / count, acc / count
    for v, label in enumerate(labels):
        if count[v].sum() == 0:
            continue
        out[label] = {"n": count[v].astype(np.int64).tolist(), "confidence": mc[v].tolist(), "accuracy": ma[v].tolist()}
    return out


FINGERPRINT_PREFIX = "sha256-rows:"  #: the fingerprint's definition (older tokcal wrote "sha256:", per column)


def fingerprint_rows(sequence_id: np.ndarray, position: np.ndarray, label: np.ndarray) -> bytes:
    """What :func:`table_fingerprint` hashes of some rows: their (sequence_id, position, label) as int64
    triples, row after row, of the rows with a known label. A table's bytes are the concatenation of
    its batches' bytes, so a stream of batches (or of shards, in order) hashes to the same fingerprint."""
    keep = np.asarray(label) >= 0
    rows = np.empty((int(keep.sum()), 3), np.int64)
    for j, col in enumerate((sequence_id, position, label)):
        rows[:, j] = np.asarray(col)[keep]
    return rows.tobytes()


def table_fingerprint(table: TokenTable) -> str:
    """sha256 of the evaluated tokens' (every labelled row's) (sequence_id, position, label)
    (:func:`fingerprint_rows`): equal for two evaluations of the same tokens whatever the calibrator,
    different when a token was added, dropped or relabelled."""
    import hashlib

    rows = fingerprint_rows(table.sequence_id, table.position, table.label)
    return FINGERPRINT_PREFIX + hashlib.sha256(rows).hexdigest()


def _replicates(st: UnitStats, boot: np.ndarray | None, overall: dict[str, np.ndarray] | None,
                sl: list[Any]) -> dict[str, Any] | None:
    """The R bootstrap replicate values, for the JSON: ``overall`` (:func:`overall_replicates`) and each slice
    value's ECE and conf - acc, rounded to 6 significant digits (None where undefined); None without a
    bootstrap. Two evaluations with the same tokens, units and seed share the resamples, so these pair
    (:mod:`tokcal.paired`)."""
    if boot is None or overall is None:
        return None

    def r6(x: np.ndarray) -> list[float | None]:
        return [float(f"{v:.6g}") if np.isfinite(v) else None for v in np.asarray(x, dtype=np.float64)]

    slices: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for k, s in enumerate(sl):
        sc, sconf, sacc = st.part(boot, k + 1)
        _, smc, sma = gap_acc(sc, sconf, sacc)
        with np.errstate(invalid="ignore", divide="ignore"):
            ece = stats_metrics(sc, sconf, sacc, "l1")
        present = st.part(st.total, k + 1)[0].sum(-1) > 0
        slices[s.name] = {label: {"ece": r6(ece[:, v]), "signed_gap": r6(smc[:, v] - sma[:, v])}
                          for v, label in enumerate(s.labels) if present[v]}
    return {"overall": {k: r6(v) for k, v in overall.items()}, "slices": slices}


# -- worst tokens, curves, passage ---------------------------------------------------------------


def _worst_tokens(table: TokenTable, keep: np.ndarray, p: TokenProbs, c: np.ndarray, a: np.ndarray,
                  bins: int, worst: int) -> list[dict[str, Any]]:
    """Predicted ids with the largest n_t |conf_t - acc_t| (their share of sum_t n_t |gap_t| / n), each with
    up to three contexts: ``before`` (up to 8 preceding gold tokens), the predicted ``token`` and the ``gold``
    one, as display text."""
    if worst <= 0:
        return []
    pred = np.asarray(p.predicted, dtype=np.int64)
    v = table.vocab_size
    rows_all = np.flatnonzero(keep)
    order = np.lexsort((table.position, table.sequence_id))
    sorted_seq = table.sequence_id[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)

    def contexts(t: int) -> list[dict[str, str]]:
        out = []
        for r in rows_all[pred == t][:3]:
            i = rank[r]
            start = max(np.searchsorted(sorted_seq, table.sequence_id[r], side="left"), i - 8)
            prev = table.label[order[start:i]]
            text = _decode(table, prev[prev >= 0])
            gold = table.token_strings([table.label[r]])[0]
            tok = table.token_strings([t])[0]
            out.append({"before": text, "token": tok, "gold": gold})
        return out

    return _worst_list(table, np.bincount(pred, minlength=v).astype(np.float64), np.bincount(pred, c, minlength=v),
                       np.bincount(pred, a, minlength=v), worst, contexts)


def _worst_list(table: TokenTable, cnt: np.ndarray, sc: np.ndarray, sa: np.ndarray, worst: int,
                contexts: Any) -> list[dict[str, Any]]:
    """The ``worst_tokens`` rows from per-predicted-id count, confidence and correctness sums;
    ``contexts(t)`` gives the example contexts of id t (``table``: token strings)."""
    contrib = np.abs(sc - sa)
    total = contrib.sum()
    ids = np.flatnonzero(cnt > 0)
    ids = ids[np.argsort(-contrib[ids], kind="stable")][:worst]
    return [{"id": int(t), "token": table.token_strings([t])[0], "n": int(cnt[t]),
             "confidence": float(sc[t] / cnt[t]), "accuracy": float(sa[t] / cnt[t]),
             "gap": float((sc[t] - sa[t]) / cnt[t]),
             "ece_share": float(contrib[t] / total) if total > 0 else 0.0, "contexts": contexts(int(t))}
            for t in ids]


def _decode(table: TokenTable, ids: np.ndarray) -> str:
    """Text of a run of ids (:meth:`tokcal.vocab.Vocabulary.decode`); ``<id>`` pieces without a vocabulary."""
    if table.vocabulary is None:
        return "".join(table.token_strings(ids))
    return table.vocabulary.decode(ids)


def _curve(cov: np.ndarray, risk: np.ndarray, area: float, points: int = 101) -> dict[str, Any]:
    """The ``risk_coverage`` entry: at most ``points`` of the curve, evenly spread over its points."""
    cov, risk = np.asarray(cov, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    if cov.size > points:
        idx = np.unique(np.round(np.linspace(0, cov.size - 1, points)).astype(np.int64))
        cov, risk = cov[idx], risk[idx]
    return {"coverage": cov.tolist(), "risk": risk.tolist(), "aurc": area}


def _histogram(c: np.ndarray, bins: int = 50) -> dict[str, Any]:
    counts, edges = np.histogram(c, bins=bins, range=(0.0, 1.0))
    return {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}


def _passage(table: TokenTable, probs: TokenProbs, max_tokens: int = 200) -> list[dict[str, Any]]:
    """The first labelled sequence (by id), in position order, up to ``max_tokens`` tokens."""
    lab = table.labeled
    sid = table.sequence_id[np.flatnonzero(lab)[0]]
    rows = np.flatnonzero(table.sequence_id == sid)
    rows = rows[np.argsort(table.position[rows], kind="stable")][:max_tokens]
    strings = table.token_strings(np.where(table.label[rows] >= 0, table.label[rows], table.predicted[rows]))
    p = probs.select(rows)
    return [{"token": s, "label_prob": _num(lp), "confidence": float(c), "correct": bool(ok)}
            for s, lp, c, ok in zip(strings, p.label_prob, p.confidence, p.correct, strict=True)]


# -- signatures and JSON safety -------------------------------------------------------------------


def _signatures(bins: int, binning: str, bootstrap: int, seed: int, classwise_top: int,
                units: ResamplingUnits) -> dict[str, str]:
    """One signature per overall metric and one for the intervals, all by :func:`tokcal.metrics.signature`."""
    binned = {"bins": bins, "binning": binning}
    sig = {k: signature(k, **binned) for k in ("ece", "ece_debiased", "mce", "rmsce")}
    sig.update({k: signature(k) for k in ("smooth_ece", "brier", "top_label_brier", "nll", "aurc")})
    sig["classwise_ece"] = signature("classwise_ece", bins=bins, top_m=classwise_top)
    sig["ci"] = signature("ci", resamples=bootstrap, seed=seed, **units.signature_settings())
    return sig


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _json_safe(x: Any) -> Any:
    """Plain Python types; NaN/inf -> None."""
    t = type(x)
    if t is float:  # the common leaves first, by exact type (an evaluation has ~10^4 of them)
        return x if math.isfinite(x) else None
    if t is int or t is str or t is bool or x is None:
        return x
    if t is list:
        return [_json_safe(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    return x


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"
