"""Temperature and group-temperature fits as map-reduce passes over batches (out of core, Ray).

The in-memory fits (:func:`tokcal.calibrators.temperature.fit_beta`, :meth:`Temperature.fit`,
:meth:`GroupTemperature.fit`) run Newton's method on ``beta = 1/T`` whose every step needs
``[sum NLL, sum NLL', sum NLL'']`` over the labelled tokens (:func:`~tokcal.calibrators.temperature.nll_sums`).
Here each step is one pass: every batch (or shard) returns those three sums per group at the
current betas, the passes add them, and the very same :func:`~tokcal.calibrators.temperature.newton_beta`
consumes them -- one Newton per group, each in a thread that waits for the pass its step needs, so
all groups share each pass. Big groups are warm-started, as in memory, on the same random sub-sample
(:data:`~tokcal.calibrators.temperature._WARM_ROWS` rows drawn by the same seed among the group's
labelled rows in storage order), collected by one more pass. So the iterates are those of the
in-memory fit up to the order of float64 additions, and T agrees to ~1e-12 (tested to 1e-9). The
cluster-robust standard error takes two more passes (the resampling units of :mod:`tokcal.bootstrap`,
then the gradient sums per unit).

A pass is :meth:`Batches.map`: a function applied to every batch, outputs in storage order. Locally
that reads a Parquet file or dataset directory in batches; :mod:`tokcal.distributed.ray` runs it as
Ray tasks. Only the sums cross process boundaries.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._threads import numba_threads
from ..calibrators.group import GroupTemperature, _shrink
from ..calibrators.temperature import (
    _WARM_ROWS,
    CalibrationWarning,
    Temperature,
    newton_beta,
    nll_sums,
    nll_terms,
)
from ..errors import ValidationError
from ..progress import ProgressCallback
from ..sketch import LogitSketch
from ..table import TokenTable


class Batches:
    """A dataset read in batches: :meth:`map` (one pass, outputs in storage order) and iteration.
    ``rows(batch)``: a boolean mask of the rows to keep; ``select(batch)``: the table to use instead of
    each batch, None for none of its rows (e.g. :meth:`StreamSplit.fit`). Batches without rows are skipped.
    ``progress``: called as ``("read", rows read, rows)`` during each pass
    (:func:`~tokcal.distributed.reading.with_progress`)."""

    def __init__(self, source: str | Path, batch_rows: int = 65536,
                 rows: Callable[[TokenTable], np.ndarray] | None = None, *,
                 select: Callable[[TokenTable], TokenTable | None] | None = None,
                 progress: ProgressCallback | None = None) -> None:
        self.source, self.batch_rows, self.rows, self.select = source, batch_rows, rows, select
        self.progress = progress

    def __iter__(self) -> Iterator[TokenTable]:
        from .reading import pick_rows, prefetch, source_rows, with_progress

        total = source_rows(self.source) if self.progress is not None else 0
        with numba_threads(1):  # while the caller computes on a batch, too (:func:`tokcal._threads.numba_threads`)
            for batch in with_progress(prefetch(TokenTable.iter_parquet(self.source, batch_rows=self.batch_rows)),
                                       self.progress, total):
                part = pick_rows(batch, self.rows, self.select)
                if part is not None and len(part):
                    yield part

    def map(self, fn: Callable[[TokenTable], Any]) -> list[Any]:
        return [fn(b) for b in self]

    def map_with(self, fn: Callable[[TokenTable, Any], Any], args: list[Any]) -> list[Any]:
        """``fn(batch, args[i])`` for the i-th batch in storage order (one pass)."""
        return [fn(b, a) for b, a in zip(self, args, strict=True)]

    def first(self) -> TokenTable:
        """Some first rows (the metadata: vocabulary, source, groups); not a pass, so not reported."""
        return next(iter(Batches(self.source, self.batch_rows, self.rows, select=self.select)))


def _labelled(batch: TokenTable) -> TokenTable | None:
    m = batch.labeled
    if not m.any():
        return None
    return batch if m.all() else batch.select(m)


def _concat(parts: list[LogitSketch]) -> LogitSketch:
    fields = ("top_ids", "top_logits", "label_logit", "log_normalizer", "tail")
    return LogitSketch(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields),
                       layout=parts[0].layout, vocab_size=parts[0].vocab_size)


class _GroupedPasses:
    """Passes over the labelled rows of ``batches``, split into groups by ``key(labelled batch) -> values``."""

    def __init__(self, batches: Batches, key: Callable[[TokenTable], np.ndarray]) -> None:
        self.batches, self.key = batches, key
        outs = batches.map(lambda b: self._count(b))
        cats = sorted({c for o in outs if o is not None for c in o[0]})
        if not cats:
            raise ValidationError("fit: the data have no labelled rows (all labels are -1)")
        self.cats = np.asarray(cats, dtype=object)
        self.counts = np.zeros(len(cats), np.int64)
        self.batch_counts = []  # labelled rows of each group in each batch, storage order
        for o in outs:
            c = np.zeros(len(cats), np.int64)
            if o is not None:
                c[np.searchsorted(self.cats, np.asarray(o[0], dtype=object))] = o[1]
            self.batch_counts.append(c)
            self.counts += c

    def _count(self, batch: TokenTable) -> tuple[list[str], np.ndarray] | None:
        lab = _labelled(batch)
        if lab is None:
            return None
        values, counts = np.unique(np.asarray(self.key(lab)).astype(str), return_counts=True)
        return values.tolist(), counts

    def codes(self, lab: TokenTable) -> np.ndarray:
        return np.searchsorted(self.cats, np.asarray(self.key(lab)).astype(str).astype(object))

    def by_group(self, lab: TokenTable, betas: dict[int, float]) -> Iterator[tuple[int, float, TokenTable]]:
        """``(group, its beta, its rows of lab)`` for each group of ``betas`` with rows in ``lab``."""
        codes = self.codes(lab)
        for g, beta in betas.items():
            rows = np.flatnonzero(codes == g)
            if rows.size:
                yield g, beta, lab if rows.size == len(lab) else lab.select(rows)

    def sums(self, betas: dict[int, float]) -> dict[int, np.ndarray]:
        """``{group: [sum NLL, sum NLL', sum NLL'']}`` at each group's beta: one pass."""
        def kernel(batch: TokenTable) -> np.ndarray:
            out = np.zeros((len(self.cats), 3))
            lab = _labelled(batch)
            if lab is None:
                return out
            for g, beta, part in self.by_group(lab, betas):
                out[g] = nll_sums(part.sketch, beta)
            return out

        total = np.sum(self.batches.map(kernel), axis=0)
        return {g: total[g] for g in betas}

    def warm_rows(self, groups: list[int], seed: int) -> dict[int, LogitSketch]:
        """The in-memory warm-start sub-sample of each group: rows ``sort(choice(n_g, _WARM_ROWS))`` of its
        labelled rows in storage order, by one pass (each batch gets its groups' row offsets, known from
        the counting pass, and returns only its sampled rows)."""
        want = {g: np.sort(np.random.default_rng(seed).choice(int(self.counts[g]), _WARM_ROWS, replace=False))
                for g in groups}
        offsets = np.cumsum([np.zeros(len(self.cats), np.int64), *self.batch_counts[:-1]], axis=0)
        args = [{g: want[g][np.searchsorted(want[g], o[g]):np.searchsorted(want[g], o[g] + c[g])] - o[g]
                 for g in groups if c[g]} for o, c in zip(offsets, self.batch_counts, strict=True)]

        def kernel(batch: TokenTable, picks: dict[int, np.ndarray]) -> dict[int, LogitSketch]:
            lab = _labelled(batch) if picks else None
            if lab is None:
                return {}
            codes = self.codes(lab)
            return {g: lab.select(np.flatnonzero(codes == g)[idx]).sketch for g, idx in picks.items() if idx.size}

        parts: dict[int, list[LogitSketch]] = {g: [] for g in groups}
        for out in self.batches.map_with(kernel, args):
            for g, sk in out.items():
                parts[g].append(sk)
        return {g: _concat(parts[g]) for g in groups}

    def score(self, betas: dict[int, float], units: Any) -> dict[int, tuple[np.ndarray, float, int]]:
        """Per group at its beta: gradient sums per resampling unit (``units``: the
        :class:`~tokcal.distributed.summary.StreamUnits` of the labelled rows, the clusters of the
        in-memory standard errors), the curvature sum, the number of units."""
        def kernel(batch: TokenTable) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
            out = {}
            lab = _labelled(batch)
            if lab is None:
                return out
            for g, beta, part in self.by_group(lab, betas):
                _, grad, hess = nll_terms(part.sketch, np.full(len(part), beta))
                seq, inv = np.unique(units.ids(part.sequence_id, part.position), return_inverse=True)
                out[g] = (seq, np.bincount(inv.ravel(), grad), float(hess.sum()))
            return out

        acc: dict[int, list[Any]] = {g: [[], [], 0.0] for g in betas}
        for o in self.batches.map(kernel):
            for g, (seq, gsum, h) in o.items():
                acc[g][0].append(seq)
                acc[g][1].append(gsum)
                acc[g][2] += h
        res = {}
        for g, (seqs, gsums, h) in acc.items():
            seq, inv = np.unique(np.concatenate(seqs), return_inverse=True)
            res[g] = (np.bincount(inv.ravel(), np.concatenate(gsums)), h, int(seq.size))
        return res


def _newton_groups(passes: _GroupedPasses, groups: list[int], beta0: dict[int, float], bounds: tuple[float, float],
                   seed: int, what: Callable[[int], str]) -> dict[int, tuple[float, dict[str, Any]]]:
    """:func:`~tokcal.calibrators.temperature.fit_beta` for each group at once, one pass per Newton step."""
    big = [g for g in groups if passes.counts[g] > 2 * _WARM_ROWS]
    if big:
        subs = passes.warm_rows(big, seed)
        for g in big:
            sub = subs[g]
            beta0[g], _ = newton_beta(lambda b, s=sub: nll_sums(s, b) / len(s), beta0[g], bounds, rtol=1e-3,
                                      what=what(g))
    requests: queue.Queue = queue.Queue()
    answers = {g: queue.Queue() for g in groups}
    out: dict[int, Any] = {}

    def run(g: int) -> None:
        def evaluate(beta: float) -> np.ndarray:
            requests.put((g, beta))
            return answers[g].get() / passes.counts[g]

        try:
            out[g] = newton_beta(evaluate, beta0[g], bounds, what=what(g))
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            out[g] = e
        finally:
            requests.put((g, None))

    threads = [threading.Thread(target=run, args=(g,), daemon=True) for g in groups]
    for t in threads:
        t.start()
    alive = set(groups)
    while alive:
        pending: dict[int, float] = {}
        while len(pending) < len(alive):
            g, beta = requests.get()
            if beta is None:
                alive.discard(g)
            else:
                pending[g] = beta
        if pending:
            for g, s in passes.sums(pending).items():
                answers[g].put(s)
    for t in threads:
        t.join()
    for g in groups:
        if isinstance(out[g], BaseException):
            raise out[g]
        out[g][1]["n"] = int(passes.counts[g])
    return out


def _units(batches: Batches) -> Any:
    """The resampling units of the labelled rows (:func:`tokcal.bootstrap.resampling_units`), by one pass."""
    from ..bootstrap import block_length_of
    from .summary import DatasetSummary, OrderedMerge

    first = batches.first()
    b = block_length_of(first.source)
    total = OrderedMerge()
    for part in batches.map(lambda t: DatasetSummary.of_table(t, b)):
        total.add(part)
    return total.result(DatasetSummary(first.vocab_size, b)).units()


def fit_temperature(batches: Batches, calibrator: Temperature | None = None) -> Temperature:
    """:meth:`Temperature.fit` on every labelled row of ``batches``, by passes (module docstring)."""
    cal = calibrator if calibrator is not None else Temperature()
    if cal.fixed:
        return cal
    passes = _GroupedPasses(batches, lambda lab: np.zeros(len(lab), np.int64))
    bounds = (1.0 / cal.bounds[1], 1.0 / cal.bounds[0])
    beta, info = _newton_groups(passes, [0], {0: 1.0}, bounds, cal.seed, lambda g: "temperature")[0]
    grad, hess, _ = passes.score({0: beta}, _units(batches))[0]
    info["se_beta"] = float(np.sqrt(np.sum(grad * grad)) / hess) if hess > 0 else math.inf
    cal._set(beta, info)
    return cal


def fit_group_temperature(batches: Batches, calibrator: GroupTemperature, *,
                          freq_reference: Any = None) -> GroupTemperature:
    """:meth:`GroupTemperature.fit` on every labelled row of ``batches``, by passes (module docstring).
    ``by="freq"``: the buckets of the reference ``freq_reference`` (None: the default of
    :mod:`tokcal.frequency`, where "the fitting table" means the gold counts of all of ``batches``, one pass)."""
    from ..calibrators.group import FREQ, TOKEN_TYPE, type_code_string

    cal = calibrator
    first = batches.first()
    if cal.by == TOKEN_TYPE and cal.by not in first.groups and first.vocabulary is not None:
        cal.type_codes = type_code_string(first.vocabulary)
    if cal.by == FREQ and cal.by not in first.groups:
        _freq_buckets(cal, batches, first, freq_reference)
    elif freq_reference is not None:
        raise ValidationError(f"GroupTemperature(by={cal.by!r}): freq_reference is only used with by='freq'")
    bounds = (1.0 / cal.bounds[1], 1.0 / cal.bounds[0])
    whole = _GroupedPasses(batches, lambda lab: np.zeros(len(lab), np.int64))
    beta0, info0 = _newton_groups(whole, [0], {0: 1.0}, bounds, cal.seed, lambda g: "GroupTemperature (global)")[0]
    if info0["at_bound"]:
        warnings.warn(f"GroupTemperature: the global temperature hit a bound ({info0['at_bound']})",
                      CalibrationWarning, stacklevel=2)
    passes = _GroupedPasses(batches, cal._table_groups)
    groups = list(range(len(passes.cats)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        fits = _newton_groups(passes, groups, dict.fromkeys(groups, beta0), bounds, cal.seed,
                              lambda g: f"GroupTemperature[{passes.cats[g]}]")
    scores = passes.score({g: fits[g][0] for g in groups}, _units(batches))
    logb, var = np.empty(len(groups)), np.empty(len(groups))
    for g in groups:
        b, info = fits[g]
        grad, hess, n_seq = scores[g]
        se = float(np.sqrt(np.sum(grad * grad)) / hess) if hess > 0 else math.inf
        logb[g] = math.log(b)
        var[g] = math.inf if info["at_bound"] or n_seq < 2 else (se / b) ** 2
    shrunk, tau2 = _shrink(logb, var, math.log(beta0)) if cal.shrink else (logb, math.inf)
    cats = passes.cats
    cal.global_temperature = 1.0 / beta0
    cal.temperatures = {str(c): float(math.exp(-s)) for c, s in zip(cats, shrunk, strict=True)}
    cal.raw_temperatures = {str(c): float(math.exp(-s)) for c, s in zip(cats, logb, strict=True)}
    cal.counts = {str(c): int(n) for c, n in zip(cats, passes.counts, strict=True)}
    cal.tau = float(math.sqrt(tau2)) if math.isfinite(tau2) else None
    return cal


def _freq_buckets(cal: GroupTemperature, batches: Batches, first: TokenTable, freq_reference: Any) -> None:
    """The ``by="freq"`` buckets of :meth:`GroupTemperature.fit` (the ``freq:predicted`` slice's) from the
    reference, or else the default reference of the gold counts of every row of ``batches``."""
    from ..frequency import default_reference, load_reference
    from ..slices import FrequencySlice

    if freq_reference is not None:
        ref = load_reference(freq_reference, first)
    else:
        counts = np.zeros(first.vocab_size)
        for c in batches.map(lambda b: np.bincount(b.label[b.label >= 0], minlength=b.vocab_size)):
            counts += c
        ref = default_reference(first, labelled_counts=counts)
    sl = FrequencySlice(on="predicted", reference=ref)
    cal.freq_codes = "".join(map(str, sl.id_buckets(first).tolist()))
    cal.freq_labels = list(sl.labels)
    cal.freq_reference = f"{sl.used.tag()} ({sl.used.name})"


def fit_histogram_binning(batches: Batches, calibrator: Any) -> Any:
    """:meth:`HistogramBinning.fit` on every labelled row of ``batches``: the equal-mass inner edges exact
    (:mod:`tokcal.distributed.quantiles`, passes over the confidences), then one pass of bin sums."""
    from ..probs import token_probs
    from .quantiles import OrderStatistics, quantile_ranks

    cal = calibrator

    def rows() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # confidence and correctness, as fit() reads them
        for b in batches:
            lab = _labelled(b)
            if lab is not None:
                tp = token_probs(lab)
                yield tp.confidence.astype(np.float64), tp.correct.astype(np.float64)

    q = cal.inner_quantiles()
    if cal.binning == "mass" and q.size:
        stats = OrderStatistics(lambda n: quantile_ranks(n, q))
        stats.run(lambda: (c for c, _ in rows()))
        inner = np.unique(stats.quantiles(q))
    else:
        inner = np.linspace(0, 1, cal.bins + 1)[1:-1]
    sums = [np.zeros(len(inner) + 1) for _ in range(3)]
    n = 0
    for c, a in rows():
        n += c.size
        for total, part in zip(sums, cal.bin_sums(inner, c, a), strict=True):
            total += part
    if not n:
        raise ValidationError("HistogramBinning.fit: the data have no labelled rows (all labels are -1)")
    cal.set_bins(inner, *sums)
    cal.fit_info = {"n": n}  # the tokens fitted on (what the CLI reports; not part of the saved calibrator)
    return cal


STREAMED_FITS = ("Temperature", "GroupTemperature", "HistogramBinning")  #: what :func:`fit_stream` fits


def fit_stream(calibrator: Any, batches: Batches, *, freq_reference: Any = None) -> Any:
    """Fit ``calibrator`` (one of :data:`STREAMED_FITS`) by passes over ``batches``.

    Others need every row at once (isotonic regression and beta calibration fit on all confidences,
    adaptive temperature and conformal sets optimise over all rows) and are refused."""
    from ..calibrators import HistogramBinning

    if freq_reference is not None and type(calibrator) is not GroupTemperature:
        raise ValidationError(f"{type(calibrator).__name__}: freq_reference is only used by "
                              "GroupTemperature(by='freq')")
    if type(calibrator) is Temperature:
        return fit_temperature(batches, calibrator)
    if type(calibrator) is GroupTemperature:
        return fit_group_temperature(batches, calibrator, freq_reference=freq_reference)
    if type(calibrator) is HistogramBinning:
        return fit_histogram_binning(batches, calibrator)
    raise ValidationError(f"streaming fit supports temperature, group temperature and histogram binning, not "
                          f"{type(calibrator).__name__}: fit it in memory (tokcal fit --in-memory) on the table "
                          "or on a sample of it (some of its part files)")


class StreamSplit:
    """:func:`tokcal.calibrators.hygiene.held_out_split` of a dataset read in batches: the same seeded draw
    of resampling units over all rows (sequences, or contiguous blocks, each block then its own
    ``sequence_id`` on both sides), applied batch by batch by :meth:`fit` and :meth:`held_out`."""

    def __init__(self, source: str | Path, frac: float, seed: int = 0, *, block_length: int | None = None) -> None:
        from ..bootstrap import block_length_of
        from .summary import DatasetSummary, OrderedMerge, _arrow_summary

        if not 0.0 < float(frac) < 1.0:
            raise ValidationError(f"split_by_sequence: frac must be in (0, 1), got {frac!r}")
        first = next(TokenTable.iter_parquet(source, batch_rows=1))
        b = block_length_of(first.source) if block_length is None else int(block_length)
        merged = OrderedMerge()
        for seq, pos, lab, _ in _arrow_summary(Path(source)):  # every row counts
            merged.add(DatasetSummary.of_arrays(first.vocab_size, b, seq, pos, np.zeros_like(lab), {}))
        total = merged.result(DatasetSummary(first.vocab_size, b))
        self.units = total.units()
        info = self.units.info
        if info.n_units < 2:
            raise ValidationError(f"split_by_sequence: the table has {info.describe()} ({total.n_rows} tokens), 1 "
                                  "resampling unit; a held-out split needs at least 2 (give sequence_ids when "
                                  "building the table, or use more text)")
        rng = np.random.default_rng(seed)
        self.n_out = min(max(1, round(frac * info.n_units)), info.n_units - 1)
        self.blocks = info.kind != "sequence"
        self.held = np.sort(rng.choice(total.seq_ids if not self.blocks else info.n_units, size=self.n_out,
                                       replace=False))
        self.n_fit_units = info.n_units - self.n_out
        self.message = None if not self.blocks else (
            f"split_by_sequence: {info.reason}, so the split is by contiguous blocks: {self.n_out} of "
            f"{info.describe()} held out, no block on both sides; each block is its own sequence_id in the two "
            "tables")

    def _side(self, batch: TokenTable, held: bool) -> TokenTable | None:
        ids = self.units.ids(batch.sequence_id, batch.position) if self.blocks else batch.sequence_id
        m = np.isin(ids, self.held) == held
        if not m.any():
            return None
        side = batch.select(m)
        if self.blocks:
            side.sequence_id = ids[m]
        return side

    def fit(self, batch: TokenTable) -> TokenTable | None:
        """The rows of ``batch`` on the fitting side (None: none)."""
        return self._side(batch, False)

    def held_out(self, batch: TokenTable) -> TokenTable | None:
        """The rows of ``batch`` on the held-out side (None: none)."""
        return self._side(batch, True)
