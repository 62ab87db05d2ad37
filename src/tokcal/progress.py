"""Progress of long computations, reported through an optional callback; the library never prints.

A callback is ``progress(step, done, total)``: ``step`` names the stage (``"bootstrap"``), ``done`` of
``total`` work items of it are finished (``0 <= done <= total``; each stage reports ``done == total``
when it ends). The command line draws it as a bar; Python callers pass their own or None (nothing).
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(step, done, total)``; see the module docstring.
ProgressCallback = Callable[[str, int, int], None]


def report(progress: ProgressCallback | None, step: str, done: int, total: int) -> None:
    """Call ``progress(step, done, total)`` unless it is None."""
    if progress is not None:
        progress(step, int(done), int(total))


def prefixed(progress: ProgressCallback | None, prefix: str) -> ProgressCallback | None:
    """``progress`` with each step named ``"<prefix> <step>"`` (two evaluations in one command); None stays None."""
    if progress is None:
        return None
    return lambda step, done, total: progress(f"{prefix} {step}", done, total)
