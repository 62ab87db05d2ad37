"""Input checks shared by the metric functions: one error that names the argument and the first bad index."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ValidationError, first_bad_row
from ..validation import MAX_BINS


def as_1d(name: str, x: Any) -> np.ndarray:
    """``x`` as a 1-D, non-empty numpy array (no copy where possible)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - numpy's own message is kept
        raise ValidationError(f"{name}: cannot be read as an array ({exc})") from exc
    if arr.ndim != 1:
        raise ValidationError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValidationError(f"{name}: empty input (no tokens)")
    return arr


def same_length(**arrays: np.ndarray | None) -> int:
    """Common length of the given arrays (None entries are skipped)."""
    n = None
    first = None
    for name, arr in arrays.items():
        if arr is None:
            continue
        if n is None:
            n, first = arr.shape[0], name
        elif arr.shape[0] != n:
            raise ValidationError(f"{name}: has {arr.shape[0]} entries but {first} has {n}")
    return int(n or 0)


def confidence(x: Any, name: str = "confidence", check: bool = True, above_one: float = 0.0) -> np.ndarray:
    """Finite values in [0, 1] as float32/float64 (float32 is kept; sums are float64 anyway).

    ``check=False`` only checks shape and dtype: the caller's numba kernel checks the values in its
    single pass and reports through :func:`bad_value`. ``above_one``: values in (1, 1 + above_one] are
    float rounding of 1 (e.g. a sum of squared probabilities) and are clipped to 1 (in a copy).
    """
    arr = as_1d(name, x)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "fiu":
        raise ValidationError(f"{name}: expected floating-point probabilities, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not check:
        return arr
    bad = ~((arr >= 0.0) & (arr <= 1.0 + above_one))
    if bad.any():
        i = first_bad_row(bad)
        raise ValidationError(f"{name}: values must be finite and in [0, 1]; index {i} holds {arr[i]!r}")
    return np.minimum(arr, 1.0, dtype=arr.dtype) if above_one > 0 and (arr > 1.0).any() else arr


def correct(x: Any, name: str = "correct", check: bool = True) -> np.ndarray:
    """Booleans or 0/1 numbers: uint8 (a zero-copy view) for bool input, else float64 when unchecked."""
    arr = as_1d(name, x)
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.dtype.kind not in "fiu":
        raise ValidationError(f"{name}: expected booleans or 0/1, got dtype {arr.dtype}")
    if not check:
        return arr.astype(np.float64, copy=False)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        i = first_bad_row(bad)
        raise ValidationError(f"{name}: values must be 0/1 (or booleans); index {i} holds {arr[i]!r}")
    return arr.astype(np.uint8)


def weights(x: Any, n: int, name: str = "sample_weight") -> np.ndarray | None:
    """Finite non-negative float64 weights of length ``n`` with a positive total, or None."""
    if x is None:
        return None
    arr = as_1d(name, x).astype(np.float64, copy=False)
    if arr.shape[0] != n:
        raise ValidationError(f"{name}: has {arr.shape[0]} entries but the data has {n}")
    bad = ~(np.isfinite(arr) & (arr >= 0))
    if bad.any():
        i = first_bad_row(bad)
        raise ValidationError(f"{name}: weights must be finite and >= 0; index {i} holds {arr[i]!r}")
    if not arr.sum() > 0:
        raise ValidationError(f"{name}: all weights are zero (no tokens)")
    return arr


def codes(x: Any, n: int, n_slices: int, name: str = "slice_codes") -> np.ndarray | None:
    """Integer slice codes in [-1, n_slices) as int64 (-1 = token in no slice), or None."""
    if x is None:
        return None
    arr = as_1d(name, x)
    if arr.dtype.kind not in "iu":
        raise ValidationError(f"{name}: expected integer codes, got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise ValidationError(f"{name}: has {arr.shape[0]} entries but the data has {n}")
    bad = (arr < -1) | (arr >= n_slices)
    if bad.any():
        i = first_bad_row(bad)
        raise ValidationError(f"{name}: codes must be in [-1, {n_slices}); index {i} holds {arr[i]!r}")
    return arr.astype(np.int64, copy=False)


# MAX_BINS (memory is O(bins x slice values); past a few hundred bins a binned ECE estimates nothing) is
# defined once, in tokcal.validation


def n_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= MAX_BINS:
        raise ValidationError(f"bins: expected an integer in [1, {MAX_BINS:,}], got {bins!r}")
    return int(bins)


def bad_value(name: str, arr: np.ndarray, i: int, what: str) -> ValidationError:
    """The error for a value a kernel found at index ``i``."""
    return ValidationError(f"{name}: values must be {what}; index {i} holds {arr[i]!r}")
