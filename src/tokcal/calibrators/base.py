"""The calibrator protocol and its JSON persistence.

Every calibrator turns a :class:`~tokcal.table.TokenTable` into calibrated per-token probabilities
(:meth:`Calibrator.token_probs`, what :func:`tokcal.evaluate` reads) and raw logits into calibrated
logits (:meth:`Calibrator.transform_logits`, numpy arrays or torch tensors, for decoding). State is
saved as JSON numbers with a schema version — never pickle — and written atomically;
:func:`load_calibrator` reads any of them back by its ``"type"``.
"""

from __future__ import annotations

import inspect
import json
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
from ..validation import Doc, Int, Params, check_logit_array, check_params, validate_doc

#: version 2 saves the settings (constructor arguments) in ``"settings"``, apart from the learned state;
#: version 1 files (settings mixed into the state) still load, as fitted calibrators with default settings
SCHEMA_VERSION = 2
READ_VERSIONS = (1, 2)
_FORMAT = "tokcal-calibrator"
_ENVELOPE = ("format", "schema_version", "tokcal_version", "type")
_REGISTRY: dict[str, type[Calibrator]] = {}


class CalibratorDoc(Doc):
    """Schema of a calibrator file; each calibrator declares its own (settings + learned state).

    Subclasses type ``settings`` with their settings model and add the learned values; cross-field checks
    (a learned value inside the settings' bounds, arrays of matching lengths) are ``model_validator``s,
    so a file is validated in one place before any state is set.
    """

    format: str
    schema_version: Int
    tokcal_version: str | None = None
    type: str
    settings: Params = Params()


class Calibrator(ABC):
    """Base class: ``fit(table) -> self``, ``transform_logits``, ``token_probs``, ``to_dict``/``from_dict``.

    Settings and learned state are kept apart (scikit-learn's estimator convention): the constructor
    arguments are the *settings*, declared by the ``Params`` model of the class and validated there
    (:func:`tokcal.validation.check_params`); they are read as attributes, changed with
    :meth:`set_params` (or by assigning the attribute, validated the same way) and never changed by
    :meth:`fit`. What :meth:`fit` learns is the *state*. The JSON holds both: ``"settings"`` and the
    learned values beside it, so a loaded calibrator refits exactly like the original.

    Subclasses set ``type_name`` (the ``"type"`` written to JSON), ``Params`` (settings), ``Doc`` (the
    schema of the whole file), ``preserves_argmax`` (True when the calibrated argmax always equals the
    model's argmax), and implement :meth:`fit`, :meth:`token_probs`, :meth:`transform_logits`,
    :meth:`_state` (learned values, JSON-ready) and :meth:`_load_state` (from a validated ``Doc``).
    """

    type_name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    Doc: ClassVar[type[CalibratorDoc]] = CalibratorDoc
    #: keys that schema version 1 kept at the top level and version 2 keeps in ``"settings"``
    legacy_settings: ClassVar[tuple[str, ...]] = ()
    preserves_argmax: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _REGISTRY[cls.type_name] = cls

    def __init__(self, **params: Any) -> None:
        object.__setattr__(self, "params", check_params(type(self).__name__, self.Params, **params))

    # -- settings ------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The settings (constructor arguments) as a dict."""
        return {k: getattr(self.params, k) for k in type(self.params).model_fields}

    def set_params(self, **params: Any) -> Calibrator:
        """Change settings (validated); returns ``self``. Learned state is kept until the next fit."""
        merged = {**self.get_params(), **params}
        object.__setattr__(self, "params", check_params(type(self).__name__, self.Params, **merged))
        return self

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and name in type(params).model_fields:
            return getattr(params, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).Params.model_fields:
            self.set_params(**{name: value})
        else:
            object.__setattr__(self, name, value)

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
        """Learned values, JSON-ready (numbers, strings, lists, dicts), saved beside ``"settings"``."""

    @abstractmethod
    def _load_state(self, doc: Any) -> None:
        """Set the learned values from a validated ``Doc`` (the settings are already set)."""

    def _settings_json(self) -> dict[str, Any]:
        """The settings saved in ``"settings"`` (nested calibrators, ``exclude=True``, are saved as state)."""
        return self.params.model_dump(mode="json")

    def to_dict(self) -> dict[str, Any]:
        """``{"format", "schema_version", "tokcal_version", "type", "settings": {...}, <learned values>}``."""
        self._require_fitted()
        return {"format": _FORMAT, "schema_version": SCHEMA_VERSION, "tokcal_version": __version__,
                "type": self.type_name, "settings": self._settings_json(), **self._state()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "calibrator") -> Calibrator:
        """Rebuild any calibrator from its dict; ``cls`` may be the base class or the exact type.

        The dict is validated against the type's ``Doc`` schema first; any violation is a
        :class:`~tokcal.errors.SchemaError` naming ``where`` and the field.
        """
        if not isinstance(d, dict):
            raise SchemaError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise SchemaError(f"{where}: not a tokcal calibrator (format {_short(d.get('format'))})")
        version = d.get("schema_version")
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise SchemaError(f"{where}: calibrator schema version {_short(version)}; this tokcal reads "
                              f"{', '.join(map(str, READ_VERSIONS))}")
        kind = d.get("type")
        target = _REGISTRY.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise SchemaError(f"{where}: unknown calibrator type {_short(kind)}; known: {sorted(_REGISTRY)}")
        if cls is not Calibrator and not issubclass(target, cls):
            raise SchemaError(f"{where}: holds a {kind!r} calibrator, not {cls.type_name or cls.__name__!r}")
        if version == 1:
            d = {**{k: v for k, v in d.items() if k not in target.legacy_settings},
                 "settings": {k: d[k] for k in target.legacy_settings if k in d}}
        doc = validate_doc(target.Doc, d, where)
        try:
            return target._from_doc(doc, where)
        except (ValueError, KeyError, TypeError, IndexError) as e:  # a check only the state can make
            if isinstance(e, SchemaError):
                raise
            raise SchemaError(f"{where}: malformed {kind!r} calibrator ({e})") from None

    @classmethod
    def _from_doc(cls, doc: Any, where: str) -> Calibrator:
        """A calibrator with the file's settings and learned state (``doc`` already validated)."""
        cal = cls(**{k: getattr(doc.settings, k) for k in type(doc.settings).model_fields})
        cal._load_state(doc)
        return cal

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

    def _learned_summary(self) -> dict[str, Any]:
        return {k: v for k, v in self._state().items() if isinstance(v, int | float | str) and v is not None}

    def __repr__(self) -> str:
        defaults = {k: f.default for k, f in type(self.params).model_fields.items()}
        order = list(inspect.signature(type(self).__init__).parameters)
        params = sorted(self.get_params().items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        shown = [f"{k}={v!r}" for k, v in params if v != defaults.get(k)]
        text = f"{type(self).__name__}({', '.join(shown)})"
        if not self.fitted:
            return text + " unfitted"
        learned = self._learned_summary()
        return text + (" fitted " + ", ".join(f"{k}={_round(v)!r}" for k, v in learned.items()) if learned else "")


def _round(v: Any) -> Any:
    return float(f"{v:.6g}") if isinstance(v, float) else v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def load_calibrator(path: str | os.PathLike, expect: type[Calibrator] | None = None) -> Calibrator:
    """Read any calibrator saved by :meth:`Calibrator.save`, dispatching on its ``"type"``.

    A missing, truncated, non-JSON, non-finite, foreign or malformed file raises
    :class:`~tokcal.errors.SchemaError` naming the file (and the field).
    """
    return (expect or Calibrator).from_dict(read_json(path, "calibrator file"), where=str(path))


# ----------------------------------------------------------------------------------------------
# helpers shared by the calibrators
# ----------------------------------------------------------------------------------------------


def is_tensor(x: Any) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def check_logits(logits: Any) -> tuple[int, int]:
    """Shape ``(N, V)`` of a 2-D floating-point numpy array or torch tensor, else a ValidationError
    (the same rule for both: integer and boolean logits are refused)."""
    shape = check_logit_array(logits)
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
    """``(z - max_j z_j) / T`` row-wise for numpy or torch input (same device and dtype).

    Subtracting the row maximum leaves ``softmax(z / T)`` unchanged (softmax is shift-invariant) and keeps
    the scaled logits <= 0, so a small T cannot overflow (T = 0.05 on float16 logits of 6e4 would give
    inf); far-below-maximum logits may round to -inf, whose probability is 0 anyway. A row without a
    finite maximum (every id masked) is only divided by T.
    """
    t = np.asarray(temperature, dtype=np.float64).reshape(-1, 1)
    if is_tensor(logits):
        import torch

        top = logits.amax(dim=-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return (logits - top) / torch.as_tensor(t, dtype=logits.dtype, device=logits.device)
    arr = np.asarray(logits)
    top = arr.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0).astype(arr.dtype)
    with np.errstate(over="ignore"):
        return ((arr - top) / t).astype(arr.dtype, copy=False)


def labeled_rows(table: TokenTable, what: str) -> TokenTable:
    """The labelled rows of ``table`` (a ValidationError if it is not a TokenTable or has none)."""
    if not isinstance(table, TokenTable):
        raise ValidationError(f"{what}: expected a TokenTable, got {type(table).__name__}")
    mask = table.labeled
    if not mask.any():
        raise ValidationError(f"{what}: the table has no labelled rows (all labels are -1)")
    return table if mask.all() else table.select(mask)

