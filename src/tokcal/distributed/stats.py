"""Mergeable statistics: :func:`tokcal.evaluate` and temperature fits on data that does not fit in memory,
or whose shards live on several processes or machines (Ray). Only these sums travel, never logits.

Two passes over the tokens, each a map (per batch or shard) and a merge (addition):

1. :mod:`tokcal.distributed.summary`: :class:`~tokcal.distributed.summary.DatasetSummary` reads only
   ``sequence_id``, ``position``, ``label`` and the group columns: labelled tokens per sequence (to choose
   the resampling unit, :func:`tokcal.bootstrap.choose_unit`), the units themselves (keys
   ``(sequence_id, floor(position / B))``, :func:`tokcal.bootstrap.unit_keys`, numbered densely in key
   order as :func:`tokcal.bootstrap.units_from_arrays` does), gold-label counts (frequency slices, the
   classwise classes), group categories and every sequence id (splits).
2. :class:`EvaluationSums` accumulates, per batch, the same sufficient statistics as the in-memory
   :class:`tokcal.bootstrap.UnitStats`: per-(part, value, bin) counts, confidence and correctness sums,
   NLL and Brier sums, and the bootstrap sums ``W[:, units of the batch] @ X_batch`` with the
   replicate weights ``W`` of :func:`tokcal.bootstrap.replicate_weights` -- so the intervals are those
   of the in-memory path for the same units and seed (to the float32 rounding of the products).

Exactness. Every sum-based number (binned ECE family, Brier, NLL, accuracy, confidence, slices,
classwise ECE, worst-token numbers, confidence histogram) equals the in-memory one up to the order of
float64 additions (~1e-15 relative). Smooth ECE is exact too: :func:`tokcal.metrics.smooth_ece` spreads
tokens linearly onto grids whose sizes depend only on the bandwidth, and its bisection visits only
multiples of 2^-10, so the grids of all those sizes (:data:`SMOOTH_GRIDS`, 11 of them) are summed.
AURC and the risk-coverage curve need a global sort: they are computed from :data:`AURC_BINS`
equal-width confidence bins, tokens of one bin taken as tied (the tie rule of
:func:`tokcal.metrics.aurc`), and the evaluation records ``aurc_error_bound``, a bound on
``|AURC_binned - AURC_exact|`` computed from the same bins (:func:`aurc_from_bins`). Equal-mass bin
edges (``binning="mass"``) are quantiles of all confidences: :mod:`tokcal.distributed.quantiles` finds
them exactly (bit for bit the in-memory edges) by passes of counts over the confidences before pass 2 --
usually one pass (up to 2^20 distinct confidences), a few more for larger data. Worst-token contexts are
taken from the rows stored before each example (rows of a sequence stored together in position order,
as collected).

Memory: O(batch + units + R x columns + vocabulary), independent of the number of tokens (equal-mass
edges: ~60 MB more, during their passes).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._threads import numba_threads
from ..bootstrap import ResamplingUnits, ResamplingWarning, few_units_message, replicate_weights
from ..errors import ValidationError
from ..metrics.binned import width_edges
from ..metrics.smooth import _grid_points, _Smoother
from ..probs import TokenProbs
from ..progress import ProgressCallback
from ..slices import FrequencySlice, GroupSlice, Slice, TokenTypeSlice, codes_by_id, parse_slices
from ..table import TokenTable, parquet_files
from .reading import Prefetch, pick_rows, source_rows, with_progress
from .summary import DatasetSummary, _summarize_rows, _unique, summarize
from .workers import Piece, ShardWorkers, default_workers, rows_before, shards

AURC_BINS = 1 << 18  #: equal-width confidence bins of the streamed AURC and risk-coverage curve
SMOOTH_GRIDS = tuple(sorted({_grid_points(j / 1024) for j in range(1, 1025)}))  #: grid sizes smooth ECE can visit
_SMOOTH_SIZES = np.asarray(SMOOTH_GRIDS, np.int64)
_SMOOTH_STARTS = np.concatenate([[0], np.cumsum(3 * _SMOOTH_SIZES)]).astype(np.int64)
_TINY = np.finfo(np.float64).tiny
_PASSAGE = 200
_CONTEXT = 8


# -- pass 2: the sums of evaluate ----------------------------------------------------------------------


class _Layout:
    """The cell layout of :class:`tokcal.bootstrap.UnitStats` (parts x values x bins), without tokens."""

    def __init__(self, bins: int, sizes: list[int]) -> None:
        self.bins = bins
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes) * bins)]).astype(np.int64)
        self.n_cells = int(self.offsets[-1])
        self.n_cols = 3 * self.n_cells + 2

    def part(self, sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.offsets[k], self.offsets[k + 1]
        shape = (*sums.shape[:-1], self.sizes[k], self.bins)
        return tuple(sums[..., j * self.n_cells + lo:j * self.n_cells + hi].reshape(shape) for j in range(3))


class EvaluationSums:
    """Mergeable sums of :func:`evaluate_stream` (module docstring, pass 2). Build one per shard with the
    same ``summary`` and settings, :meth:`update` it with TokenTables, :meth:`merge` the shards."""

    def __init__(self, summary: DatasetSummary, meta: TokenTable, *, calibrator: Any = None, slices: Any = None,
                 bins: int = 15, bootstrap: int = 200, seed: int = 0, worst: int = 20, classwise_top: int = 100,
                 unit: str = "auto", freq_ref: Any = None, weights: np.ndarray | None = None,
                 edges: np.ndarray | None = None) -> None:
        self.summary, self.calibrator = summary, calibrator
        self.bins, self.bootstrap, self.seed = bins, bootstrap, seed
        self.worst, self.classwise_top = worst, classwise_top
        self.units = summary.units(unit)
        self.vocab_size = summary.vocab_size
        self.meta = meta
        ref = _reference(freq_ref, meta, summary)
        self.slices = _global_slices(parse_slices(slices, meta, reference=ref), summary, ref)
        self.layout = _Layout(bins, [1, *(len(s.labels) for s in self.slices)])
        self.binning = "width" if edges is None else "mass"  # edges: equal-mass ones (:func:`stream_mass_edges`)
        self.edges = width_edges(bins) if edges is None else np.asarray(edges, dtype=np.float64)
        if self.edges.shape != (bins + 1,):
            raise ValidationError(f"evaluate: {self.edges.size} bin edges for {bins} bins")
        self.edge_passes = 0  # passes the equal-mass edges took (set by the caller)
        n_units = self.units.info.n_units
        if weights is None and bootstrap and n_units >= 2:
            weights = replicate_weights(n_units, bootstrap, seed)
        self.weights = weights
        lay = self.layout
        self.total = np.zeros(lay.n_cols)
        self.cell_nll = np.zeros(lay.n_cells)
        self.cell_brier = np.zeros(lay.n_cells)
        self.boot = np.zeros((bootstrap, lay.n_cols)) if weights is not None else None
        self._pairs = _UniqueInts()  # unit * n_values + global value
        self._bin_pairs = _UniqueInts()  # unit * bins + bin (all tokens)
        self.n_values = int(sum(lay.sizes))
        self.scalars = np.zeros(6)  # n, sum c, sum a, sum brier, sum nll, sum (c - a)^2
        self.smooth = {g: np.zeros((3, g)) for g in SMOOTH_GRIDS}
        self.aurc = np.zeros((2, AURC_BINS))  # count, errors
        self.hist = np.zeros(50)
        counts = summary.label_counts
        m = min(int(classwise_top), int((counts > 0).sum()))
        self.classes = np.lexsort((np.arange(counts.shape[0]), -counts))[:m].astype(np.int64)
        self.class_base = np.zeros((2, bins))
        self.class_corr = np.zeros((3, self.classes.shape[0], bins))
        self.tok = np.zeros((3, self.vocab_size))  # predicted id: count, conf sum, acc sum
        self.examples: dict[int, list[tuple[int, np.ndarray, int]]] = {}
        self.fingerprint: str | None = None  # of the whole dataset, set by the caller (:func:`fingerprint`)
        self.passage: TokenTable | None = None
        self.passage_probs: TokenProbs | None = None
        self._carry: tuple[np.ndarray, np.ndarray] | None = None  # last rows' (sequence_id, label)
        self._need: np.ndarray | None = None  # per predicted id: examples still wanted (None: count them)
        self._per_id: list[np.ndarray | None] | None = None  # the slices' codes per token id (:func:`_id_codes`)

    # -- map --------------------------------------------------------------------------------------------

    def update(self, table: TokenTable) -> EvaluationSums:
        """Add one batch (any rows, in storage order)."""
        probs = _probs(table, self.calibrator)
        keep = table.labeled
        self._passage(table, probs)
        if keep.any():
            self._add(table, probs, keep)
        self._carry = (table.sequence_id[-_CONTEXT:], table.label[-_CONTEXT:])
        return self

    def _add(self, table: TokenTable, probs: TokenProbs, keep: np.ndarray) -> None:
        from ._kernels import cell_sums, confidence_hists, smooth_grids

        lay = self.layout
        p = probs.select(keep) if not keep.all() else probs
        c = _confidence(p)
        a = np.asarray(p.correct, dtype=np.float64)
        py = np.clip(np.asarray(p.label_prob, dtype=np.float64), 0.0, 1.0)
        nll = -np.log(np.maximum(py, _TINY))
        brier = np.asarray(p.sum_sq, dtype=np.float64) - 2.0 * py + 1.0
        codes = [np.zeros(c.shape[0], np.int64)]
        if self._per_id is None:
            self._per_id = _id_codes(self.slices, self.meta)
        for s, per_id in zip(self.slices, self._per_id, strict=True):
            codes.append(_global_codes(s, table, probs, per_id)[keep])
        nc = lay.n_cells
        self.total[-2] += nll.sum()
        self.total[-1] += brier.sum()
        unit = self.units.ids(table.sequence_id[keep], table.position[keep])
        uniq, local = _unique(unit, inverse=True)
        # per unit of the batch: which slice values and bins it has a token in (units / sequences per value)
        pair_seen = np.zeros(uniq.size * self.n_values, np.uint8)
        bin_seen = np.zeros(uniq.size * self.bins, np.uint8)
        x = np.zeros((uniq.size, lay.n_cols) if self.boot is not None else (0, 1))
        offsets = lay.offsets[:-1].astype(np.int64)
        cell_sums(np.stack(codes), offsets, offsets // self.bins, self.bins, self.edges, self.binning == "width", c,
                  a, nll, brier, local, nc, self.n_values, self.total, self.cell_nll, self.cell_brier, x, pair_seen,
                  bin_seen)
        self._pairs.add_seen(uniq, pair_seen, self.n_values)
        self._bin_pairs.add_seen(uniq, bin_seen, self.bins)
        if self.boot is not None:
            with _one_blas_thread():  # a small product: BLAS threads only contend with the reader thread
                self.boot += self.weights[:, uniq] @ x.astype(np.float32)
        self.scalars += (c.size, c.sum(), a.sum(), brier.sum(), nll.sum(), np.sum((c - a) ** 2))
        part = np.zeros(_SMOOTH_STARTS[-1])
        smooth_grids(c, a, _SMOOTH_SIZES, _SMOOTH_STARTS, part)
        for q, (g, out) in enumerate(self.smooth.items()):
            out += part[_SMOOTH_STARTS[q]:_SMOOTH_STARTS[q + 1]].reshape(3, g)
        confidence_hists(c, a, self.aurc, self.hist)
        self._classwise(p)
        self._tokens(table, keep, p, c, a)

    def _classwise(self, p: TokenProbs) -> None:
        from ..metrics.classwise import classwise_sums

        if self.classes.size:
            base, corr = classwise_sums(p.top_ids, p.top_probs, p.label, self.classes, self.bins,
                                        label_prob=p.label_prob, vocab_size=self.vocab_size)
            self.class_base += base
            self.class_corr += corr

    def _tokens(self, table: TokenTable, keep: np.ndarray, p: TokenProbs, c: np.ndarray, a: np.ndarray) -> None:
        pred = np.asarray(p.predicted, dtype=np.int64)
        v = self.vocab_size
        self.tok[0] += np.bincount(pred, minlength=v)
        self.tok[1] += np.bincount(pred, c, minlength=v)
        self.tok[2] += np.bincount(pred, a, minlength=v)
        if self.worst <= 0:
            return
        if self._need is None:
            self._need = np.full(v, 3, np.int64)
            for t, ex in self.examples.items():
                self._need[t] = 3 - len(ex)
        need = self._need
        cand = np.flatnonzero(need[pred] > 0)  # rows whose predicted id still wants examples
        if not cand.size:
            return
        order = cand[np.argsort(pred[cand], kind="stable")]
        sp = pred[order]
        rank = np.arange(sp.size) - np.searchsorted(sp, sp, side="left")  # occurrence number of each id
        picked = np.sort(order[rank < need[sp]])  # the first still-needed occurrences, in storage order
        if not picked.size:
            return
        rows = np.flatnonzero(keep)[picked]
        seq_all, lab_all = table.sequence_id, table.label
        shift = 0
        if self._carry is not None:
            seq_all = np.concatenate([self._carry[0], seq_all])
            lab_all = np.concatenate([self._carry[1], lab_all])
            shift = self._carry[0].size
        rows = rows + shift
        change = np.flatnonzero(seq_all[1:] != seq_all[:-1]) + 1  # where a sequence's run of rows starts
        run_start = np.concatenate([[0], change])[np.searchsorted(change, rows, side="right")]
        starts = np.maximum(run_start, rows - _CONTEXT)  # up to _CONTEXT rows before, of the same sequence
        for t, start, r in zip(pred[picked].tolist(), starts.tolist(), rows.tolist(), strict=True):
            self.examples.setdefault(t, []).append((t, lab_all[start:r].copy(), int(lab_all[r])))
        np.subtract.at(need, pred[picked], 1)

    def _passage(self, table: TokenTable, probs: TokenProbs) -> None:
        if self.summary.first_labelled_seq is None:
            return
        rows = np.flatnonzero(table.sequence_id == self.summary.first_labelled_seq)
        if not rows.size:
            return
        part, pp = table.select(rows), probs.select(rows)
        if self.passage is not None:
            part = TokenTable.concat([self.passage, part])
            pp = TokenProbs(*(np.concatenate([getattr(self.passage_probs, f), getattr(pp, f)])
                              for f in ("top_ids", "top_probs", "label", "label_prob", "sum_sq", "entropy")))
        order = np.argsort(part.position, kind="stable")[:_PASSAGE]
        self.passage, self.passage_probs = part.select(order), pp.select(order)

    # -- reduce -----------------------------------------------------------------------------------------

    def merge(self, other: EvaluationSums) -> EvaluationSums:
        """Add a later shard's sums (its passage rows and examples come after this one's)."""
        for name in ("total", "cell_nll", "cell_brier", "scalars", "aurc", "hist", "class_base", "class_corr", "tok"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if self.boot is not None:
            self.boot = self.boot + other.boot
        self._pairs.merge(other._pairs)
        self._bin_pairs.merge(other._bin_pairs)
        for g in self.smooth:
            self.smooth[g] = self.smooth[g] + other.smooth[g]
        for t, ex in other.examples.items():
            mine = self.examples.setdefault(t, [])
            mine.extend(ex[:3 - len(mine)])
        self._need = None
        if other.passage is not None:
            if self.passage is None:
                self.passage, self.passage_probs = other.passage, other.passage_probs
            else:
                self.update_passage_from(other)
        return self

    @property
    def pairs(self) -> np.ndarray:
        """Sorted distinct ``unit * n_values + global value`` of every labelled token."""
        return self._pairs.values()

    @property
    def bin_pairs(self) -> np.ndarray:
        """Sorted distinct ``unit * bins + bin`` of every labelled token."""
        return self._bin_pairs.values()

    def update_passage_from(self, other: EvaluationSums) -> None:
        part = TokenTable.concat([self.passage, other.passage])
        pp = TokenProbs(*(np.concatenate([getattr(self.passage_probs, f), getattr(other.passage_probs, f)])
                          for f in ("top_ids", "top_probs", "label", "label_prob", "sum_sq", "entropy")))
        order = np.argsort(part.position, kind="stable")[:_PASSAGE]
        self.passage, self.passage_probs = part.select(order), pp.select(order)

    # -- the result -------------------------------------------------------------------------------------

    def value_sums(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        lay = self.layout
        lo, hi = lay.offsets[k], lay.offsets[k + 1]
        shape = (lay.sizes[k], lay.bins)
        return self.cell_nll[lo:hi].reshape(shape).sum(1), self.cell_brier[lo:hi].reshape(shape).sum(1)

    def result(self) -> Any:
        """The :class:`tokcal.evaluation.Evaluation` of everything added and merged."""
        from .. import evaluation as E

        info = self.units.info
        n, sc, sa, sbrier, snll, stl = self.scalars
        if n == 0:
            raise ValidationError("evaluate: no token has a known label (all labels are -1)")
        if self.bootstrap and info.n_units < 2:
            warnings.warn(few_units_message(_with_size(info, int(n))), ResamplingWarning, stacklevel=2)
        stats = _StreamStats(self, info)
        sm = _Smoother.__new__(_Smoother)  # the smoother of the merged grids: it reads nothing else
        sm._grids, sm._ece = {g: v.copy() for g, v in self.smooth.items()}, {}
        aurc, bound, cov, risk = aurc_from_bins(self.aurc[0], self.aurc[1])
        point = {
            "accuracy": sa / n, "confidence": sc / n, "smooth_ece": sm.ece(sm.fixed_point()),
            "brier": sbrier / n, "top_label_brier": stl / n, "nll": snll / n, "signed_gap": sc / n - sa / n,
            "aurc": aurc, "classwise_ece": self._classwise_ece(),
        }
        edges = np.linspace(0.0, 1.0, 51)
        hist = {"edges": edges.tolist(), "counts": self.hist.astype(int).tolist()}
        passage = E._passage(self.passage, self.passage_probs) if self.passage is not None else []
        return E._result(stats, self.boot, self.slices, _with_size(info, int(n)), self.edges, int(n), point,
                         bins=self.bins, binning=self.binning, bootstrap=self.bootstrap, seed=self.seed,
                         classwise_top=self.classwise_top, calibrator=self.calibrator,
                         worst_tokens=lambda: self._worst_tokens(E), curve=(cov, risk), histogram=hist,
                         passage=passage, fingerprint=self.fingerprint,
                         extra_settings={"streaming": {"aurc_bins": AURC_BINS, "aurc_error_bound": bound,
                                                       **({"edge_passes": self.edge_passes}
                                                          if self.binning == "mass" else {})}})

    def _classwise_ece(self) -> float:
        from ..metrics.binned import stats_metrics

        if not self.classes.size:
            return math.nan
        count = np.maximum(self.class_base[0][None, :] + self.class_corr[0], 0.0)
        conf = self.class_base[1][None, :] + self.class_corr[1]
        return float(np.mean(stats_metrics(count, conf, self.class_corr[2], "l1")))

    def _worst_tokens(self, E: Any) -> list[dict[str, Any]]:
        if self.worst <= 0:
            return []

        def contexts(t: int) -> list[dict[str, str]]:  # as tokcal.evaluation._worst_tokens
            out = []
            for _, prev, gold in self.examples.get(int(t), [])[:3]:
                out.append({"before": E._decode(self.meta, prev[prev >= 0]),
                            "token": self.meta.token_strings([t])[0], "gold": self.meta.token_strings([gold])[0]})
            return out

        return E._worst_list(self.meta, self.tok[0], self.tok[1], self.tok[2], self.worst, contexts)


class _UniqueInts:
    """A set of int64 keys, added in chunks and merged lazily (each key sorted O(log) times in all)."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._size = 0  # keys in the chunks (with repeats)
        self._unique = 0  # keys in the first chunk, unique since the last compaction

    def add(self, keys: np.ndarray) -> None:
        self._chunks.append(np.asarray(keys, dtype=np.int64))
        self._size += self._chunks[-1].size
        if self._size > 2 * self._unique + (1 << 16):
            self.values()

    def add_seen(self, uniq: np.ndarray, seen: np.ndarray, width: int) -> None:
        """Add ``uniq[j // width] * width + j % width`` for every j where ``seen[j]`` is set."""
        j = np.flatnonzero(seen)
        self.add(uniq[j // width] * width + j % width)

    def merge(self, other: _UniqueInts) -> None:
        for c in other._chunks:
            self.add(c)

    def values(self) -> np.ndarray:
        if len(self._chunks) != 1 or self._size != self._unique:
            merged = _unique(np.concatenate(self._chunks)) if self._chunks else np.zeros(0, np.int64)
            self._chunks, self._size, self._unique = [merged], merged.size, merged.size
        return self._chunks[0]


_BLAS: Any = None


def _one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread (threadpoolctl; the controller made once)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class _StreamStats(_Layout):
    """What :mod:`tokcal.evaluation`'s result builders read of a :class:`~tokcal.bootstrap.UnitStats`."""

    def __init__(self, sums: EvaluationSums, info: ResamplingUnits) -> None:
        super().__init__(sums.bins, sums.layout.sizes)
        self.units = info
        self.n_units = info.n_units
        self.total = sums.total
        self._sums = sums
        self.bin_units = np.bincount(sums.bin_pairs % sums.bins, minlength=sums.bins)
        unit, value = np.divmod(sums.pairs, sums.n_values)
        self.value_units, self.value_seqs = [], []
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        for k in range(len(self.sizes)):
            sel = (value >= starts[k]) & (value < starts[k + 1])
            v = value[sel] - starts[k]
            self.value_units.append(np.bincount(v, minlength=self.sizes[k]))
            seq_pairs = np.unique(info.sequence_of_unit[unit[sel]] * self.sizes[k] + v)
            self.value_seqs.append(np.bincount(seq_pairs % self.sizes[k], minlength=self.sizes[k]))

    def value_sums(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._sums.value_sums(k)


def _with_size(info: ResamplingUnits, n: int) -> ResamplingUnits:
    """``info`` whose ``ids`` has ``n`` entries (messages count tokens by it); a broadcast view, no memory."""
    return ResamplingUnits(np.broadcast_to(np.zeros(1, np.int64), (n,)), info.sequence_of_unit, info.kind,
                           info.block_length, info.n_sequences, info.reason)


def _probs(table: TokenTable, calibrator: Any) -> TokenProbs:
    from ..evaluation import _probs as probs

    return probs(table, calibrator)


def _confidence(p: TokenProbs) -> np.ndarray:
    """The confidences :func:`tokcal.evaluate` bins: top-1 probabilities as float64, clipped to [0, 1]."""
    return np.clip(np.asarray(p.confidence, dtype=np.float64), 0.0, 1.0)


def confidences(table: TokenTable, calibrator: Any = None) -> np.ndarray:
    """:func:`_confidence` of the labelled rows of ``table`` after ``calibrator`` (what equal-mass edges rank)."""
    keep = table.labeled
    if not keep.any():
        return np.zeros(0)
    part = table if keep.all() else table.select(keep)
    return _confidence(_probs(part, calibrator))


def stream_mass_edges(batches: Callable[[], Iterable[TokenTable]], calibrator: Any,
                      bins: int) -> tuple[np.ndarray, int]:
    """:func:`tokcal.metrics.mass_edges` of the confidences of every labelled row, exactly, by passes over
    ``batches()`` (called once per pass; :mod:`tokcal.distributed.quantiles`); and the number of passes."""
    from .quantiles import mass_edges_of

    return mass_edges_of(lambda: (confidences(b, calibrator) for b in batches()), bins)


def _reference(freq_ref: Any, meta: TokenTable, summary: DatasetSummary) -> Any:
    """The frequency reference of the freq slices: :func:`tokcal.frequency.load_reference`, where "the
    evaluated table" means the gold counts of the whole dataset (pass 1), not of one batch."""
    from ..frequency import default_reference, load_reference

    if freq_ref is not None:
        return load_reference(freq_ref, meta)
    return default_reference(meta, labelled_counts=summary.label_counts)


def _global_slices(slices: list[Slice], summary: DatasetSummary, ref: Any) -> list[Slice]:
    """Slices whose labels do not depend on the batch: frequency ranks from one reference for the
    dataset, group categories from the union of all parts (sorted, as :meth:`TokenTable.concat` orders
    them)."""
    out: list[Slice] = []
    for s in slices:
        if isinstance(s, FrequencySlice) and s.counts is None and s.reference is None:
            s = FrequencySlice(name=s.name, on=s.on, reference=ref, edges=s.edges)
        elif isinstance(s, GroupSlice):
            if s.group not in summary.groups:
                raise ValidationError(f"slice '{s.name}': no group column '{s.group}' (groups: "
                                      f"{sorted(summary.groups)})")
            s = GroupSlice(name=s.name, labels=sorted(summary.groups[s.group]), group=s.group)
        elif isinstance(s, TokenTypeSlice):
            s = TokenTypeSlice(name=s.name, on=s.on)
        out.append(s)
    return out


def _id_codes(slices: list[Slice], meta: TokenTable) -> list[np.ndarray | None]:
    """Per slice, its code of every token id when it is defined per id (frequency buckets, token types),
    computed once for the dataset instead of once per batch; else None."""
    return [s.id_buckets(meta) if isinstance(s, FrequencySlice) else s.id_types(meta)
            if isinstance(s, TokenTypeSlice) else None for s in slices]


def _global_codes(s: Slice, table: TokenTable, probs: TokenProbs, per_id: np.ndarray | None = None) -> np.ndarray:
    if per_id is not None:
        return np.asarray(codes_by_id(per_id, table, probs, s.on), dtype=np.int64)
    if isinstance(s, GroupSlice):
        g = table.group(s.group)
        lookup = np.searchsorted(np.asarray(s.labels, dtype=object), np.asarray(g.categories, dtype=object))
        return lookup[g.codes].astype(np.int64) if g.codes.size else np.zeros(0, np.int64)
    return np.asarray(s.codes(table, probs), dtype=np.int64)


def aurc_from_bins(count: np.ndarray, errors: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """AURC of tokens binned by confidence, each bin a tie group (:func:`tokcal.metrics.aurc`), a bound on
    its distance to the exact AURC, and the risk-coverage points at the bin ends (highest bin first).

    Group g (tokens s+1 .. s+m in rank order, e of them errors) contributes sum_k risk(k)/n with the
    tied risk ``(E_s + (k - s) e / m) / k``. Any order of the group gives an error count after k - s of
    its tokens within ``min(k - s, e, m - e)`` of the tied one, so
    ``|AURC_binned - AURC_exact| <= (1/n) sum_g sum_{j=1..m} min(j, e, m - e) / (s + j)``, in closed
    form with harmonic numbers H (digamma). Exact (bound 0) when no two distinct confidences share a bin.
    """
    from scipy.special import digamma

    keep = count[::-1] > 0
    m = count[::-1][keep]
    e = errors[::-1][keep]
    n = float(m.sum())
    s = np.concatenate([[0.0], np.cumsum(m)[:-1]])
    e_before = np.concatenate([[0.0], np.cumsum(e)[:-1]])

    def harmonic(x: np.ndarray) -> np.ndarray:
        return digamma(x + 1.0) + np.euler_gamma

    h_s, h_sm = harmonic(s), harmonic(s + m)
    # sum_{k=s+1}^{s+m} (E_s + (k - s) e/m) / k = (E_s - s e/m) (H(s+m) - H(s)) + e
    area = np.sum((e_before - s * e / m) * (h_sm - h_s) + e) / n
    cap = np.minimum(e, m - e)
    h_sc = harmonic(s + cap)
    # sum_{j=1}^{m} min(j, c)/(s+j) = c - s (H(s+c) - H(s)) + c (H(s+m) - H(s+c))
    bound = np.sum(cap - s * (h_sc - h_s) + cap * (h_sm - h_sc)) / n
    kept = s + m
    return float(area), float(max(bound, 0.0)), kept / n, (e_before + e) / kept


# -- evaluate and fit from a path ----------------------------------------------------------------------


def evaluate_stream(source: str | Path, calibrator: Any = None, slices: Any = None, bins: int = 15,
                    binning: str = "width", bootstrap: int = 200, seed: int = 0, worst: int = 20,
                    classwise_top: int = 100, unit: str = "auto", block_length: int | None = None,
                    freq_ref: Any = None, batch_rows: int = 65536,
                    rows: Callable[[TokenTable], np.ndarray] | None = None, *,
                    select: Callable[[TokenTable], TokenTable | None] | None = None,
                    progress: ProgressCallback | None = None, workers: int | None = None) -> Any:
    """:func:`tokcal.evaluate` of a Parquet file or dataset directory, streamed in batches of
    ``batch_rows`` rows: memory independent of its size (module docstring for what is exact).
    ``workers``: threads of pass 2, each reading and summing its contiguous share of the data
    (:mod:`tokcal.distributed.workers`; None: :func:`~tokcal.distributed.workers.default_workers`); a
    row selection and equal-mass binning use one computing thread beside one reader.
    ``rows(batch)``: an optional boolean mask of the rows to evaluate; ``select(batch)``: the table to
    evaluate instead of each batch, None for none of its rows (a held-out split,
    :class:`tokcal.distributed.fit.StreamSplit`).
    ``binning="mass"``: the exact equal-mass edges first, by passes of counts (:func:`stream_mass_edges`).
    ``progress``: called as ``("read", rows read, rows)`` during each pass (:func:`with_progress`)."""
    from .. import evaluation as E
    from ..validation import EvaluateParams, check_params

    args = check_params("evaluate", EvaluateParams, bins=bins, binning=binning, bootstrap=bootstrap, seed=seed,
                        worst=worst, classwise_top=classwise_top, unit=unit, block_length=block_length)

    def pick(batch: TokenTable) -> TokenTable | None:
        return pick_rows(batch, rows, select)

    picked = rows is not None or select is not None
    hasher = None if picked else hashlib.sha256()  # the fingerprint of a part of the dataset is not computed
    settings = {"calibrator": calibrator, "slices": slices, "bins": args.bins, "bootstrap": args.bootstrap,
                "seed": args.seed, "worst": args.worst, "classwise_top": args.classwise_top, "unit": args.unit,
                "freq_ref": freq_ref}
    n_workers = default_workers() if workers is None else int(workers)
    plan = shards(source, n_workers) if n_workers > 1 and not picked and args.binning == "width" else []
    if len(plan) > 1:  # pass 2 on threads: they read their first batches during pass 1
        with ShardWorkers(plan, batch_rows) as pool:
            summary, first = summarize(source, block_length=block_length, hasher=hasher)
            total = source_rows(source) if progress is not None else 0
            acc = _parallel_sums(pool, plan, summary, first, progress, total, **settings)
    else:
        readers = [Prefetch(TokenTable.iter_parquet(source, batch_rows=batch_rows))]  # reads during pass 1
        try:
            summary, first = _summarize_rows(source, pick, block_length) if picked else \
                summarize(source, block_length=block_length, hasher=hasher)
            total = source_rows(source) if progress is not None else 0

            def batches() -> Iterator[TokenTable]:
                reader = readers.pop() if readers else \
                    Prefetch(TokenTable.iter_parquet(source, batch_rows=batch_rows))
                for batch in with_progress(reader, progress, total):
                    batch = pick(batch) if picked else batch
                    if batch is not None and len(batch):
                        yield batch

            with numba_threads(1):  # the reader thread is the parallelism (:func:`tokcal._threads.numba_threads`)
                edges, passes = stream_mass_edges(batches, calibrator, args.bins) if args.binning == "mass" else \
                    (None, 0)
                acc = EvaluationSums(summary, first, edges=edges, **settings)
                acc.edge_passes = passes
                for batch in batches():
                    acc.update(batch)
        finally:
            for reader in readers:  # not iterated (an error before pass 2)
                reader.close()
    acc.fingerprint = None if hasher is None else E.FINGERPRINT_PREFIX + hasher.hexdigest()
    return acc.result()


def _parallel_sums(pool: ShardWorkers, plan: list[list[Piece]], summary: DatasetSummary, first: TokenTable,
                   progress: ProgressCallback | None, total: int, **settings: Any) -> EvaluationSums:
    """Pass 2 on ``pool``'s threads: an :class:`EvaluationSums` per shard (the replicate weights and per-id
    slice codes shared; each starting from the rows stored before its shard, for the worst-token
    contexts), merged in storage order."""
    accs = [EvaluationSums(summary, first, **settings)]
    for k in range(1, len(plan)):
        acc = EvaluationSums(summary, first, weights=accs[0].weights, **settings)
        earlier = [p for shard in plan[:k] for p in shard]
        acc._carry = tuple(rows_before(earlier, ("sequence_id", "label"), _CONTEXT))
        accs.append(acc)
    per_id = _id_codes(accs[0].slices, first)
    for acc in accs:
        acc._per_id = per_id
    with _one_blas_thread():  # entered here once: the threads' own entries then change nothing
        done = pool.run(lambda k: accs[k], progress, total)
    out = done[0]
    for acc in done[1:]:
        out.merge(acc)
    return out


def should_stream(source: str | Path, stream: bool | None, binning: str = "width") -> bool:
    """Whether to stream ``source``: ``stream`` when given, else when its Parquet bytes times
    :data:`EXPANSION` exceed half of the memory available now (either ``binning`` streams)."""
    if stream is not None:
        return bool(stream)
    import os

    size = sum(f.stat().st_size for f in parquet_files(source))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return False
    return size * EXPANSION > free / 2


EXPANSION = 12  #: in-memory bytes of an evaluated table per compressed Parquet byte (measured: 8-10)
