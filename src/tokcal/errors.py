"""Errors raised by tokcal. Every message names the problem: file, column, row, value."""

from __future__ import annotations


class TokcalError(ValueError):
    """Base class of every error tokcal raises on bad input."""


class ValidationError(TokcalError):
    """An array or column violates the TokenTable contract (shape, dtype, range, finiteness)."""


class SchemaError(TokcalError):
    """A file is not a tokcal file, is truncated, misses a column, or has an unknown schema version."""


class ConvergenceError(TokcalError):
    """An optimiser could not reach a solution inside its bounds."""


class TokcalWarning(UserWarning):
    """A result tokcal computed but cannot fully stand behind (an assumption it had to make)."""


def first_bad_row(mask) -> int:
    """Index of the first True in a boolean mask (callers check ``mask.any()`` first)."""
    import numpy as np

    return int(np.flatnonzero(mask)[0])
