"""Diagrams drawn from evaluations: reliability, confidence histogram, risk-coverage.

Drawing is a separate, tiny step after computing (as in relplot): every function here reads the
numbers of ``Evaluation.to_dict()`` and draws them; none computes a metric. Several evaluations (e.g.
before and after each calibrator) are overlaid in one figure. matplotlib is imported lazily with the
Agg backend, so ``import tokcal.report`` stays cheap and works without a display.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from .data import as_dicts, interval, number, write_file

FORMATS = ("png", "svg", "pdf")
DIAGRAMS = ("reliability", "confidence_histogram", "risk_coverage")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


#: Okabe & Ito's colour-blind-safe palette (blue, orange, bluish green, reddish purple, sky blue, vermillion,
#: yellow, black), in the order the evaluations are drawn
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _colors(n: int) -> list[Any]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]



def _accuracy_intervals(ax: Any, bins: list[dict], conf: list, acc: list, color: Any, *, elinewidth: float,
                        capsize: float) -> None:
    """Error bars of each bin's accuracy interval (``acc_ci``) where the bin has one and an accuracy."""
    xs, ys, lo, hi = [], [], [], []
    for b, x, y in zip(bins, conf, acc, strict=True):
        ci = interval(b.get("acc_ci"))
        if ci is not None and y is not None:
            xs.append(x)
            ys.append(y)
            lo.append(max(y - ci[0], 0.0))
            hi.append(max(ci[1] - y, 0.0))
    if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=color, elinewidth=elinewidth, capsize=capsize)

def plain_text(s: str) -> str:
    """``s`` drawn literally by matplotlib: ``$`` escaped so no mathtext is parsed, and a leading ``_``
    (which would hide a legend entry) guarded by a zero-width space."""
    s = str(s).replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def _label(name: str, what: str, value: Any) -> str:
    v = number(value)
    return plain_text(f"{name} ({what} {v:.4f})" if v is not None else name)


def _style(ax: Any, xlabel: str | None, ylabel: str, title: str | None = None, legend: bool = True) -> None:
    """Axis labels, a light grid, a frameless legend and the title: the look shared by every diagram."""
    ax.set_xlim(0, 1)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25)
    if legend:
        ax.legend(loc="best", fontsize=8, frameon=False)
    if title:
        ax.set_title(plain_text(title))


def reliability_diagram(evaluations: Any, title: str | None = "Reliability") -> Any:
    """Per-bin accuracy against mean confidence, with each bin's interval, plus the bin counts.

    Top panel: one line per evaluation through (conf_b, acc_b), vertical bars for the bootstrap
    interval of acc_b, and the diagonal of perfect calibration. Bottom panel: n_b as outlined bars
    spanning each bin [lo, hi) (log scale), so empty and sparse bins are visible.
    """
    evs = as_dicts(evaluations)
    plt = _pyplot()
    fig, (ax, axn) = plt.subplots(
        2, 1, figsize=(5.6, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for (name, ev), color in zip(evs.items(), _colors(len(evs)), strict=True):
        rows = [b for b in ev["bins"] if (b.get("n") or 0) > 0 and number(b.get("confidence")) is not None]
        conf = [number(b["confidence"]) for b in rows]
        acc = [number(b.get("accuracy")) for b in rows]
        ax.plot(conf, acc, marker="o", markersize=3.5, linewidth=1.4, color=color,
                label=_label(name, "ECE", ev["overall"].get("ece")))
        _accuracy_intervals(ax, rows, conf, acc, color, elinewidth=1, capsize=2)
        for b in ev["bins"]:
            lo, hi, n = number(b.get("lo")), number(b.get("hi")), number(b.get("n"))
            if lo is not None and hi is not None and n:
                axn.bar(lo, n, width=hi - lo, align="edge", fill=False, edgecolor=color, linewidth=1.1)
    ax.set_ylim(0, 1)
    _style(ax, None, "accuracy", title)
    axn.set_yscale("log")
    _style(axn, "confidence", "tokens", legend=False)
    return fig


def _bins_of(ev: dict[str, Any], slice_name: str | None, value: str | None) -> list[tuple[float, float, float]]:
    """(confidence, accuracy, n) of the non-empty bins: overall, or of one slice value (``slice_bins``)."""
    if slice_name is None:
        rows = ev.get("bins") or []
        out = [(number(b.get("confidence")), number(b.get("accuracy")), number(b.get("n"))) for b in rows]
    else:
        sb = ((ev.get("slice_bins") or {}).get(slice_name) or {}).get(str(value)) or {}
        out = list(zip(sb.get("confidence") or [], sb.get("accuracy") or [], sb.get("n") or [], strict=False))
        out = [(number(c), number(a), number(n)) for c, a, n in out]
    return [(c, a, n) for c, a, n in out if c is not None and a is not None and n]


def slice_reliability(evaluations: Any, slice_name: str, values: list[str], names: list[str] | None = None,
                      panel: float = 1.9, min_tokens: int = 20) -> Any:
    """Small multiples: one reliability panel per slice value (in ``values`` order), each with a line per
    evaluation in ``names`` (default all; the first grey and dashed, as the baseline), dot area by tokens.
    Bins with fewer than ``min_tokens`` tokens are left out (their accuracy is noise at this size).

    Reads ``slice_bins`` of the evaluations (per slice value: per-bin n, confidence, accuracy)."""
    evs = as_dicts(evaluations)
    names = list(names or evs)
    plt = _pyplot()
    k = max(1, len(values))
    fig, axes = plt.subplots(1, k, figsize=(panel * k + 0.3, panel + 0.55), sharey=True, squeeze=False)
    colors = ["0.45", *_colors(max(1, len(names) - 1))]
    for ax, value in zip(axes[0], values, strict=True):
        ax.plot([0, 1], [0, 1], color="0.75", linestyle=":", linewidth=1)
        for j, name in enumerate(names):
            pts = [pt for pt in _bins_of(evs[name], slice_name, value) if pt[2] >= min_tokens]
            if not pts:
                continue
            total = sum(n for _, _, n in pts)
            ax.plot([c for c, _, _ in pts], [a for _, a, _ in pts], color=colors[j], linewidth=1.3,
                    linestyle="--" if j == 0 and len(names) > 1 else "-", label=plain_text(name))
            ax.scatter([c for c, _, _ in pts], [a for _, a, _ in pts], s=[4 + 60 * n / total for _, _, n in pts],
                       color=colors[j], zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        eces = []
        for name in names[:2]:
            row = next((r for r in (evs[name].get("slices") or {}).get(slice_name, [])
                        if str(r.get("value")) == str(value)), None)
            v = number((row or {}).get("ece"))
            eces.append("–" if v is None else f"{v:.3f}")
        ax.set_title(plain_text(f"{value}\nECE {' → '.join(eces)}"), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.2)
        ax.set_xlabel("confidence", fontsize=7)
    axes[0][0].set_ylabel("accuracy", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def reliability_panels(evaluations: Any, panel: float = 2.6) -> Any:
    """One reliability panel per evaluation (so several never overlap), each with its bins' intervals."""
    evs = as_dicts(evaluations)
    plt = _pyplot()
    k = len(evs)
    fig, axes = plt.subplots(1, k, figsize=(panel * k + 0.3, panel + 0.5), sharey=True, squeeze=False)
    for ax, (name, ev), color in zip(axes[0], evs.items(), _colors(k), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        rows = [b for b in ev["bins"] if (b.get("n") or 0) > 0 and number(b.get("confidence")) is not None
                and number(b.get("accuracy")) is not None]
        xs = [number(b["confidence"]) for b in rows]
        ys = [number(b["accuracy"]) for b in rows]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.3, color=color)
        _accuracy_intervals(ax, rows, xs, ys, color, elinewidth=0.9, capsize=1.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(_label(name, "ECE", ev["overall"].get("ece")), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.2)
        ax.set_xlabel("confidence", fontsize=7)
    axes[0][0].set_ylabel("accuracy", fontsize=7)
    fig.tight_layout()
    return fig


def _single_axes(evaluations: Any) -> tuple[Any, Any, list[tuple[str, dict[str, Any], Any]]]:
    """A one-panel figure, and (name, evaluation dict, colour) for each evaluation to draw on it."""
    evs = as_dicts(evaluations)
    fig, ax = _pyplot().subplots(figsize=(5.6, 3.4))
    return fig, ax, [(name, ev, color) for (name, ev), color in zip(evs.items(), _colors(len(evs)), strict=True)]


def confidence_histogram(evaluations: Any, title: str | None = "Confidence") -> Any:
    """Share of tokens per confidence bin (the evaluation's ``confidence_histogram``), one step line each."""
    fig, ax, series = _single_axes(evaluations)
    drawn = 0
    for name, ev, color in series:
        hist = ev.get("confidence_histogram") or {}
        edges, counts = hist.get("edges") or [], hist.get("counts") or []
        total = sum(c for c in counts if c)
        if len(edges) != len(counts) + 1 or not total:
            continue
        ax.stairs([c / total for c in counts], edges, color=color, linewidth=1.5,
                  label=_label(name, "mean", ev["overall"].get("confidence")))
        drawn += 1
    _style(ax, "confidence of the predicted token", "share of tokens", title, legend=drawn > 0)
    return fig


def risk_coverage_curve(evaluations: Any, title: str | None = "Selective prediction") -> Any:
    """Risk (error rate of the kept tokens) against coverage when keeping the most confident first."""
    fig, ax, series = _single_axes(evaluations)
    drawn = 0
    for name, ev, color in series:
        rc = ev.get("risk_coverage") or {}
        cov, risk = rc.get("coverage") or [], rc.get("risk") or []
        if not cov or len(cov) != len(risk):
            continue
        ax.plot(cov, risk, color=color, linewidth=1.5, label=_label(name, "AURC", rc.get("aurc")))
        drawn += 1
    ax.set_ylim(bottom=0)
    _style(ax, "coverage", "risk (error rate)", title, legend=drawn > 0)
    return fig


_DRAW = {"reliability": reliability_diagram, "confidence_histogram": confidence_histogram,
         "risk_coverage": risk_coverage_curve}


def draw(diagram: str, evaluations: Any) -> Any:
    """The figure of one of :data:`DIAGRAMS` for ``evaluations``."""
    if diagram not in _DRAW:
        raise ValidationError(f"unknown diagram {diagram!r}; expected one of {', '.join(DIAGRAMS)}")
    return _DRAW[diagram](evaluations)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write ``fig`` to ``path`` atomically; the format (png, svg, pdf) comes from the suffix."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValidationError(f"{path}: unsupported figure format {fmt!r}; use one of {', '.join(FORMATS)}")
    write_file(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                                               metadata=_metadata(fmt)))
    return path


def save_diagrams(
    evaluations: Any, out_dir: str | os.PathLike, formats: Iterable[str] = ("png", "svg"), dpi: int = 200
) -> list[Path]:
    """Write every diagram of :data:`DIAGRAMS` as ``out_dir/<diagram>.<format>``; return the paths."""
    evs = as_dicts(evaluations)
    formats = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValidationError(f"unsupported figure format(s) {', '.join(bad)}; use {', '.join(FORMATS)}")
    plt = _pyplot()
    paths = []
    for diagram in DIAGRAMS:
        fig = draw(diagram, evs)
        try:
            paths += [save_figure(fig, Path(out_dir) / f"{diagram}.{fmt}", dpi=dpi) for fmt in formats]
        finally:
            plt.close(fig)
    return paths


def _metadata(fmt: str) -> dict[str, Any] | None:
    """Leave out creation dates so the same evaluation gives the same file."""
    return {"Date": None} if fmt == "svg" else {"CreationDate": None} if fmt == "pdf" else None


def figure_svg(fig: Any, salt: str) -> str:
    """``fig`` as an ``<svg>`` element to inline in HTML: text drawn as paths (no fonts to fetch),
    element ids salted with ``salt`` so several inlined figures never share an id."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata=_metadata("svg"))
    text = buf.getvalue()
    start = text.find("<svg")
    if start < 0:  # pragma: no cover - matplotlib always writes an <svg> root
        raise RuntimeError("matplotlib wrote no <svg> element")
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[start:], flags=re.S)
