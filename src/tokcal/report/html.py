"""One self-contained HTML report from one or more evaluations (the report reads an Evaluation).

The file needs nothing else: the stylesheet is inlined, the diagrams are inline SVG (text drawn as
paths, so no fonts are fetched), there is no script, and every string that comes from data (names,
token strings, contexts, signatures) is HTML-escaped. Sections: overview of all evaluations with
95 % intervals, diagrams, slices (rows whose signed-gap interval excludes 0 are marked), worst tokens
with example contexts, a passage shaded by confidence, and the signature of every number.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .._version import __version__
from .data import as_dicts, interval, interval_notes, number, slice_definition, unit_text, write_file
from .plots import DIAGRAMS, _pyplot, draw, figure_svg

_CAPTIONS = {
    "reliability": "Accuracy against confidence per bin, with 95 % bootstrap intervals (clustered by "
                   "sequence); the dashed diagonal is perfect calibration. Lower panel: tokens per bin.",
    "confidence_histogram": "How confident the model is: share of tokens per confidence bin.",
    "risk_coverage": "Error rate of the tokens kept when keeping the most confident first; "
                     "a lower curve (smaller AURC) ranks errors better.",
}
_OVERVIEW = (  # (key in overall, header, digits)
    ("ece", "ECE", 4), ("ece_debiased", "debiased ECE", 4), ("smooth_ece", "smooth ECE", 4),
    ("mce", "MCE", 3), ("signed_gap", "conf − acc", 4), ("nll", "NLL", 4), ("brier", "Brier", 4),
    ("aurc", "AURC", 4),
)


def e(x: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe in attributes)."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals, integers as integers, and an em dash where undefined."""
    v = number(x)
    if v is None:
        return "—"
    if isinstance(x, int) or (digits == 0):
        return f"{int(round(v)):,}"
    return f"{v:.{digits}f}"


def with_ci(value: Any, ci: Any, digits: int = 4) -> str:
    """``value`` and, below it, its interval ``[lo, hi]``, or "n/a" where the interval is undefined."""
    iv = interval(ci)
    out = e(fmt(value, digits))
    if iv is not None:
        out += f'<br><span class="ci">[{fmt(iv[0], digits)}, {fmt(iv[1], digits)}]</span>'
    elif isinstance(ci, (list, tuple)):
        out += '<br><span class="ci">n/a</span>'
    return out


def token_html(token: Any) -> str:
    """A token string shown so that whitespace is visible."""
    text = "" if token is None else str(token)
    shown = text.replace("\n", "↵").replace("\t", "⇥")
    return f'<code class="tok" title="{e(repr(text))}">{e(shown) if shown.strip() else e(repr(text))}</code>'


def context_html(context: Any) -> str:
    """A worst-token context (``before``, ``token``, ``gold``), escaped, newlines and tabs shown as symbols; the
    predicted token marked, the gold token named when it differs."""
    def shown(x: Any) -> str:
        return e(str(x if x is not None else "").replace("\n", "↵").replace("\t", "⇥"))

    if not isinstance(context, Mapping):
        return shown(context)
    out = f"{shown(context.get('before'))}<mark>{shown(context.get('token'))}</mark>"
    if context.get("gold") != context.get("token"):
        out += f' <span class="gold">(gold: <code>{shown(context.get("gold"))}</code>)</span>'
    return out


def _table(headers: list[str], rows: list[tuple[str, list[str]]], text_cols: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML; the first ``text_cols`` columns align left."""
    head = "".join(f'<th class="text">{h}</th>' if i < text_cols else f"<th>{h}</th>"
                   for i, h in enumerate(headers))
    body = []
    for cls, cells in rows:
        tds = "".join(f'<td class="text">{c}</td>' if i < text_cols else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _calibrator_name(ev: Mapping[str, Any]) -> str:
    cal = (ev.get("settings") or {}).get("calibrator")
    if not cal:
        return "none"
    if isinstance(cal, Mapping):
        kind = cal.get("type", "calibrator")
        if number(cal.get("temperature")) is not None:
            return f"{kind} (T = {number(cal['temperature']):.3f})"
        return str(kind)
    return str(cal)


def overview_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    headers = ["evaluation", "calibrator", "tokens", "sequences", "accuracy", "confidence"]
    headers += [e(h) for _, h, _ in _OVERVIEW]
    rows = []
    for name, ev in evs.items():
        o, ci = ev["overall"], ev["overall"].get("ci") or {}
        cells = [e(name), e(_calibrator_name(ev)), fmt(o.get("n"), 0), fmt(o.get("n_sequences"), 0),
                 with_ci(o.get("accuracy"), ci.get("accuracy")), e(fmt(o.get("confidence")))]
        cells += [with_ci(o.get(k), ci.get(k), d) for k, _, d in _OVERVIEW]
        rows.append(("", cells))
    units = sorted({unit_text(ev) for ev in evs.values()})
    note = (f'<p class="note">Intervals: 95 % bootstrap over {e(" / ".join(units))} (percentile; the basic '
            "bootstrap for calibration errors, whose resamples are biased upward); n/a: fewer than two "
            "resampling units. conf − acc &gt; 0 means over-confident.</p>")
    marks = interval_notes(evs)
    if marks:
        note += ('<p class="note warn">Intervals computed with different bootstrap settings: '
                 + e("; ".join(marks)) + ".</p>")
    return '<section id="overview"><h2>Overview</h2>' + _table(headers, rows, text_cols=2) + note + "</section>"


def diagrams_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    plt = _pyplot()
    figures = []
    for diagram in DIAGRAMS:
        fig = draw(diagram, evs)
        try:
            svg = figure_svg(fig, salt=f"tokcal-{diagram}")
        finally:
            plt.close(fig)
        figures.append(f'<figure id="fig-{diagram}">{svg}<figcaption>{e(_CAPTIONS[diagram])}</figcaption></figure>')
    return '<section id="diagrams"><h2>Diagrams</h2><div class="figures">' + "".join(figures) + "</div></section>"


def _significance(row: Mapping[str, Any]) -> str:
    """'over' / 'under' when the row is marked significant (its gap interval excludes 0), else ''."""
    sig = row.get("significant")
    if sig is None:  # older dicts: read the interval itself
        iv = interval(row.get("gap_ci"))
        sig = iv is not None and (iv[0] > 0 or iv[1] < 0)
    if not sig:
        return ""
    gap = number(row.get("signed_gap"))
    return "over" if gap is not None and gap > 0 else "under"


def slices_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    names: list[str] = []
    for ev in evs.values():
        names += [s for s in (ev.get("slices") or {}) if s not in names]
    if not names:
        return '<section id="slices"><h2>Slices</h2><p class="note">No slices were evaluated.</p></section>'
    headers = ["value", "evaluation", "tokens", "sequences", "accuracy", "confidence", "ECE",
               "conf − acc", "NLL", "Brier", "gap interval excludes 0"]
    parts = ['<section id="slices"><h2>Slices</h2>',
             '<p class="note">Marked rows: the 95 % interval of conf − acc excludes 0, i.e. the slice is '
             "significantly over- (red) or under-confident (blue).</p>"]
    for sname in names:
        rows = []
        values: list[Any] = []
        for ev in evs.values():
            values += [r.get("value") for r in (ev.get("slices") or {}).get(sname, [])
                       if r.get("value") not in values]
        for value in values:
            for ename, ev in evs.items():
                for r in (ev.get("slices") or {}).get(sname, []):
                    if r.get("value") != value:
                        continue
                    side = _significance(r)
                    badge = (f'<span class="badge {side}">{side}-confident</span>' if side else "")
                    rows.append((f"sig-{side}" if side else "", [
                        e(value), e(ename), fmt(r.get("n"), 0), fmt(r.get("n_sequences"), 0),
                        e(fmt(r.get("accuracy"))), e(fmt(r.get("confidence"))),
                        with_ci(r.get("ece"), r.get("ece_ci")), with_ci(r.get("signed_gap"), r.get("gap_ci")),
                        e(fmt(r.get("nll"))), e(fmt(r.get("brier"))), badge]))
        notes = {slice_definition(ev, sname) for ev in evs.values()} - {None}
        note = "".join(f'<p class="note">{e(n)}</p>' for n in sorted(notes))
        parts.append(f'<h3>{e(sname)}</h3>' + note + _table(headers, rows, text_cols=2))
    return "".join(parts) + "</section>"


def worst_tokens_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    parts = ['<section id="worst-tokens"><h2>Worst tokens</h2>',
             '<p class="note">Predicted tokens with the largest share of the ECE; contexts show where '
             "the model predicted them.</p>"]
    headers = ["token", "id", "tokens", "confidence", "accuracy", "conf − acc", "ECE share", "example contexts"]
    for i, (name, ev) in enumerate(evs.items()):
        rows = []
        for t in ev.get("worst_tokens") or []:
            ctx = "".join(f"<li>{context_html(c)}</li>" for c in (t.get("contexts") or []))
            rows.append(("", [token_html(t.get("token")), e(t.get("id")), fmt(t.get("n"), 0),
                              e(fmt(t.get("confidence"))), e(fmt(t.get("accuracy"))), e(fmt(t.get("gap"))),
                              e(fmt(t.get("ece_share"), 3)), f'<ul class="contexts">{ctx}</ul>']))
        body = _table(headers, rows) if rows else '<p class="note">No tokens listed.</p>'
        parts.append(f"<details{' open' if i == 0 else ''}><summary>{e(name)}</summary>{body}</details>")
    return "".join(parts) + "</section>"


def passage_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    parts = ['<section id="passage"><h2>Passage</h2>',
             '<p class="note">Each token shaded by the confidence of the model’s prediction at that point '
             '(after the evaluation’s calibrator): <span class="scale"></span> 0 → 1. '
             "Dotted underline: the prediction was wrong. Hover for numbers.</p>"]
    shown = 0
    for name, ev in evs.items():
        tokens = ev.get("passage") or []
        if not tokens:
            continue
        spans = []
        for t in tokens:
            c, p = number(t.get("confidence")), number(t.get("label_prob"))
            alpha = 0.0 if c is None else round(0.6 * min(max(c, 0.0), 1.0), 3)
            tip = f"confidence {fmt(c, 3)} · p(actual token) {fmt(p, 3)}"
            cls = "" if t.get("correct", True) else ' class="wrong"'
            spans.append(f'<span{cls} style="background: rgba(31, 95, 174, {alpha})" title="{e(tip)}">'
                         f'{e(t.get("token", ""))}</span>')
        parts.append(f'<h3>{e(name)}</h3><div class="passage">{"".join(spans)}</div>')
        shown += 1
    if not shown:
        parts.append('<p class="note">The evaluations carry no passage.</p>')
    return "".join(parts) + "</section>"


def signatures_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    parts = ['<section id="signatures"><h2>Signatures</h2>',
             '<p class="note">How every number was computed. Numbers with different signatures are not '
             "comparable.</p>"]
    for name, ev in evs.items():
        rows = [("", [e(k), f'<code>{e(v)}</code>']) for k, v in (ev.get("signatures") or {}).items()]
        settings = json.dumps(ev.get("settings") or {}, indent=1, sort_keys=True, default=str)
        parts.append(f"<h3>{e(name)}</h3><pre class=\"sig\">{e(ev.get('signature'))}</pre>"
                     + (_table(["metric", "signature"], rows, text_cols=2) if rows else "")
                     + f"<details><summary>settings</summary><pre class=\"sig\">{e(settings)}</pre></details>")
    return "".join(parts) + "</section>"


def render_html(evaluations: Any, title: str = "tokcal calibration report") -> str:
    """The report as one HTML string (see :func:`write_html`)."""
    evs = as_dicts(evaluations)
    css = resources.files("tokcal.report").joinpath("style.css").read_text(encoding="utf-8")
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("overview", "Overview"), ("diagrams", "Diagrams"), ("slices", "Slices"),
        ("worst-tokens", "Worst tokens"), ("passage", "Passage"), ("signatures", "Signatures")))
    body = "".join(f(evs) for f in (overview_section, diagrams_section, slices_section,
                                     worst_tokens_section, passage_section, signatures_section))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # No request may leave the page: forbid every remote source, allow only inline styles/data images.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{e(title)}</title><style>{css}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p class=\"muted\">{len(evs)} evaluation(s): "
        f"{e(', '.join(evs))} · tokcal {e(__version__)}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main></body></html>\n"
    )


def write_html(path: str | os.PathLike, evaluations: Any, title: str = "tokcal calibration report") -> Path:
    """Write the self-contained report for ``evaluations`` ({name: Evaluation or its dict}) to ``path``.

    The file is written atomically (temp file, then rename) and needs no network to display.
    """
    text = render_html(evaluations, title=title)
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
