"""A streamed pass on several threads of one process: the row groups of a Parquet file or dataset
directory cut into contiguous shards (:func:`shards`), one thread per shard that reads its batches
(pyarrow decoding on that thread alone) and folds them into its own accumulator, the accumulators
merged in storage order by the caller (:class:`ShardWorkers`).

Why threads that each read *and* compute: Parquet decoding and the numba kernels both release the GIL,
so each thread keeps one core busy. One reader thread feeding one computing thread left the cores
oversubscribed (pyarrow's own pool decoding beside the computation, which then ran a third slower) and
idle at the ends of the pass. The threads start reading at construction, so a pass that has to wait for
something first (pass 2 of :func:`tokcal.distributed.stats.evaluate_stream` waits for pass 1) finds a
few batches of each shard decoded already.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._threads import numba_threads
from ..progress import ProgressCallback, report
from ..table import TokenTable, parquet_files

#: ``(file, row groups)``: row groups of one file, in order (None: all of them)
Piece = tuple[Path, tuple[int, ...] | None]

MAX_WORKERS = 4  #: the default thread count's cap: each thread holds ``backlog + 1`` batches


def default_workers() -> int:
    """Threads for a streamed pass: the CPUs this process may run on, at most :data:`MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def shards(source: str | Path, n: int) -> list[list[Piece]]:
    """``source``'s data cut into at most ``n`` contiguous non-empty shards of about equal size, in
    storage order: whole files by bytes when there are at least ``n`` files (nothing is read), else row
    groups by rows (from the footers)."""
    import pyarrow.parquet as pq

    files = parquet_files(source)
    if len(files) >= n:
        units: list[Piece] = [(f, None) for f in files]
        sizes = [f.stat().st_size for f in files]
    else:
        units, sizes = [], []
        for f in files:
            md = pq.ParquetFile(f).metadata
            units.extend((f, (g,)) for g in range(md.num_row_groups))
            sizes.extend(md.row_group(g).num_rows for g in range(md.num_row_groups))
    if not units:
        return []
    run = np.cumsum(sizes, dtype=np.float64)
    n = max(1, min(n, len(units)))
    # shard k ends at the unit whose running total is nearest to (k + 1) / n of the whole; the last at the end
    cuts = {len(units) - 1}
    for k in range(n - 1):
        target = run[-1] * (k + 1) / n
        i = int(np.searchsorted(run, target))
        cuts.add(i - 1 if i > 0 and target - run[i - 1] <= run[i] - target else i)
    out, start = [], 0
    for end in sorted(cuts):
        pieces: list[Piece] = []
        for f, g in units[start:end + 1]:
            if g is not None and pieces and pieces[-1][0] == f:
                pieces[-1] = (f, (*(pieces[-1][1] or ()), *g))
            else:
                pieces.append((f, g))
        out.append(pieces)
        start = end + 1
    return out


def rows_before(earlier: Sequence[Piece], columns: Sequence[str], count: int) -> list[np.ndarray]:
    """The last ``count`` rows of ``columns`` in the pieces ``earlier`` (all that is stored before a shard;
    fewer rows at the start of the data), read backwards one row group at a time."""
    import pyarrow.parquet as pq

    parts: list[list[np.ndarray]] = []
    have = 0
    for f, groups in reversed(earlier):
        pf = pq.ParquetFile(f)
        for g in reversed(range(pf.metadata.num_row_groups) if groups is None else groups):
            if have >= count:
                break
            t = pf.read_row_group(g, columns=list(columns))
            parts.insert(0, [t.column(c).to_numpy() for c in columns])
            have += t.num_rows
        if have >= count:
            break
    if not parts:
        return [np.zeros(0, np.int64) for _ in columns]
    return [np.concatenate([p[j] for p in parts])[-count:] for j in range(len(columns))]


class ShardWorkers:
    """One thread per shard, reading its batches (:meth:`TokenTable.iter_pieces`, ``batch_rows`` rows)
    from construction on: up to ``backlog`` batches each until :meth:`run` says what to do with them.
    :meth:`run` ``(start)``: each thread folds its batches into ``start(k)`` (an accumulator with an
    ``update(batch)`` method) and the accumulators come back in shard order. Numba kernels run on the
    calling thread only (:func:`tokcal._threads.numba_threads`). The first error of any thread stops the
    others and is raised by :meth:`run`; :meth:`close` (or the context manager) stops them all."""

    def __init__(self, shard_list: Sequence[Sequence[Piece]], batch_rows: int, backlog: int = 2) -> None:
        self._shards = list(shard_list)
        self._batch_rows, self._backlog = batch_rows, backlog
        self._go, self._stop = threading.Event(), threading.Event()
        self._start: Callable[[int], Any] | None = None
        n = len(self._shards)
        self.rows = [0] * n  # rows folded in, per thread (progress)
        self._results: list[Any] = [None] * n
        self._errors: list[BaseException | None] = [None] * n
        self._threads = [threading.Thread(target=self._work, args=(k,), daemon=True) for k in range(n)]
        for t in self._threads:
            t.start()

    def __len__(self) -> int:
        return len(self._shards)

    def _work(self, k: int) -> None:
        try:
            with numba_threads(1):
                batches = TokenTable.iter_pieces(self._shards[k], self._batch_rows, threads=False)
                ready: list[TokenTable] = []
                for batch in batches:  # read ahead until told what to do, at most `backlog` batches
                    ready.append(batch)
                    if self._go.is_set() or len(ready) >= self._backlog:
                        break
                self._go.wait()
                if self._stop.is_set():
                    return
                assert self._start is not None
                acc = self._start(k)
                while ready or not self._stop.is_set():
                    batch = ready.pop(0) if ready else next(batches, None)
                    if batch is None:
                        break
                    acc.update(batch)
                    self.rows[k] += len(batch)
                    if self._stop.is_set():
                        return
                self._results[k] = acc
        except BaseException as e:  # noqa: BLE001 - raised by run() on the calling thread
            self._errors[k] = e
            self._stop.set()

    def run(self, start: Callable[[int], Any], progress: ProgressCallback | None = None, total: int = 0,
            step: str = "read") -> list[Any]:
        """Fold every shard into ``start(k)``; the accumulators in shard order. ``progress`` is called on this
        thread as ``(step, rows done, total)``, about ten times a second."""
        self._start = start
        self._go.set()
        if progress is not None:
            report(progress, step, 0, total)
        try:
            for t in self._threads:
                while t.is_alive():
                    t.join(0.1)
                    if progress is not None:
                        report(progress, step, min(sum(self.rows), total), total)
        finally:
            self.close()
        for e in self._errors:
            if e is not None:
                raise e
        if progress is not None:
            report(progress, step, min(sum(self.rows), total), total)
        return self._results

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        for t in self._threads:
            t.join()

    def __enter__(self) -> ShardWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
