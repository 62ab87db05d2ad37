"""Numba kernels of the metrics (compiled on first use, cached on disk).

Every kernel makes one pass over the tokens, checks the values it reads (so callers need no extra
validation pass) and returns ``(first_bad_index, what)`` with ``what`` 0 when all is well.
"""

from __future__ import annotations

from typing import Any

BAD_CONFIDENCE, BAD_CORRECT, BAD_PROB = 1, 2, 3


def kernels() -> dict[str, Any]:
    """The compiled kernels (module :mod:`tokcal.metrics._compiled`, imported on first use so that
    ``import tokcal.metrics`` does not load numba; numba caches the machine code on disk)."""
    from .._threads import torch_aligned
    from . import _compiled

    out = {name: getattr(_compiled, name) for name in ("binned_stats", "bin_index", "grid_hist", "classwise")}
    out["binned_stats_parallel"] = torch_aligned(_compiled.binned_stats_parallel)
    return out
