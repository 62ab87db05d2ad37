"""Split-conformal token sets with a coverage guarantee (Vovk et al. 2005; Angelopoulos & Bates 2021).

Scores on n calibration tokens (probabilities from ``calibrator``, or the model at T = 1):

* ``"lac"`` (Sadinle et al. 2019): ``s = 1 - p(y)``; set = ``{j : 1 - p_j <= q}``.
* ``"aps"`` (Romano et al. 2020, randomised): ``s = sum_{j ranked above y} p_j + u p(y)``, u ~ U(0, 1);
  set = the ids whose score ``cumsum_before_j + u p_j`` is <= q.

``q`` is the ``ceil((n + 1)(1 - alpha))``-th smallest score (infinite when that exceeds n), so for
exchangeable data ``P(y in set) >= 1 - alpha``. Sets are read from the sketch: they can list only the
top-k ids; a row whose set would reach past the k-th id is flagged ``truncated``. For APS a gold label
outside the top-k gets the conservative score 1 (its rank among the tail ids is unknown).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..probs import TokenProbs, token_probs
from ..table import TokenTable
from .base import Calibrator, labeled_rows


class ConformalTokenSets(Calibrator):
    """Prediction sets of token ids at level ``1 - alpha``; probabilities are those of ``calibrator``
    (default: the model at T = 1), which this wrapper does not change."""

    type_name = "conformal"

    def __init__(self, alpha: float = 0.1, score: str = "lac", *, calibrator: Calibrator | None = None,
                 seed: int = 0) -> None:
        if not 0.0 < float(alpha) < 1.0:
            raise ValidationError(f"ConformalTokenSets: alpha must be in (0, 1), got {alpha!r}")
        if score not in ("lac", "aps"):
            raise ValidationError(f"ConformalTokenSets: score must be 'lac' or 'aps', got {score!r}")
        self.alpha = float(alpha)
        self.score = score
        self.calibrator = calibrator
        self.seed = int(seed)
        self.threshold: float | None = None
        self.n_calibration = 0

    @property
    def preserves_argmax(self) -> bool:  # type: ignore[override]
        return True if self.calibrator is None else self.calibrator.preserves_argmax

    @property
    def fitted(self) -> bool:
        return self.threshold is not None

    def _probs(self, table: TokenTable) -> TokenProbs:
        return token_probs(table) if self.calibrator is None else self.calibrator.token_probs(table)

    def _uniforms(self, table: TokenTable) -> np.ndarray:
        # one U(0,1) per row, a function of (seed, sequence_id, position): the same token gets the same u
        # whichever table it sits in
        h = (table.sequence_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + table.position.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(self.seed))
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
        return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)

    def scores(self, table: TokenTable) -> np.ndarray:
        """Nonconformity score of the gold token of each row (NaN where the label is unknown)."""
        tp = self._probs(table)
        if self.score == "lac":
            return 1.0 - tp.label_prob
        u = self._uniforms(table)
        hit = tp.top_ids == tp.label[:, None]
        in_top = hit.any(axis=1)
        rank = hit.argmax(axis=1)
        cum = np.cumsum(tp.top_probs, axis=1) - tp.top_probs
        above = cum[np.arange(len(tp)), rank]
        s = np.where(in_top, above + u * tp.label_prob, 1.0)
        return np.where(tp.labeled, s, np.nan)

    def fit(self, table: TokenTable, **_: Any) -> ConformalTokenSets:
        """Calibrate the threshold on the labelled rows of ``table`` (held out from the model's training)."""
        lab = labeled_rows(table, "ConformalTokenSets.fit")
        s = np.sort(self.scores(lab))
        n = len(s)
        rank = math.ceil((n + 1) * (1.0 - self.alpha))
        self.threshold = float(s[rank - 1]) if rank <= n else math.inf
        self.n_calibration = n
        return self

    def token_probs(self, table: TokenTable) -> TokenProbs:
        return self._probs(table)

    def transform_logits(self, logits: Any, context: dict[str, Any] | None = None) -> Any:
        """Unchanged logits (or those of the wrapped calibrator): conformal sets do not move probabilities."""
        return logits if self.calibrator is None else self.calibrator.transform_logits(logits, context)

    def set_mask(self, table: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(top_ids [N, k], in_set [N, k] bool, truncated [N] bool)``."""
        self._require_fitted()
        tp = self._probs(table)
        if self.score == "lac":
            member = 1.0 - tp.top_probs <= self.threshold
            below_k = 1.0 - tp.top_probs[:, -1] <= self.threshold
        else:
            cum = np.cumsum(tp.top_probs, axis=1) - tp.top_probs
            member = cum + self._uniforms(table)[:, None] * tp.top_probs <= self.threshold
            below_k = np.cumsum(tp.top_probs, axis=1)[:, -1] <= self.threshold
        vocab_k = table.vocab_size > tp.top_ids.shape[1]
        return tp.top_ids, member, below_k & vocab_k

    def sets(self, table: TokenTable) -> list[np.ndarray]:
        """The set of token ids of each row (a list of int arrays, most likely first)."""
        ids, member, _ = self.set_mask(table)
        return [row[m] for row, m in zip(ids, member, strict=True)]

    def coverage(self, table: TokenTable, slices: str | None = None) -> dict[str, Any]:
        """Empirical coverage, mean listed set size and truncated share on the labelled rows, overall
        and per value of the group column ``slices``. A gold id counts as covered when its score is within
        the threshold, also when the set reaches past the top-k ids and the gold id is not listed."""
        lab = labeled_rows(table, "ConformalTokenSets.coverage")
        ids, member, trunc = self.set_mask(lab)
        covered = self.scores(lab) <= self.threshold  # the gold id is in its set, listed or past the top-k
        size = member.sum(axis=1)

        def summary(mask: np.ndarray) -> dict[str, float]:
            return {"n": int(mask.sum()), "coverage": float(covered[mask].mean()),
                    "mean_set_size": float(size[mask].mean()), "truncated": float(trunc[mask].mean())}

        out: dict[str, Any] = {"alpha": self.alpha, "target": 1.0 - self.alpha, "score": self.score,
                               "threshold": self.threshold, "overall": summary(np.ones(len(lab), bool))}
        if slices is not None:
            g = lab.group(slices)
            out["slices"] = {slices: {c: summary(g.codes == i) for i, c in enumerate(g.categories)
                                      if (g.codes == i).any()}}
        return out

    def _state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "score": self.score, "seed": self.seed,
                "threshold": None if math.isinf(self.threshold) else self.threshold,
                "n_calibration": self.n_calibration,
                "calibrator": None if self.calibrator is None else self.calibrator.to_dict()}

    @classmethod
    def _from_state(cls, s: dict[str, Any]) -> ConformalTokenSets:
        inner = None if s.get("calibrator") is None else Calibrator.from_dict(s["calibrator"], "conformal.calibrator")
        cal = cls(float(s["alpha"]), str(s["score"]), calibrator=inner, seed=int(s.get("seed", 0)))
        cal.threshold = math.inf if s["threshold"] is None else float(s["threshold"])
        cal.n_calibration = int(s.get("n_calibration", 0))
        return cal
