"""Calibrated probabilities at inference time.

* :mod:`tokcal.integrations.hf_generate` — ``CalibratedLogitsProcessor`` for ``model.generate`` and the
  ``tokcal.generate`` one-liner (torch + transformers);
* :mod:`tokcal.integrations.annotate` — per-token confidence of a text or a generation;
* :mod:`tokcal.integrations.abstain` — thresholds meeting a target risk, risk–coverage, ``Abstainer``
  (numpy only).

This package imports neither torch nor transformers; the submodules that need them import them
themselves and are only loaded on use.
"""

from __future__ import annotations
