"""One self-contained HTML report from one or more evaluations (the report reads an Evaluation).

The page answers, from the top: is the model calibrated, where not, and which calibrator to ship. A
headline gives the verdict in words chosen by stated rules (:mod:`tokcal.report.verdict`; differences
come with paired intervals, :mod:`tokcal.paired`), small-multiple reliability diagrams show each group
value before and after, and a next-steps box gives commands whose ``check`` limits come from the measured
values (:func:`tokcal.gate.suggest_limits`). Then: overview of all evaluations with 95 % intervals, one
reliability panel per evaluation, slices ordered by importance with what each one means, worst tokens
with their contexts, a passage shaded by confidence, and one signatures section.

The file needs nothing else: the stylesheet is inlined, the diagrams are inline SVG (text drawn as
paths, so no fonts are fetched), the one script is inline and allowed by its hash alone (it sorts a table
when a column header is clicked; the page reads fully without it), the Content-Security-Policy forbids
every request, and every string that comes from data (names, token strings, contexts, signatures) is
HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .._version import __version__
from .data import as_dicts, interval, interval_notes, number, slice_definition, unit_text, write_file
from .plots import _pyplot, confidence_histogram, figure_svg, reliability_panels, risk_coverage_curve, slice_reliability
from .verdict import RULES, Verdict, describe_slice, details, sentences, slice_order, verdict

_CAPTIONS = {
    "reliability": "Accuracy against confidence per bin, one panel per evaluation, with 95 % bootstrap "
                   "intervals (resampling whole units of tokens); the dashed diagonal is perfect calibration.",
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
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # never -0.0000


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


#: sorts a ``table.sortable`` by the column whose header button is clicked (again: the other way); numbers
#: (the first number of a cell: ``0.0123 [0.01, 0.02]``, ``−0.004``, ``1,234``) by value, ``text`` columns
#: alphabetically, cells without a number last. The page's CSP allows this exact text by its hash.
SORT_SCRIPT = r"""(function () {
  function key(cell) {
    var text = cell.textContent.replace(/\u2212/g, "-").replace(/,/g, "").trim();
    var m = text.match(/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?/i);
    return m ? parseFloat(m[0]) : null;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var up = th.getAttribute("aria-sort") !== "ascending", text = th.classList.contains("text");
        heads.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var c1 = r1.cells[col], c2 = r2.cells[col];
          if (text) { return (up ? 1 : -1) * c1.textContent.localeCompare(c2.textContent); }
          var a = key(c1), b = key(c2);
          if (a === null || b === null) { return (a === null) - (b === null); }
          return up ? a - b : b - a;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();"""
#: the CSP source that allows :data:`SORT_SCRIPT` and nothing else
SORT_SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode("utf-8")).digest()).decode()


def _table(headers: list[str], rows: list[tuple[str, list[str]]], text_cols: int = 1) -> str:
    """A sortable HTML table (:data:`SORT_SCRIPT`); cells are already-escaped HTML; the first ``text_cols``
    columns align left (and sort alphabetically)."""
    head = "".join(f'<th class="text"><button type="button">{h}</button></th>' if i < text_cols
                   else f'<th><button type="button">{h}</button></th>' for i, h in enumerate(headers))
    body = []
    for cls, cells in rows:
        tds = "".join(f'<td class="text">{c}</td>' if i < text_cols else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


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


def headline_section(evs: Mapping[str, Mapping[str, Any]], v: Verdict) -> str:
    text = " ".join(e(x) for x in sentences(evs, v))
    rules = "".join(f"<li>{e(r)}</li>" for r in RULES)
    note = ""
    if v.candidate is not None and not v.paired:
        note = f'<p class="note">Not paired: {e(v.reason)}.</p>'
    groups = details(v)
    if any(len(vals) > 1 for _, vals in groups):  # the headline counted some: name them all here
        n = sum(len(vals) for _, vals in groups)
        items = "".join(f"<li>{e(k)}: {e(', '.join(vals))}</li>" for k, vals in groups)
        note += (f'<details id="headline-details"><summary>The {n} slice values in the headline</summary>'
                 f"<ul>{items}</ul></details>")
    return (f'<section id="headline"><p class="verdict">{text}</p>{note}'
            f"<details><summary>How these words are chosen</summary><ul>{rules}</ul></details></section>")


def _figure(fig: Any, fid: str, caption: str) -> str:
    plt = _pyplot()
    try:
        svg = figure_svg(fig, salt=f"tokcal-{fid}")
    finally:
        plt.close(fig)
    return f'<figure id="fig-{e(fid)}">{svg}<figcaption>{e(caption)}</figcaption></figure>'


def diagram_slices(evs: Mapping[str, Mapping[str, Any]], v: Verdict, limit: int = 3) -> list[str]:
    """The slices drawn as small multiples: group slices first, then the most miscalibrated others (up to
    ``limit`` in all), among those with per-value bins."""
    base = evs[v.baseline]
    have = set(base.get("slice_bins") or {})
    names = [s for s in slice_order(base) if s in have]
    groups = [s for s in names if s.startswith("group:")]
    significant = [s for s in names if not s.startswith("group:")
                   and any(r.get("significant") for r in (base.get("slices") or {}).get(s, []))]
    return (groups + significant)[:limit]


def by_slice_section(evs: Mapping[str, Mapping[str, Any]], v: Verdict) -> str:
    names = [v.baseline] + ([v.candidate] if v.candidate and v.candidate != v.baseline else [])
    parts = []
    for i, sname in enumerate(diagram_slices(evs, v)):
        rows = (evs[v.baseline].get("slices") or {}).get(sname, [])
        biggest = {id(r) for r in sorted(rows, key=lambda r: -(r.get("n") or 0))[:6]}
        values = [str(r.get("value")) for r in rows if id(r) in biggest]  # the slice's own order
        if not values:
            continue
        caption = (f"{sname}: one reliability panel per value ({', '.join(values)}), "
                   + (f"{names[0]} dashed grey, {names[1]} in colour; " if len(names) > 1 else "")
                   + "dot area = tokens in the bin (bins under 20 tokens left out); the dotted diagonal is perfect "
                   "calibration.")
        fig = slice_reliability(evs, sname, values, names)
        parts.append(_figure(fig, f"slice-{i}", caption))
    if not parts:
        return ""
    return ('<section id="by-slice"><h2>Where: reliability per slice value</h2><div class="figures small">'
            + "".join(parts) + "</div></section>")


def _cmd(*parts: str) -> str:
    return " ".join(parts)


def next_steps_section(evs: Mapping[str, Mapping[str, Any]], v: Verdict, files: Mapping[str, Any] | None) -> str:
    from ..gate import suggest_limits

    files = files or {}
    name = v.candidate or v.baseline
    ev = evs[name]
    table = str(files.get("table") or "TABLE")
    cal_path = (files.get("calibrators") or {}).get(name)
    cal = [] if not (ev.get("settings") or {}).get("calibrator") else ["--calibrator", str(cal_path or "CAL.json")]
    groups = [s for s in (ev.get("slices") or {}) if s.startswith("group:")]
    limits = suggest_limits(ev, slices=groups)
    steps = []
    check = ["tokcal check", table, *cal]
    if limits["max_ece"] is not None:
        check += ["--max-ece", f"{limits['max_ece']:g}"]
    if groups and limits["max_slice_ece"] is not None:
        for g in groups:
            check += ["--slice", g]
        check += ["--max-slice-ece", f"{limits['max_slice_ece']:g}"]
    if len(check) > 2 + len(cal):
        steps.append(("Gate CI on it (limits: the upper ends of the measured 95 % intervals, rounded up, so this "
                      "table passes and a clear regression fails):", _cmd(*check)))
    if cal:
        calib = (ev.get("settings") or {}).get("calibrator") or {}
        by = calib.get("by") if isinstance(calib, Mapping) else None
        gnames = list(calib.get("groups") or []) if isinstance(calib, Mapping) else []
        needs = [g for g in ([by] if by and by not in ("token_type", "freq") else []) + gnames]
        group_args = [f"--group {g}=VALUE" for g in needs]
        steps.append(("Use it when generating or showing confidence (group calibrators need the group's value):",
                      _cmd("tokcal annotate MODEL_DIR", *cal, *group_args, '--text "…"')))
    eval_path = (files.get("evaluations") or {}).get(name) or "EVAL.json"
    steps.append(("Summarise for a model card or a pull request:",
                  _cmd("tokcal report", f"{name}={eval_path}", "--markdown summary.md")))
    items = "".join(f"<li>{e(text)}<pre class=\"cmd\">{e(cmd)}</pre></li>" for text, cmd in steps)
    return (f'<section id="next-steps"><h2>Next steps with {e(name)}</h2><ol>{items}</ol></section>')


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
    figures = [_figure(reliability_panels(evs), "reliability", _CAPTIONS["reliability"]),
               _figure(confidence_histogram(evs), "confidence_histogram", _CAPTIONS["confidence_histogram"]),
               _figure(risk_coverage_curve(evs), "risk_coverage", _CAPTIONS["risk_coverage"])]
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


def slices_section(evs: Mapping[str, Mapping[str, Any]], v: Verdict | None = None) -> str:
    v = v or verdict(evs)
    names: list[str] = list(slice_order(evs[v.baseline]))
    for ev in evs.values():
        names += [s for s in (ev.get("slices") or {}) if s not in names]
    if not names:
        return '<section id="slices"><h2>Slices</h2><p class="note">No slices were evaluated.</p></section>'
    headers = ["value", "evaluation", "tokens", "sequences", "accuracy", "confidence", "ECE",
               "conf − acc", "NLL", "Brier", "gap interval excludes 0"]
    parts = ['<section id="slices"><h2>Slices</h2>',
             '<p class="note">Group slices first, then the most miscalibrated; inside a slice, the values whose '
             "conf − acc is largest in size come first. Marked rows: the 95 % interval of conf − acc excludes 0, "
             "i.e. the slice value is significantly over- (red) or under-confident (blue).</p>"]
    base = evs[v.baseline]
    for sname in names:
        rows = []
        order: list[Any] = []
        for ev in (base, *evs.values()):
            order += [r.get("value") for r in (ev.get("slices") or {}).get(sname, []) if r.get("value") not in order]
        base_rows = {r.get("value"): r for r in (base.get("slices") or {}).get(sname, [])}
        order.sort(key=lambda val: (not (base_rows.get(val) or {}).get("significant"),
                                    -abs(number((base_rows.get(val) or {}).get("signed_gap")) or 0.0)))
        for value in order:
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
        parts.append(f'<h3>{e(sname)}</h3><p class="explain">{e(describe_slice(sname))}</p>' + note
                     + _table(headers, rows, text_cols=2))
    return "".join(parts) + "</section>"


def worst_tokens_section(evs: Mapping[str, Mapping[str, Any]]) -> str:
    parts = ['<section id="worst-tokens"><h2>Worst tokens</h2>',
             '<p class="note">Predicted tokens with the largest share of the ECE; each context shows the text '
             "before, the predicted token marked, and the gold token where it differs (↵ = newline, "
             "⇥ = tab).</p>"]
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
    """One table: each metric's signature; where evaluations differ, each one's, named."""
    metrics: list[str] = []
    for ev in evs.values():
        metrics += [k for k in (ev.get("signatures") or {}) if k not in metrics]
    rows = []
    for k in metrics:
        sigs = {name: (ev.get("signatures") or {}).get(k) for name, ev in evs.items()}
        distinct = {s for s in sigs.values() if s is not None}
        if len(distinct) == 1:
            cell = f"<code>{e(next(iter(distinct)))}</code>"
        else:
            cell = "<br>".join(f"{e(n)}: <code>{e(s)}</code>" for n, s in sigs.items())
        rows.append(("", [e(k), cell]))
    settings = "".join(
        f"<details><summary>settings of {e(name)}</summary><pre class=\"sig\">"
        f"{e(json.dumps(ev.get('settings') or {}, indent=1, sort_keys=True, default=str))}</pre></details>"
        for name, ev in evs.items())
    same = "all evaluations share them" if all(len(set(
        (ev.get("signatures") or {}).get(k) for ev in evs.values())) == 1 for k in metrics) else \
        "where they differ, each evaluation's is listed"
    return ('<section id="signatures"><h2>Signatures</h2>'
            f'<p class="note">How every number was computed ({same}). Numbers with different signatures are not '
            "comparable.</p>" + _table(["metric", "signature"], rows, text_cols=2) + settings + "</section>")


def render_html(evaluations: Any, title: str = "tokcal calibration report", recommended: str | None = None,
                files: Mapping[str, Any] | None = None) -> str:
    """The report as one HTML string (see :func:`write_html`)."""
    evs = as_dicts(evaluations)
    if recommended is not None and recommended not in evs:
        from ..errors import ValidationError

        raise ValidationError(f"recommended evaluation {recommended!r} is not among {', '.join(evs)}")
    v = verdict(evs, recommended)
    css = resources.files("tokcal.report").joinpath("style.css").read_text(encoding="utf-8")
    where = by_slice_section(evs, v)
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("by-slice", "Where"), ("next-steps", "Next steps"), ("overview", "Overview"), ("diagrams", "Diagrams"),
        ("slices", "Slices"), ("worst-tokens", "Worst tokens"), ("passage", "Passage"),
        ("signatures", "Signatures")) if a != "by-slice" or where)
    body = (headline_section(evs, v) + where + next_steps_section(evs, v, files)
            + overview_section(evs) + diagrams_section(evs) + slices_section(evs, v) + worst_tokens_section(evs)
            + passage_section(evs) + signatures_section(evs))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # No request may leave the page: forbid every remote source, allow only inline styles/data images
        # and the one sorting script, by its hash.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        f"script-src '{SORT_SCRIPT_HASH}'; "
        "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'\">"
        f"<title>{e(title)}</title><style>{css}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p class=\"muted\">{len(evs)} evaluation{'' if len(evs) == 1 else 's'}: "
        f"{e(', '.join(evs))} · tokcal {e(__version__)}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main><script>{SORT_SCRIPT}</script></body></html>\n"
    )


def write_html(path: str | os.PathLike, evaluations: Any, title: str = "tokcal calibration report",
               recommended: str | None = None, files: Mapping[str, Any] | None = None) -> Path:
    """Write the self-contained report for ``evaluations`` ({name: Evaluation or its dict}) to ``path``.

    ``recommended``: the evaluation the headline and next steps speak of (default: the lowest ECE);
    ``files``: paths shown in the next-steps commands, ``{"table": ..., "calibrators": {name: ...},
    "evaluations": {name: ...}}``. The file is written atomically and needs no network to display.
    """
    text = render_html(evaluations, title=title, recommended=recommended, files=files)
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
