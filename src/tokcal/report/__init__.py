"""Reports from evaluations: a self-contained HTML file and diagrams for papers (PNG/SVG/PDF).

The report reads an :class:`~tokcal.evaluation.Evaluation` (or its ``to_dict()``) and never computes a
metric. matplotlib is imported only when a diagram is drawn.
"""

from __future__ import annotations

from .data import load_evaluation
from .html import render_html, write_html
from .plots import confidence_histogram, reliability_diagram, risk_coverage_curve, save_diagrams, save_figure

__all__ = [
    "write_html", "render_html", "save_diagrams", "save_figure", "load_evaluation",
    "reliability_diagram", "confidence_histogram", "risk_coverage_curve",
]
