"""Selective calibration: apply a calibrator only where the model is unsure.

``Selective(calibrator, threshold)`` changes a token only if its uncalibrated top-1 probability
(T = 1) is below ``threshold``; every other token's probabilities (and logits) stay bit-identical.
By default the inner calibrator is fitted on those low-confidence tokens only (``fit_on="below"``),
the population it will be applied to.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, InstanceOf

from ..errors import ValidationError
from ..probs import TokenProbs, token_probs
from ..table import TokenTable
from ..validation import Float, Params
from .base import Calibrator, CalibratorDoc, check_logits, is_tensor, labeled_rows


def logit_confidence(logits: Any) -> np.ndarray:
    """Top-1 probability at T = 1 of each row of raw logits (numpy or torch), float64 numpy."""
    if is_tensor(logits):
        import torch

        z = logits.detach()
        z = z.double() if z.device.type == "cpu" else z.float()
        return (z.max(dim=-1).values - torch.logsumexp(z, dim=-1)).exp().double().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    mx = z.max(axis=1)
    return np.exp(-np.log(np.exp(z - mx[:, None]).sum(axis=1)))


class SelectiveSettings(Params):
    """``threshold`` in (0, 1]: rows with confidence below it are calibrated; ``fit_on``: "below" or "all"."""

    threshold: Annotated[Float, Field(gt=0, le=1)] = 0.5
    fit_on: Literal["below", "all"] = "below"


class SelectiveParams(SelectiveSettings):
    """The settings and the wrapped calibrator (saved as ``"calibrator"``, its own file inside this one)."""

    calibrator: InstanceOf[Calibrator] = Field(exclude=True)


class SelectiveDoc(CalibratorDoc):
    settings: SelectiveSettings = SelectiveSettings()
    calibrator: dict[str, Any]


class Selective(Calibrator):
    """Wrap ``calibrator``; only rows with confidence < ``threshold`` are calibrated."""

    type_name = "selective"
    Params = SelectiveParams
    Doc = SelectiveDoc
    legacy_settings = ("threshold", "fit_on")

    def __init__(self, calibrator: Calibrator, threshold: float = 0.5, *, fit_on: str = "below") -> None:
        super().__init__(calibrator=calibrator, threshold=threshold, fit_on=fit_on)

    @property
    def preserves_argmax(self) -> bool:  # type: ignore[override]
        return self.calibrator.preserves_argmax

    @property
    def fitted(self) -> bool:
        return self.calibrator.fitted

    def fit(self, table: TokenTable, **kwargs: Any) -> Selective:
        lab = labeled_rows(table, "Selective.fit")
        if self.fit_on == "below":
            below = token_probs(lab).confidence < self.threshold
            if not below.any():
                raise ValidationError(f"Selective.fit: no labelled token has confidence below {self.threshold}")
            lab = lab.select(below)
        self.calibrator.fit(lab, **kwargs)
        return self

    def token_probs(self, table: TokenTable) -> TokenProbs:
        self._require_fitted()
        base = token_probs(table)
        rows = np.flatnonzero(base.confidence < self.threshold)
        if rows.size == 0:
            return base
        inner = self.calibrator.token_probs(table.select(rows))
        out = TokenProbs(base.top_ids.copy(), base.top_probs.copy(), base.label, base.label_prob.copy(),
                         base.sum_sq.copy(), base.entropy.copy())
        for name in ("top_ids", "top_probs", "label_prob", "sum_sq", "entropy"):
            getattr(out, name)[rows] = getattr(inner, name)
        return out

    def transform_logits(self, logits: Any, context: dict[str, Any] | None = None) -> Any:
        self._require_fitted()
        n, _ = check_logits(logits)
        rows = np.flatnonzero(logit_confidence(logits) < self.threshold)
        if rows.size == 0:
            return logits.clone() if is_tensor(logits) else np.array(logits, copy=True)
        sub_ctx = _select_context(context, rows, n)
        if is_tensor(logits):
            import torch

            idx = torch.as_tensor(rows, device=logits.device)
            out = logits.clone()
            out[idx] = self.calibrator.transform_logits(logits[idx], sub_ctx).to(logits.dtype)
            return out
        out = np.array(logits, copy=True)
        out[rows] = self.calibrator.transform_logits(out[rows], sub_ctx)
        return out

    def _state(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator.to_dict()}

    def _load_state(self, doc: SelectiveDoc) -> None:  # the state is the wrapped calibrator's
        pass

    @classmethod
    def _from_doc(cls, doc: SelectiveDoc, where: str) -> Selective:
        inner = Calibrator.from_dict(doc.calibrator, where=f"{where}: calibrator")
        return cls(inner, doc.settings.threshold, fit_on=doc.settings.fit_on)

    def _learned_summary(self) -> dict[str, Any]:
        return {}  # the wrapped calibrator's repr (a setting) shows what it learned


def _select_context(context: dict[str, Any] | None, rows: np.ndarray, n: int) -> dict[str, Any] | None:
    """Rows of every per-row entry of ``context`` (scalars pass through)."""
    if not context:
        return context
    out = {}
    for k, v in context.items():
        shape = getattr(v, "shape", None)
        if shape is None and isinstance(v, list | tuple):
            v, shape = np.asarray(v), (len(v),)
        if shape and shape[0] == n:
            out[k] = v[rows] if not is_tensor(v) else v[np.asarray(rows)]
        else:
            out[k] = v
    return out
