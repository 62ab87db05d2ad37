"""Split-conformal token sets with a coverage guarantee (Vovk et al. 2005; Angelopoulos & Bates 2021).

Scores on n calibration tokens (probabilities from ``calibrator``, or the model at T = 1):

* ``"lac"`` (Sadinle et al. 2019): ``s = 1 - p(y)``; set = ``{j : 1 - p_j <= q}``.
* ``"aps"`` (Romano et al. 2020, randomised): ``s = sum_{j ranked above y} p_j + u p(y)``, u ~ U(0, 1);
  set = the ids whose score ``cumsum_before_j + u p_j`` is <= q.

``q`` is the ``ceil((n + 1)(1 - alpha))``-th smallest score (infinite when that exceeds n), so for
exchangeable data ``P(y in set) >= 1 - alpha``. Sets are read from the sketch: they can list only the
top-k ids; a row whose set would reach past the k-th id is flagged ``truncated``. For APS a gold label
outside the top-k gets the conservative score 1 (its rank among the tail ids is unknown).

Truncation breaks the guarantee for the sets as listed: a truncated set misses ids that belong to it
(at a threshold near 1 every set is the whole top-k). :meth:`ConformalTokenSets.fit` and
:meth:`~ConformalTokenSets.coverage` then warn (:class:`~tokcal.calibrators.CalibrationWarning`) with the
share of truncated sets, the result says ``"guarantee": False`` with the coverage of the listed sets
beside the nominal one, and the JSON records ``truncated_share`` of the calibration tokens. The cure: a
table collected with a larger top-k (``tokcal collect --top-k``), or a larger alpha.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, InstanceOf

from ..probs import TokenProbs, token_probs
from ..table import TokenTable
from ..validation import Bool, Float, NonNegativeInt, OpenProbability, Params, Probability, Seed
from .base import Calibrator, CalibratorDoc, labeled_rows
from .temperature import CalibrationWarning


class ConformalSettings(Params):
    """``alpha`` in (0, 1): the miscoverage level; ``score``: "lac" or "aps"; ``seed`` of the APS uniforms."""

    alpha: OpenProbability = 0.1
    score: Literal["lac", "aps"] = "lac"
    seed: Seed = 0


class ConformalParams(ConformalSettings):
    calibrator: InstanceOf[Calibrator] | None = Field(default=None, exclude=True)


class ConformalDoc(CalibratorDoc):
    settings: ConformalSettings = ConformalSettings()
    threshold: Annotated[Float, Field(ge=0, le=1 + 1e-9)] | None  # null: +inf (every id is in every set)
    n_calibration: NonNegativeInt = 0
    truncated_share: Probability | None = None
    truncated: Bool | None = None
    calibrator: dict[str, Any] | None = None


class ConformalTokenSets(Calibrator):
    """Prediction sets of token ids at level ``1 - alpha``; probabilities are those of ``calibrator``
    (default: the model at T = 1), which this wrapper does not change."""

    type_name = "conformal"
    Params = ConformalParams
    Doc = ConformalDoc
    legacy_settings = ("alpha", "score", "seed")

    def __init__(self, alpha: float = 0.1, score: str = "lac", *, calibrator: Calibrator | None = None,
                 seed: int = 0) -> None:
        super().__init__(alpha=alpha, score=score, calibrator=calibrator, seed=seed)
        self.threshold: float | None = None
        self.n_calibration = 0
        self.truncated_share: float | None = None

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
        self.truncated_share = float(self.set_mask(lab)[2].mean())
        if self.truncated_share > 0:
            warnings.warn(self._truncation_message(self.truncated_share, "calibration", lab), CalibrationWarning,
                          stacklevel=2)
        return self

    def _truncation_message(self, share: float, which: str, table: TokenTable,
                            listed: float | None = None) -> str:
        k = table.top_ids.shape[1]
        cover = "" if listed is None else f"; the listed sets cover {listed:.1%} of the gold tokens"
        return (f"ConformalTokenSets: {share:.1%} of the {which} sets need more ids than the table's top-k={k} "
                f"and are truncated (threshold {self.threshold:.6g}){cover}: the listed sets do not carry the "
                f"1 - alpha = {1 - self.alpha:.6g} coverage guarantee. Collect the table with a larger top-k "
                f"(tokcal collect --top-k), or use a larger alpha.")

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
        and per value of the group column ``slices``.

        ``coverage``: a gold id counts as covered when its score is within the threshold, also when the
        set reaches past the top-k ids and the gold id is not listed; ``listed_coverage``: the gold id is
        among the listed ids. ``"guarantee"`` is False (with a warning) when any set is truncated: the
        listed sets then do not carry the guarantee (module docstring)."""
        lab = labeled_rows(table, "ConformalTokenSets.coverage")
        ids, member, trunc = self.set_mask(lab)
        covered = self.scores(lab) <= self.threshold  # the gold id is in its set, listed or past the top-k
        listed = (member & (ids == lab.label[:, None])).any(axis=1)
        size = member.sum(axis=1)

        def summary(mask: np.ndarray) -> dict[str, float]:
            return {"n": int(mask.sum()), "coverage": float(covered[mask].mean()),
                    "listed_coverage": float(listed[mask].mean()),
                    "mean_set_size": float(size[mask].mean()), "truncated": float(trunc[mask].mean())}

        overall = summary(np.ones(len(lab), bool))
        out: dict[str, Any] = {"alpha": self.alpha, "target": 1.0 - self.alpha, "score": self.score,
                               "threshold": self.threshold, "guarantee": not trunc.any(), "overall": overall}
        if trunc.any():
            warnings.warn(self._truncation_message(overall["truncated"], "evaluated", lab, overall["listed_coverage"]),
                          CalibrationWarning, stacklevel=2)
        if slices is not None:
            g = lab.group(slices)
            out["slices"] = {slices: {c: summary(g.codes == i) for i, c in enumerate(g.categories)
                                      if (g.codes == i).any()}}
        return out

    def _state(self) -> dict[str, Any]:
        share = self.truncated_share
        return {"threshold": None if math.isinf(self.threshold) else self.threshold,
                "n_calibration": self.n_calibration, "truncated_share": share,
                "truncated": None if share is None else share > 0,
                "calibrator": None if self.calibrator is None else self.calibrator.to_dict()}

    def _load_state(self, doc: ConformalDoc) -> None:
        self.threshold = math.inf if doc.threshold is None else doc.threshold
        self.n_calibration, self.truncated_share = doc.n_calibration, doc.truncated_share

    @classmethod
    def _from_doc(cls, doc: ConformalDoc, where: str) -> ConformalTokenSets:
        inner = None if doc.calibrator is None else Calibrator.from_dict(doc.calibrator, f"{where}: calibrator")
        s = doc.settings
        cal = cls(s.alpha, s.score, calibrator=inner, seed=s.seed)
        cal._load_state(doc)
        return cal
