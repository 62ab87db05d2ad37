"""One temperature per group, shrunk toward the global temperature by empirical Bayes.

For each value g of a group column (domain, sentence type, ...) or of the token type of the
predicted token, the ML inverse temperature beta_g is fitted by Newton (:mod:`.temperature`) with a
cluster-robust standard error s_g (the resampling units of :mod:`tokcal.bootstrap` are the
clusters: sequences, or contiguous blocks of one long document). In log space, l_g = log beta_g is
treated as l_g ~ N(theta_g, v_g), v_g = (s_g / beta_g)^2, with theta_g ~ N(log beta_0, tau^2) around
the global fit beta_0. tau^2 is the DerSimonian–Laird moment estimate
``max(0, (Q - (G - 1)) / (S1 - S2 / S1))`` with ``Q = sum w_g (l_g - lbar)^2``, ``w_g = 1/v_g``,
and the posterior mean ``(l_g / v_g + log beta_0 / tau^2) / (1 / v_g + 1 / tau^2)`` is used, so a
sparse or noisy group stays near the global temperature (DerSimonian & Laird 1986; Efron & Morris 1975).
A group value unseen at fit time gets the global temperature. ``by="freq"``: the frequency bucket of
the predicted token (the ``freq:predicted`` slice's categories, ranked by the reference given to
``fit(table, freq_reference=...)``, :mod:`tokcal.frequency`); the bucket of every id is stored.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from ..bootstrap import resampling_units
from ..errors import ParameterError, ValidationError
from ..table import TokenTable
from ..validation import Bool, NonNegativeFloat, NonNegativeInt, TemperatureValue
from ..vocab import TOKEN_TYPES, Vocabulary
from .base import CalibratorDoc, as_rows, is_tensor, labeled_rows
from .temperature import (
    DEFAULT_BOUNDS,
    CalibrationWarning,
    TemperatureFamily,
    TemperatureFamilyParams,
    _inside,
    cluster_se,
    fit_beta,
    nll_terms,
)

TOKEN_TYPE = "token_type"
FREQ = "freq"
#: one letter per token type (:data:`tokcal.vocab.TOKEN_TYPES`), stored per vocabulary id in the JSON
TYPE_CODES = {"w": "word-initial", "c": "continuation", "p": "punctuation", "d": "digits", "n": "whitespace",
              "s": "special", "e": "eos", "o": "other"}
#: category names of calibrators saved before the token types were unified with tokcal.slices
_LEGACY_NAMES = {"word": "word-initial", "punct": "punctuation", "number": "digits"}


def type_code_string(vocab: Vocabulary) -> str:
    """One letter of :data:`TYPE_CODES` per id: :meth:`tokcal.vocab.Vocabulary.token_types` (the same
    types as the ``type`` slice)."""
    letters = [{v: k for k, v in TYPE_CODES.items()}[t] for t in TOKEN_TYPES]
    return "".join(letters[i] for i in vocab.token_types())


class GroupTemperatureParams(TemperatureFamilyParams):
    """``by``: the group column (or ``"token_type"``); ``shrink``: empirical-Bayes shrinkage."""

    by: Annotated[str, Field(min_length=1)] = "domain"
    shrink: Bool = True


_TYPE_LETTERS = "".join(TYPE_CODES)


class GroupTemperatureDoc(CalibratorDoc):
    settings: GroupTemperatureParams = GroupTemperatureParams()
    global_temperature: TemperatureValue
    temperatures: dict[str, TemperatureValue]
    raw_temperatures: dict[str, TemperatureValue] = {}
    counts: dict[str, NonNegativeInt] = {}
    tau: NonNegativeFloat | None = None
    type_codes: Annotated[str, Field(pattern=f"^[{_TYPE_LETTERS}]*$")] | None = None
    freq_codes: Annotated[str, Field(pattern="^[0-9]*$")] | None = None
    freq_labels: list[str] = []
    freq_reference: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GroupTemperatureDoc:
        bounds = self.settings.bounds
        values = {"global_temperature": self.global_temperature,
                  **{f"temperatures[{k!r}]": v for k, v in self.temperatures.items()}}
        for name, t in values.items():
            if not _inside(t, bounds):
                raise ValueError(f"{name} must lie within settings.bounds [{bounds[0]:g}, {bounds[1]:g}], got {t!r}")
        if self.freq_codes and int(max(self.freq_codes)) >= len(self.freq_labels):
            raise ValueError(f"freq_codes must index freq_labels ({len(self.freq_labels)} labels), "
                             f"got the digit {max(self.freq_codes)}")
        for name in ("raw_temperatures", "counts"):
            keys = set(getattr(self, name))
            if keys and keys != set(self.temperatures):
                raise ValueError(f"{name} must have the groups of temperatures {sorted(self.temperatures)}, "
                                 f"got {sorted(keys)}")
        return self


class GroupTemperature(TemperatureFamily):
    """A temperature per value of ``by`` (a group column, or ``"token_type"`` of the predicted token).

    ``shrink=True`` applies the empirical-Bayes shrinkage above; ``False`` keeps the raw per-group fits.
    At apply time ``context[by]`` gives the group value (one or one per row); with ``by="token_type"``
    the type is read off the argmax of the logits through the stored vocabulary types.
    """

    type_name = "group_temperature"
    Params = GroupTemperatureParams
    Doc = GroupTemperatureDoc
    legacy_settings = ("by", "shrink", "bounds")

    def __init__(self, by: str = "domain", *, shrink: bool = True, bounds: tuple[float, float] = DEFAULT_BOUNDS,
                 seed: int = 0) -> None:
        super().__init__(by=by, shrink=shrink, bounds=bounds, seed=seed)
        self.global_temperature: float | None = None
        self.temperatures: dict[str, float] = {}
        self.raw_temperatures: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.tau: float | None = None
        self.type_codes: str | None = None
        self.freq_codes: str | None = None  # by="freq": one digit per id, an index into freq_labels
        self.freq_labels: list[str] = []
        self.freq_reference: str | None = None

    @property
    def fitted(self) -> bool:
        return self.global_temperature is not None

    # -- groups --------------------------------------------------------------------------------

    def _table_groups(self, table: TokenTable) -> np.ndarray:
        """Group value of every row, as strings."""
        if self.by in table.groups:
            return table.groups[self.by].values().astype(str)
        if self.by == TOKEN_TYPE:
            codes = self.type_codes
            if codes is None:
                if table.vocabulary is None:
                    raise ValidationError("GroupTemperature(by='token_type'): the table has no vocabulary "
                                          "strings and no 'token_type' group column")
                codes = type_code_string(table.vocabulary)
            return _types_of(codes, table.predicted)
        if self.by == FREQ and self.freq_codes is not None:
            return _freq_of(self.freq_codes, self.freq_labels, table.predicted)
        raise ParameterError(f"{{by}} must name a group column of the table ({', '.join(sorted(table.groups))}), "
                             f"got {ParameterError.quote(repr(self.by))}", "GroupTemperature")

    def _lookup(self, values: np.ndarray) -> np.ndarray:
        return np.asarray([self.temperatures.get(str(v), self.global_temperature) for v in values], np.float64)

    def row_temperatures(self, table: TokenTable) -> np.ndarray:
        return self._lookup(self._table_groups(table))

    def logit_temperatures(self, logits: Any, context: dict[str, Any] | None) -> np.ndarray:
        n = int(logits.shape[0])
        context = context or {}
        if self.by in context:
            return self._lookup(as_rows(context[self.by], n, self.by, dtype=None))
        if self.by == TOKEN_TYPE and self.type_codes is not None:
            top = logits.argmax(dim=-1).cpu().numpy() if is_tensor(logits) else np.asarray(logits).argmax(axis=1)
            return self._lookup(_types_of(self.type_codes, top))
        if self.by == FREQ and self.freq_codes is not None:
            top = logits.argmax(dim=-1).cpu().numpy() if is_tensor(logits) else np.asarray(logits).argmax(axis=1)
            return self._lookup(_freq_of(self.freq_codes, self.freq_labels, top))
        warnings.warn(f"GroupTemperature: context has no '{self.by}'; using the global temperature",
                      CalibrationWarning, stacklevel=3)
        return np.full(n, self.global_temperature)

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, table: TokenTable, *, freq_reference: Any = None, **_: Any) -> GroupTemperature:
        """Fit on ``table``; with ``by="freq"``, ``freq_reference`` ranks the ids (None: the default
        reference of :mod:`tokcal.frequency`)."""
        lab = labeled_rows(table, "GroupTemperature.fit")
        if self.by == TOKEN_TYPE and self.by not in lab.groups and lab.vocabulary is not None:
            self.type_codes = type_code_string(lab.vocabulary)
        if self.by == FREQ and self.by not in lab.groups:
            from ..slices import FrequencySlice

            sl = FrequencySlice(on="predicted", reference=freq_reference)
            buckets = sl.id_buckets(table)
            self.freq_codes = "".join(map(str, buckets.tolist()))
            self.freq_labels = list(sl.labels)
            self.freq_reference = f"{sl.used.tag()} ({sl.used.name})"
        elif freq_reference is not None:
            raise ValidationError(f"GroupTemperature(by={self.by!r}): freq_reference is only used with by='freq'")
        values = self._table_groups(lab)
        sk = lab.sketch
        beta0, info0 = fit_beta(sk, self.bounds, seed=self.seed, what="GroupTemperature (global)")
        if info0["at_bound"]:
            warnings.warn(f"GroupTemperature: the global temperature hit a bound ({info0['at_bound']})",
                          CalibrationWarning, stacklevel=2)
        cats, inv = np.unique(values, return_inverse=True)
        units = resampling_units(lab).ids  # the clusters of the standard errors
        logb, var = np.empty(len(cats)), np.empty(len(cats))
        for g in range(len(cats)):
            rows = np.flatnonzero(inv == g)
            part = lab.select(rows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                b, info = fit_beta(part.sketch, self.bounds, beta0=beta0, seed=self.seed,
                                   what=f"GroupTemperature[{cats[g]}]")
            _, grad, hess = nll_terms(part.sketch, np.full(len(part), b))
            se = cluster_se(grad, float(hess.sum()), units[rows])
            logb[g] = math.log(b)
            # a fit stuck at a bound carries no information about where the optimum is
            var[g] = math.inf if info["at_bound"] or len(np.unique(units[rows])) < 2 else (se / b) ** 2
        shrunk, tau2 = _shrink(logb, var, math.log(beta0)) if self.shrink else (logb, math.inf)
        self.global_temperature = 1.0 / beta0
        self.temperatures = {str(c): float(math.exp(-s)) for c, s in zip(cats, shrunk, strict=True)}
        self.raw_temperatures = {str(c): float(math.exp(-s)) for c, s in zip(cats, logb, strict=True)}
        self.counts = {str(c): int(n) for c, n in zip(cats, np.bincount(inv), strict=True)}
        self.tau = float(math.sqrt(tau2)) if math.isfinite(tau2) else None
        return self

    # -- persistence ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"global_temperature": self.global_temperature, "temperatures": self.temperatures,
                "raw_temperatures": self.raw_temperatures, "counts": self.counts, "tau": self.tau,
                "type_codes": self.type_codes, "freq_codes": self.freq_codes, "freq_labels": self.freq_labels,
                "freq_reference": self.freq_reference}

    def _load_state(self, doc: GroupTemperatureDoc) -> None:
        self.global_temperature = doc.global_temperature
        self.temperatures, self.raw_temperatures = dict(doc.temperatures), dict(doc.raw_temperatures)
        self.counts, self.tau, self.type_codes = dict(doc.counts), doc.tau, doc.type_codes
        self.freq_codes, self.freq_labels = doc.freq_codes, list(doc.freq_labels)
        self.freq_reference = doc.freq_reference
        if self.by == TOKEN_TYPE and self.type_codes is not None:  # older files: word/punct/number (same letters)
            for name in ("temperatures", "raw_temperatures", "counts"):
                setattr(self, name, {_LEGACY_NAMES.get(k, k): v for k, v in getattr(self, name).items()})

    def _learned_summary(self) -> dict[str, Any]:
        return {"global_temperature": self.global_temperature, "groups": len(self.temperatures)}


def _check_ids(codes: str, ids: np.ndarray, by: str, what: str) -> None:
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) >= len(codes):
        raise ValidationError(f"GroupTemperature({by}): token id {int(ids.max())} is outside the "
                              f"{len(codes)} ids whose {what} were stored at fit time (another vocabulary?)")


def _types_of(codes: str, ids: np.ndarray) -> np.ndarray:
    _check_ids(codes, ids, "by='token_type'", "types")
    letters = np.frombuffer(codes.encode("ascii"), dtype="S1")
    names = {k.encode(): v for k, v in TYPE_CODES.items()}
    return np.asarray([names[c] for c in letters[np.asarray(ids)]], dtype=object)


def _freq_of(codes: str, labels: list[str], ids: np.ndarray) -> np.ndarray:
    _check_ids(codes, ids, "by='freq'", "frequency buckets")
    digits = np.frombuffer(codes.encode("ascii"), dtype=np.uint8) - ord("0")
    return np.asarray(labels, dtype=object)[digits[np.asarray(ids)]]


def _shrink(logb: np.ndarray, var: np.ndarray, prior: float) -> tuple[np.ndarray, float]:
    """Empirical-Bayes posterior means of log beta_g (DerSimonian–Laird tau^2) and tau^2."""
    w = np.where(np.isfinite(var) & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
    ok = w > 0
    if ok.sum() < 2:
        return np.where(ok, logb, prior), math.inf if ok.sum() == 1 else 0.0
    s1, s2 = w[ok].sum(), (w[ok] ** 2).sum()
    lbar = float((w[ok] * logb[ok]).sum() / s1)
    q = float((w[ok] * (logb[ok] - lbar) ** 2).sum())
    tau2 = max(0.0, (q - (ok.sum() - 1)) / (s1 - s2 / s1))
    if tau2 == 0.0:
        return np.full_like(logb, prior), 0.0
    post = np.where(ok, (logb * w + prior / tau2) / (w + 1.0 / tau2), prior)
    return post, tau2
