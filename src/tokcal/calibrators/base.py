"""The calibrator protocol and its JSON persistence.

Every calibrator turns a :class:`~tokcal.table.TokenTable` into calibrated per-token probabilities
(:meth:`Calibrator.token_probs`, what :func:`tokcal.evaluate` reads) and raw logits into calibrated
logits (:meth:`Calibrator.transform_logits`, numpy arrays or torch tensors, for decoding). State is
saved as JSON numbers with a schema version — never pickle — and written atomically;
:func:`load_calibrator` reads any of them back by its ``"type"``.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._io import atomic_write, read_json
from .._version import __version__
from ..errors import SchemaError, ValidationError
from ..probs import TokenProbs
from ..table import TokenTable

SCHEMA_VERSION = 1
_FORMAT = "tokcal-calibrator"
_REGISTRY: dict[str, type[Calibrator]] = {}


class Calibrator(ABC):
    """Base class: ``fit(table) -> self``, ``transform_logits``, ``token_probs``, ``to_dict``/``from_dict``.

    Subclasses set ``type_name`` (the ``"type"`` written to JSON) and ``preserves_argmax`` (True when
    the calibrated argmax always equals the model's argmax), and implement :meth:`fit`,
    :meth:`token_probs`, :meth:`transform_logits`, :meth:`_state` and :meth:`_from_state`.
    """

    type_name: ClassVar[str] = ""
    preserves_argmax: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _REGISTRY[cls.type_name] = cls

    # -- protocol ------------------------------------------------------------------------------

    @abstractmethod
    def fit(self, table: TokenTable, **kwargs: Any) -> Calibrator:
        """Fit on the labelled rows of ``table``; returns ``self``."""

    @abstractmethod
    def token_probs(self, table: TokenTable) -> TokenProbs:
        """Calibrated probabilities of every row of ``table``."""

    @abstractmethod
    def transform_logits(self, logits: Any, context: dict[str, Any] | None = None) -> Any:
        """Calibrated logits ``[N, V]`` (same type, device and dtype as the input).

        ``context``: optional dict with ``"position"`` (one int per row), group values
        (``{group_name: value or one value per row}``) and ``"features"`` ``[N, F]``.
        """

    def confidence(self, table: TokenTable) -> np.ndarray:
        """Calibrated top-1 probability of each row."""
        return self.token_probs(table).confidence

    @property
    def fitted(self) -> bool:
        return True

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ValidationError(f"{type(self).__name__} is not fitted: call fit(table) first")

    # -- persistence ---------------------------------------------------------------------------

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """JSON-ready parameters (numbers, strings, lists, dicts)."""

    @classmethod
    @abstractmethod
    def _from_state(cls, state: dict[str, Any]) -> Calibrator:
        """Rebuild from :meth:`_state`; raise KeyError/TypeError/ValueError on a bad state."""

    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {"format": _FORMAT, "schema_version": SCHEMA_VERSION, "tokcal_version": __version__,
                "type": self.type_name, **self._state()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "calibrator") -> Calibrator:
        """Rebuild any calibrator from its dict; ``cls`` may be the base class or the exact type."""
        if not isinstance(d, dict):
            raise SchemaError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise SchemaError(f"{where}: not a tokcal calibrator (format {d.get('format')!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(f"{where}: calibrator schema version {d.get('schema_version')!r}; "
                              f"this tokcal reads {SCHEMA_VERSION}")
        kind = d.get("type")
        target = _REGISTRY.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise SchemaError(f"{where}: unknown calibrator type {kind!r}; known: {sorted(_REGISTRY)}")
        if cls is not Calibrator and not issubclass(target, cls):
            raise SchemaError(f"{where}: holds a {kind!r} calibrator, not {cls.type_name or cls.__name__!r}")
        state = {k: v for k, v in d.items() if k not in ("format", "schema_version", "tokcal_version", "type")}
        try:
            return target._from_state(state)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            if isinstance(e, SchemaError):
                raise
            raise SchemaError(f"{where}: malformed {kind!r} calibrator ({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temp file beside ``path``, then rename). Returns the path."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibrator:
        return load_calibrator(path, expect=cls)

    def __repr__(self) -> str:
        if not self.fitted:
            return f"{type(self).__name__}(unfitted)"
        short = {k: v for k, v in self._state().items() if not isinstance(v, list | dict)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in short.items())})"


def load_calibrator(path: str | os.PathLike, expect: type[Calibrator] | None = None) -> Calibrator:
    """Read any calibrator saved by :meth:`Calibrator.save`, dispatching on its ``"type"``.

    A missing, truncated, non-JSON or foreign file raises :class:`~tokcal.errors.SchemaError`
    naming the file.
    """
    return (expect or Calibrator).from_dict(read_json(path, "calibrator file"), where=str(path))


# ----------------------------------------------------------------------------------------------
# helpers shared by the calibrators
# ----------------------------------------------------------------------------------------------


def is_tensor(x: Any) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def check_logits(logits: Any) -> tuple[int, int]:
    """Shape ``(N, V)`` of a 2-D logits array/tensor, else a ValidationError."""
    shape = tuple(logits.shape)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ValidationError(f"logits: expected a non-empty 2-D array [tokens, vocab], got shape {shape}")
    return shape


def as_rows(values: Any, n: int, what: str, dtype: Any = np.float64) -> np.ndarray:
    """A scalar or per-row array broadcast to shape ``(n,)``."""
    arr = np.asarray(values.detach().cpu().numpy() if is_tensor(values) else values)
    if arr.ndim == 0:
        arr = np.full(n, arr.item())
    if arr.shape != (n,):
        raise ValidationError(f"context['{what}']: expected a scalar or {n} values, got shape {arr.shape}")
    return arr.astype(dtype) if dtype is not None else arr


def scale_logits(logits: Any, temperature: np.ndarray) -> Any:
    """``logits / T`` row-wise for numpy or torch input (same device and dtype)."""
    t = np.asarray(temperature, dtype=np.float64).reshape(-1, 1)
    if is_tensor(logits):
        import torch

        return logits / torch.as_tensor(t, dtype=logits.dtype, device=logits.device)
    arr = np.asarray(logits)
    return (arr / t).astype(arr.dtype, copy=False)


def labeled_rows(table: TokenTable, what: str) -> TokenTable:
    """The labelled rows of ``table`` (a ValidationError if there are none)."""
    mask = table.labeled
    if not mask.any():
        raise ValidationError(f"{what}: the table has no labelled rows (all labels are -1)")
    return table if mask.all() else table.select(mask)


def finite_number(x: Any, name: str) -> float:
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return v
