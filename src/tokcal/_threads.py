"""Thread counts around tokcal's parallel numba kernels, kept in step with torch's.

numba's OpenMP threading layer binds to the libgomp already in the process, which is torch's when
torch was imported first, and its first parallel launch sets that runtime's thread count for the
whole process: a user's ``torch.set_num_threads(1)`` silently became 2 (numba's count on a
2-core machine) once tokcal had sketched or fitted anything, after which every small torch op
paid an OpenMP fork/join (the adaptive-temperature decoding processor ran 2.5-4x slower,
measured). Kernels called through :func:`torch_aligned` run with ``min(numba threads, torch
threads)`` when torch is loaded, and torch's count is put back if the launch changed it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any


def torch_aligned(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` (a parallel numba function) wrapped to run with torch's thread count at most and
    to leave torch's and numba's thread settings as it found them."""

    @functools.wraps(kernel)
    def launch(*args: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is None:
            return kernel(*args)
        theirs = torch.get_num_threads()  # before numba's first call, which may start its pool and change it
        import numba

        own = numba.get_num_threads()
        numba.set_num_threads(max(1, min(own, theirs)))
        try:
            return kernel(*args)
        finally:
            numba.set_num_threads(own)
            if torch.get_num_threads() != theirs:
                torch.set_num_threads(theirs)

    return launch


@contextlib.contextmanager
def numba_threads(n: int) -> Iterator[None]:
    """Parallel numba kernels launched from this thread use at most ``n`` threads inside the block (numba's
    setting is per thread, so other threads are not affected). The streamed passes run their kernels on
    one thread: a reader thread already decodes the next batch, and a parallel region's barrier waits for
    a worker that the reader has descheduled (measured: the streamed evaluate ran 10-15 % faster on 2 cores)."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, old)))
    try:
        yield
    finally:
        numba.set_num_threads(old)
