"""tokcal.metrics: the calibration metrics of docs/architecture.md, on numpy arrays, plus mergeable accumulators.

Functional forms validate their inputs (ValidationError naming the argument and the first bad
index), sum in float64 and are defined on one token or one class (never NaN). Each module's
docstring gives the formula, the bin convention and the reference it matches.
"""

from __future__ import annotations

from .accumulators import BinnedAccumulator, ScoreAccumulator
from .binned import ReliabilityBins, ece, mass_edges, over_under, reliability_bins, width_edges
from .classwise import ClasswiseCalibration, classwise_calibration, classwise_ece
from .scores import brier, nll, top_label_brier
from .selective import aurc, risk_coverage
from .signature import DEFINITION_VERSIONS, check_same_signature, definition_differences, parse_signature, signature
from .smooth import smooth_ece, smooth_reliability
from .tokens import per_token_reliability

__all__ = [
    "ece", "reliability_bins", "ReliabilityBins", "over_under", "width_edges", "mass_edges",
    "smooth_ece", "smooth_reliability", "brier", "top_label_brier", "nll",
    "classwise_ece", "classwise_calibration", "ClasswiseCalibration", "per_token_reliability",
    "risk_coverage", "aurc", "BinnedAccumulator", "ScoreAccumulator",
    "signature", "parse_signature", "check_same_signature", "definition_differences", "DEFINITION_VERSIONS",
]
