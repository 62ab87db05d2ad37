"""TokenProbs: the per-token probabilities every metric reads, from a sketch.

A calibrator's job, seen from the metrics, is to turn a TokenTable into a :class:`TokenProbs`;
the uncalibrated model is ``token_probs(table)`` (temperature 1, exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import sketch
from .table import TokenTable


@dataclass
class TokenProbs:
    """Calibrated per-token quantities for N tokens.

    ``top_ids``/``top_probs`` [N, k]: the k most likely ids and their probabilities, descending; the
    first id is the prediction and ``top_probs[:, 0]`` its confidence (top-label calibrators keep
    the model's prediction first, see :mod:`tokcal.calibrators.toplabel`); ``label_prob`` p_i(y_i)
    (NaN where the label is unknown); ``sum_sq`` sum_j p_ij^2 over the whole vocabulary; ``entropy`` in nats.
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    label: np.ndarray
    label_prob: np.ndarray
    sum_sq: np.ndarray
    entropy: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def predicted(self) -> np.ndarray:
        return self.top_ids[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        return self.top_probs[:, 0]

    @property
    def labeled(self) -> np.ndarray:
        return self.label >= 0

    @property
    def correct(self) -> np.ndarray:
        return self.top_ids[:, 0] == self.label

    def select(self, rows: Any) -> TokenProbs:
        return TokenProbs(self.top_ids[rows], self.top_probs[rows], self.label[rows], self.label_prob[rows],
                          self.sum_sq[rows], self.entropy[rows])


def token_probs(table: TokenTable, temperature: Any = 1.0) -> TokenProbs:
    """Probabilities of ``softmax(z / T)`` from the table's sketch; T scalar or one per row.

    Exact at T = 1; elsewhere within the sketch bound (see :mod:`tokcal.sketch`).
    """
    sk = table.sketch
    st = sketch.temperature_stats(sk, temperature, top_probs=True)
    with np.errstate(invalid="ignore"):
        label_prob = np.exp(st.beta * sk.label_logit.astype(np.float64) - st.logz)
    label_prob = np.where(table.labeled, label_prob, np.nan)
    return TokenProbs(table.top_ids, st.top_probs, table.label, label_prob, st.sum_sq, st.entropy)
