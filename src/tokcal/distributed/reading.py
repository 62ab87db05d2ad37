"""Reading a Parquet file or dataset directory in batches for the streamed passes: a reader thread that
decodes ahead of the computation (:class:`Prefetch`), progress per pass (:func:`with_progress`), and the
rows a pass keeps (:func:`pick_rows`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..progress import ProgressCallback, report
from ..table import TokenTable, parquet_files


class Prefetch:
    """``batches`` read ahead on a thread, from construction on: up to ``depth`` batches wait in a queue
    (Parquet decoding releases the GIL, so reading overlaps the computation -- and, started before pass 1,
    pass 1 too). Iterate it once; :meth:`close` (or the context manager, or the end of the iteration)
    stops the thread. Memory: ``depth + 1`` batches."""

    _DONE = object()

    def __init__(self, batches: Iterable[TokenTable], depth: int = 3) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(batches),), daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator[TokenTable]) -> None:
        try:
            for b in batches:
                if self._stop.is_set():
                    return
                self._queue.put(b)
            self._queue.put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._queue.put(e)

    def __iter__(self) -> Iterator[TokenTable]:
        try:
            while True:
                item = self._queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():  # unblock a pending put, then let the thread end
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(batches: Iterable[TokenTable], depth: int = 3) -> Iterator[TokenTable]:
    """:class:`Prefetch`, iterated."""
    return iter(Prefetch(batches, depth))


def source_rows(source: str | Path) -> int:
    """Rows of a Parquet file or dataset directory, from the file footers (nothing else is read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(source))


def with_progress(batches: Iterable[TokenTable], progress: ProgressCallback | None, total: int,
                  step: str = "read") -> Iterator[TokenTable]:
    """``batches`` unchanged, reporting ``(step, rows read, total)`` (:mod:`tokcal.progress`) after each
    batch is used; one pass over a source of ``total`` rows (:func:`source_rows`) runs from 0 to total."""
    if progress is None:
        yield from batches
        return
    done = 0
    report(progress, step, 0, total)
    for batch in batches:
        yield batch
        done += len(batch)
        report(progress, step, min(done, total), total)


def pick_rows(batch: TokenTable, rows: Callable[[TokenTable], np.ndarray] | None,
              select: Callable[[TokenTable], TokenTable | None] | None) -> TokenTable | None:
    """The rows of ``batch`` that ``rows`` (a boolean mask) and then ``select`` (a table, None: no row) keep."""
    if rows is not None:
        m = np.asarray(rows(batch), dtype=bool)
        if not m.any():
            return None
        batch = batch if m.all() else batch.select(m)
    return batch if select is None else select(batch)
