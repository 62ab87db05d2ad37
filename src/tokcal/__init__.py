"""tokcal: token-level calibration of sequence models.

Collect per-token predictions, measure calibration (ECE family, smooth ECE, Brier, NLL) with
slices and intervals, fit calibrators that keep the sequence intact, and use them downstream.
``import tokcal`` never imports torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import ConvergenceError, SchemaError, TokcalError, ValidationError
from .table import TokenTable

__all__ = [
    "__version__", "TokenTable", "TokcalError", "ValidationError", "SchemaError", "ConvergenceError",
    "evaluate", "Evaluation", "load_calibrator", "metrics", "slices", "sketch", "synthetic",
    "calibrators", "sources", "integrations",
]

_LAZY_ATTRS = {
    "evaluate": ("tokcal.evaluation", "evaluate"),
    "Evaluation": ("tokcal.evaluation", "Evaluation"),
    "load_calibrator": ("tokcal.calibrators", "load_calibrator"),
    "annotate": ("tokcal.integrations.annotate", "annotate"),
    "generate": ("tokcal.integrations.hf_generate", "generate"),
}
_LAZY_MODULES = {"metrics", "slices", "sketch", "synthetic", "calibrators", "sources", "integrations",
                 "report", "evaluation", "losses"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        module, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(module), attr)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"tokcal.{name}")
    raise AttributeError(f"module 'tokcal' has no attribute {name!r}")
