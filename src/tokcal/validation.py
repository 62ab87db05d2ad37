"""One validation layer: the parameters of calibrators, ``evaluate`` and slices, and every JSON file tokcal reads.

Everything is declared as a pydantic model (Pydantic v2, strict mode) rather than checked by hand:

* **Parameters** (constructor arguments of a calibrator, the arguments of :func:`tokcal.evaluate`, slice
  settings) are a :class:`Params` model; :func:`check_params` validates them and raises
  :class:`~tokcal.errors.ParameterError` (a :class:`~tokcal.errors.ValidationError`).
* **Files** (calibrator, abstainer, evaluation, dataset manifest) are parsed by the one strict JSON reader
  (:func:`tokcal._io.read_json`: no ``NaN``/``Infinity``, no overflowing numbers, bounded nesting) and
  validated by :func:`validate_doc` against one :class:`Doc` model per format; a bad file raises
  :class:`~tokcal.errors.SchemaError`.

Types are strict: ``true`` is not a number, ``"1.5"`` is not a number, ``2.5`` is not an integer, a string
is not a boolean; NaN and infinity are never numbers (where a format allows "undefined" it is ``null``).
numpy scalars are accepted as parameters (``np.int64(3)`` is an integer).

One message format for every violation::

    <where>: <field> <requirement>, got <value>
    GroupTemperature: bounds must satisfy 0 < T_min < T_max, got (5, 1)
    evaluate: bins must be an integer, got 2.5
    cal.json: settings.seed must be an integer, got true

``<where>`` names the owner (a class or function) or the file; ``<field>`` is a dotted path into the
parameters or the document (``overall.ece``, ``bins[3].n``). Several violations are joined by ``"; "``.
A parameter error keeps its fields (:class:`~tokcal.errors.ParameterError`): the command line renders
the same message with its flags and without the owner, ``--bins must be an integer, got 2.5``.

Limits that keep a tiny input from exhausting memory or overflowing: :data:`MAX_BINS` reliability bins,
:data:`MAX_BOOTSTRAP` resamples, temperatures within :data:`TEMPERATURE_LIMITS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as _PydanticError

from .errors import ParameterError, SchemaError, ValidationError

__all__ = [
    "Params", "Doc", "check_params", "validate_doc", "format_errors", "error_template",
    "Int", "Float", "PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Probability",
    "OpenProbability", "Seed", "Str", "Bool", "Number", "TemperatureBounds", "TemperatureValue",
    "MAX_BINS", "MAX_BOOTSTRAP", "TEMPERATURE_LIMITS", "EvaluationSettings", "EvaluationDoc", "AbstainerDoc",
    "ManifestDoc", "FrequencyCountsDoc", "validate_evaluation", "validate_abstainer", "validate_manifest",
    "Binning", "Bins", "Edges",
    "EvaluateParams", "SamplingParams", "SliceParams", "SketchParams", "check_logit_array",
]

#: most reliability bins any metric or file may ask for (a ``bins`` of 1e9 would allocate tens of GiB)
MAX_BINS = 10_000
#: the widest temperature range any bounds may span: beyond it ``z / T`` overflows float32 logits or
#: flattens every distribution to uniform
TEMPERATURE_LIMITS = (1e-3, 1e3)

M = TypeVar("M", bound=BaseModel)


# -- the message format ---------------------------------------------------------------------------


def _show(value: Any, limit: int = 80) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(loc: tuple[Any, ...]) -> str:
    """The field at ``loc`` as a :class:`~tokcal.errors.ParameterError` template: the top-level name is a
    parameter (``{bins}``, ``{edges}[3]``, ``{overall}.ece``), so a caller can spell it as a flag."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_tag(str(part)):  # a pydantic schema tag (union member, validator), not a field
            continue
        else:
            out += f".{ParameterError.quote(part)}" if out else "{" + str(part) + "}"
    return out


_TAGS = {"float", "int", "str", "bool", "none", "list", "dict", "tuple", "literal", "is-instance", "model"}


def _is_tag(part: str) -> bool:
    return "[" in part or "(" in part or part in _TAGS or part.startswith("literal")


_REWRITES = (
    ("Input should be a valid number", "must be a number"),
    ("Input should be a valid integer", "must be an integer"),
    ("Input should be a valid boolean", "must be true or false"),
    ("Input should be a valid string", "must be a string"),
    ("Input should be a valid list", "must be a list"),
    ("Input should be a valid tuple", "must be a list"),
    ("Input should be a valid dictionary", "must be an object"),
    ("Input should be an object", "must be an object"),
    ("Input should be a finite number", "must be a finite number"),
    ("Input should be None", "must be null"),
    ("Input should be ", "must be "),
    ("Field required", "is required"),
    ("Extra inputs are not permitted", "is not a known field"),
    ("Value error, ", ""),
    ("Assertion failed, ", ""),
)


class _Typed(str):
    """A value as the user typed it (command-line text): shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _message(err: Mapping[str, Any]) -> str:
    """One violation as a :class:`~tokcal.errors.ParameterError` template: ``{field} <requirement>, got <value>``."""
    msg = str(err["msg"])
    for old, new in _REWRITES:
        if msg.startswith(old):
            msg = new + msg[len(old):]
            break
    msg = msg.replace("List should have", "must have").replace("Tuple should have", "must have")
    if msg.startswith(("List should", "Tuple should", "String should", "Dictionary should")):
        msg = "must" + msg.split("should", 1)[1]
    for why in (", unable to parse", ", got a number with a fractional part"):  # the value itself follows
        msg = msg.split(why, 1)[0]
    msg = ParameterError.quote(msg)
    field = _path(tuple(err.get("loc", ())))
    if err.get("type") == "missing":
        return f"{field} {msg}"
    if not field:  # a check across fields: the message names the fields and values itself
        return msg
    return f"{field} {msg}, got {ParameterError.quote(_show(err.get('input')))}"


def error_template(exc: _PydanticError, limit: int = 3, field: str | None = None) -> str:
    """The first ``limit`` violations of ``exc`` as one :class:`~tokcal.errors.ParameterError` template
    (``{field} <requirement>, got <value>``, joined by ``"; "``). ``field``: the parameter a single value
    was validated as (its violations have no field of their own); its text inputs are shown as typed."""
    seen: list[str] = []
    for e in exc.errors(include_url=False):
        if field is not None:
            value = e.get("input")
            e = {**e, "loc": (field, *e.get("loc", ())), "input": _Typed(value) if isinstance(value, str) else value}
        m = _message(e)
        if m not in seen:
            seen.append(m)
    more = f" (and {len(seen) - limit} more)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + more


def format_errors(where: str, exc: _PydanticError, limit: int = 3) -> str:
    """``"<where>: <field> <requirement>, got <value>"`` for the first ``limit`` violations."""
    return ParameterError(error_template(exc, limit), where).render()


# -- models ---------------------------------------------------------------------------------------


class Params(BaseModel):
    """Base of every parameter set: strict types, no unknown names, no NaN/infinity."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True,
                              arbitrary_types_allowed=True)


class Doc(BaseModel):
    """Base of every file schema: strict JSON types, no NaN/infinity; unknown keys are kept (newer writers)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


def check_params(where: str, model: type[M], /, **values: Any) -> M:
    """Validate ``values`` against ``model``; a :class:`~tokcal.errors.ParameterError` (a ValidationError) in
    the one format, its fields the parameters (so the command line names them as its flags)."""
    try:
        return model.model_validate(values)
    except _PydanticError as e:
        raise ParameterError(error_template(e), where) from None


def validate_doc(model: type[M], data: Any, where: str) -> M:
    """Validate a parsed JSON document against ``model``; a :class:`~tokcal.errors.SchemaError` naming
    ``where`` (the file) and the field."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {_json_kind(data)}")
    try:
        return model.model_validate(data)
    except _PydanticError as e:
        raise SchemaError(format_errors(where, e)) from None
    except RecursionError:
        raise SchemaError(f"{where}: nested too deeply") from None


def _json_kind(x: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


# -- reusable field types -------------------------------------------------------------------------


def _from_numpy(v: Any) -> Any:
    if isinstance(v, np.generic) and not isinstance(v, np.bool_ | np.str_):
        return v.item()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _from_numpy(v[()])
    return v


def _as_tuple(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return tuple(_from_numpy(x) for x in v) if isinstance(v, list | tuple) else v


Int = Annotated[int, BeforeValidator(_from_numpy)]
Float = Annotated[float, BeforeValidator(_from_numpy)]
Bool = Annotated[bool, BeforeValidator(lambda v: bool(v) if isinstance(v, np.bool_) else v)]
Str = str
PositiveInt = Annotated[Int, Field(ge=1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]
Probability = Annotated[Float, Field(ge=0, le=1)]
OpenProbability = Annotated[Float, Field(gt=0, lt=1)]
Seed = Annotated[Int, Field(ge=0, lt=2**63)]
#: a finite number or null ("undefined" in a saved result)
Number = Float | None
Binning = Literal["width", "mass"]


def _check_bounds(v: tuple[float, float]) -> tuple[float, float]:
    lo, hi = v
    if not 0 < lo < hi:
        raise ValueError("must satisfy 0 < T_min < T_max")
    a, b = TEMPERATURE_LIMITS
    if lo < a or hi > b:
        raise ValueError(f"must lie within [{a:g}, {b:g}]")
    return v


#: ``(T_min, T_max)``: 0 < T_min < T_max, both within :data:`TEMPERATURE_LIMITS`
TemperatureBounds = Annotated[tuple[Float, Float], BeforeValidator(_as_tuple), AfterValidator(_check_bounds)]
#: a positive temperature within :data:`TEMPERATURE_LIMITS`
TemperatureValue = Annotated[Float, Field(ge=TEMPERATURE_LIMITS[0], le=TEMPERATURE_LIMITS[1])]


def _increasing(v: tuple[int, ...]) -> tuple[int, ...]:
    if not v or any(b <= a for a, b in zip(v, v[1:], strict=False)):
        raise ValueError("must be a non-empty, strictly increasing list")
    return v


#: a positive integer at most :data:`MAX_BINS`
Bins = Annotated[Int, Field(ge=1, le=MAX_BINS)]
#: bucket edges of a slice (frequency ranks, positions): positive, strictly increasing
Edges = Annotated[tuple[PositiveInt, ...], BeforeValidator(_as_tuple), AfterValidator(_increasing)]
#: most bootstrap resamples (each is a row of a [R, units] weight matrix)
MAX_BOOTSTRAP = 10_000


# -- parameters of evaluate and of the slices -----------------------------------------------------


class EvaluateParams(Params):
    """The arguments of :func:`tokcal.evaluate` apart from the table, calibrator and slices."""

    bins: Bins = 15
    binning: Binning = "width"
    bootstrap: Annotated[Int, Field(ge=0, le=MAX_BOOTSTRAP)] = 200
    seed: Seed = 0
    worst: NonNegativeInt = 20
    classwise_top: PositiveInt = 100
    unit: Literal["auto", "sequence", "block"] = "auto"
    block_length: PositiveInt | None = None


class SamplingParams(Params):
    """Decoding settings of ``tokcal generate`` (on top of the calibrated probabilities)."""

    top_p: Annotated[Float, Field(gt=0, le=1)] = 1.0
    top_k: NonNegativeInt = 0
    temperature: PositiveFloat = 1.0
    max_new_tokens: PositiveInt = 50
    seed: Seed = 0


class SliceParams(Params):
    """Settings of a slice: the token it reads (``on``: the gold or the predicted token) and its edges."""

    on: Literal["gold", "predicted"] = "gold"
    edges: Edges | None = None


def check_logit_array(logits: Any, where: str = "logits") -> tuple[int, ...]:
    """Shape of a floating-point numpy array or torch tensor; anything else (a list, integer or boolean
    values, numpy or torch alike) is a :class:`~tokcal.errors.ValidationError`."""
    if type(logits).__module__.startswith("torch") and hasattr(logits, "is_floating_point"):
        floating = bool(logits.is_floating_point())
    elif isinstance(logits, np.ndarray):
        floating = bool(np.issubdtype(logits.dtype, np.floating))
    else:
        raise ValidationError(f"{where}: expected a numpy array or torch tensor [tokens, vocab], got "
                              f"{type(logits).__name__} (convert it with np.asarray(..., dtype=np.float32))")
    if not floating:
        raise ValidationError(f"{where}: expected floating point values, got dtype {logits.dtype}")
    return tuple(logits.shape)


class SketchParams(Params):
    """``top_k`` ids kept per row and the rows sketched per chunk."""

    top_k: PositiveInt
    chunk_rows: PositiveInt = 2048


# -- small file schemas (other modules extend them by subclassing) --------------------------------


class EvaluationResampling(Doc):
    """``settings.resampling``: the bootstrap's unit (sequences, or blocks of ``block_length`` positions)."""

    unit: Literal["sequence", "block"]
    block_length: PositiveInt | None = None
    n_units: NonNegativeInt | None = None


class EvaluationSettings(Doc):
    """``settings`` of an Evaluation JSON: the parts a comparison or a rerun reads."""

    bins: Bins
    binning: Binning
    bootstrap: NonNegativeInt
    seed: Int
    resampling: EvaluationResampling | None = None


#: ``[lo, hi]`` of an interval, each finite or null
Interval = Annotated[tuple[Number, Number], BeforeValidator(_as_tuple)]


class EvaluationOverall(Doc):
    """``overall``: every metric a finite number or null (undefined), ``ci`` the intervals."""

    __pydantic_extra__: dict[str, Number] = Field(init=False)
    n: NonNegativeInt
    n_sequences: NonNegativeInt
    accuracy: Number
    confidence: Number
    ece: Number
    signed_gap: Number
    nll: Number
    brier: Number
    ci: dict[str, Interval | None] = {}


class EvaluationBin(Doc):
    """One reliability-diagram bin."""

    lo: Probability
    hi: Probability
    n: NonNegativeInt
    confidence: Number
    accuracy: Number
    gap: Number
    acc_ci: Interval | None


class EvaluationSliceRow(Doc):
    """One value of a slice."""

    value: str
    n: NonNegativeInt
    accuracy: Number
    confidence: Number
    ece: Number
    signed_gap: Number
    gap_ci: Interval | None
    significant: Bool


class EvaluationContext(Doc):
    """One context of a worst token: the preceding text, the predicted token and the gold token."""

    before: str
    token: str
    gold: str | None = None


class EvaluationToken(Doc):
    """One of the worst predicted tokens."""

    id: NonNegativeInt
    token: str | None
    n: NonNegativeInt
    accuracy: Number
    confidence: Number
    gap: Number
    ece_share: Number
    contexts: list[EvaluationContext | str]  # strings: files written before the contexts were split


class EvaluationDoc(Doc):
    """``Evaluation.to_dict()``: the keys every reader relies on (``schema_version`` absent: version 1)."""

    schema_version: PositiveInt = 1
    signature: str
    settings: EvaluationSettings
    overall: EvaluationOverall
    signatures: dict[str, str]
    bins: list[EvaluationBin]
    slices: dict[str, list[EvaluationSliceRow]]
    worst_tokens: list[EvaluationToken]


def validate_evaluation(d: Any, where: str = "evaluation") -> dict[str, Any]:
    """``d`` checked against :class:`EvaluationDoc`; returns ``d`` itself."""
    validate_doc(EvaluationDoc, d, where)
    return d


class AbstainerDoc(Doc):
    """An :class:`~tokcal.integrations.abstain.Abstainer` file. ``threshold`` null means +inf (abstain on
    every token); ``target_risk``/``coverage`` null mean undefined."""

    type: Literal["abstainer"]
    threshold: Probability | None
    target_risk: Annotated[Float, Field(ge=0, lt=1)] | None = None
    coverage: Probability | None = None


def validate_abstainer(d: Any, where: str = "abstainer") -> AbstainerDoc:
    return validate_doc(AbstainerDoc, d, where)


class ManifestDocument(Doc):
    id: str
    hash: str
    sequence_id: Int
    rows: NonNegativeInt = 0


class ManifestPart(Doc):
    file: Annotated[str, Field(pattern=r"^[^/\\]+\.parquet$")] | None
    rows: NonNegativeInt
    documents: list[ManifestDocument]


class ManifestDoc(Doc):
    """``manifest.json`` of a dataset directory."""

    format: Literal["tokcal-dataset"]
    version: Int
    settings_hash: str
    settings: dict[str, Any]
    parts: list[ManifestPart]


class FrequencyCountsDoc(Doc):
    """A frequency counts file: ``{"counts": [count per id]}``, non-negative finite numbers (other keys kept)."""

    counts: list[NonNegativeFloat]


def validate_manifest(d: Any, where: str = "manifest") -> ManifestDoc:
    return validate_doc(ManifestDoc, d, where)
