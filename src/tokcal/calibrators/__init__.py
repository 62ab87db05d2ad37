"""Calibrators that keep the sequence intact.

Every calibrator: ``fit(table) -> self``, ``transform_logits(logits, context=None)`` (numpy or torch),
``token_probs(table)`` (what :func:`tokcal.evaluate` reads), ``confidence(table)``, ``preserves_argmax``,
``to_dict()``/``from_dict()``, ``save(path)``; :func:`load_calibrator` reads any of them back.
"""

from .adaptive import AdaptiveTemperature
from .base import SCHEMA_VERSION, Calibrator, load_calibrator
from .conformal import ConformalTokenSets
from .group import GroupTemperature
from .hygiene import compare, held_out_metrics, split_by_sequence
from .selective import Selective
from .temperature import CalibrationWarning, Temperature, TemperatureFamily
from .toplabel import BetaCalibration, HistogramBinning, Isotonic, TopLabelCalibrator

__all__ = [
    "Calibrator", "load_calibrator", "SCHEMA_VERSION", "CalibrationWarning",
    "TemperatureFamily", "Temperature", "GroupTemperature", "AdaptiveTemperature",
    "TopLabelCalibrator", "HistogramBinning", "Isotonic", "BetaCalibration",
    "Selective", "ConformalTokenSets",
    "split_by_sequence", "compare", "held_out_metrics",
]
