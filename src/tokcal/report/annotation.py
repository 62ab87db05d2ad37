"""Per-token confidence of annotated texts, shown three ways: coloured terminal text, lines for pipes
(TSV or JSON lines), and a self-contained HTML page.

The colours are four steps of a colour-blind-safe diverging scale (ColorBrewer PuOr: orange = low,
purple = high), so no reading depends on telling red from green; every token also shows its number (HTML:
above the token; terminal: the legend and the TSV carry them) and flagged tokens are marked by a wavy
underline, not by colour alone. Reads :class:`tokcal.integrations.annotate.Annotation` objects; computes
nothing.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

# (upper edge, background for HTML, terminal style, name)
BUCKETS = ((0.3, "#e66101", "bold #e66101", "low"), (0.6, "#fdb863", "#fdb863", "medium"),
           (0.85, "#b2abd2", "#b2abd2", "high"), (math.inf, "#5e3c99", "bold #8073ac", "very high"))
TSV_COLUMNS = ("index", "start", "end", "id", "text", "prob", "raw_prob", "confidence", "entropy", "flagged",
               "set_size")


def bucket(conf: float) -> tuple[float, str, str, str] | None:
    """The :data:`BUCKETS` entry of a confidence, None when undefined (the first token without context)."""
    if not math.isfinite(conf):
        return None
    return next(b for b in BUCKETS if conf < b[0])


def _range(i: int) -> str:
    lo = 0.0 if i == 0 else BUCKETS[i - 1][0]
    hi = BUCKETS[i][0]
    return f"[{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'}"


def rich_text(ann: Any) -> Any:
    """The annotated text, each token coloured by its calibrated confidence (flagged tokens underlined)."""
    from rich.text import Text

    out = Text()
    for i in range(len(ann)):
        b = bucket(float(ann.confidence[i]))
        flagged = ann.flagged is not None and bool(ann.flagged[i])
        out.append(ann.token_text(i), style=("dim" if b is None else b[2]) + (" underline" if flagged else ""))
    return out


def legend() -> Any:
    """The terminal legend: each colour with its confidence range."""
    from rich.text import Text

    t = Text("confidence: ")
    for i, b in enumerate(BUCKETS):
        t.append(f"{b[3]} {_range(i)}", style=b[2])
        t.append("  ")
    t.append("underlined: flagged for review")
    return t


def _escape_tsv(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def tsv_lines(anns: list[Any]) -> list[str]:
    """A header and one line per token (``index`` counts across texts); text escaped as ``\\t``, ``\\n``."""
    lines = ["\t".join(TSV_COLUMNS)]
    k = 0
    for ann in anns:
        for tok in ann.tokens:
            row = {**tok, "index": k, "text": _escape_tsv(tok["text"])}
            lines.append("\t".join(_cell(row.get(c)) for c in TSV_COLUMNS))
            k += 1
    return lines


def jsonl_lines(anns: list[Any]) -> list[str]:
    """One JSON object per token (``Annotation.tokens``), with the index of its text."""
    return [json.dumps({"text_index": j, **tok}, ensure_ascii=False, allow_nan=False)
            for j, ann in enumerate(anns) for tok in ann.tokens]


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "n/a"


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:64em;color:#222}"
    ".text{border:1px solid #ccc;padding:1em;line-height:2.9;font-size:1.05em}"
    "ruby{ruby-position:over;padding:0 1px;border-radius:3px;white-space:pre-wrap}"
    "rt{font-size:.62em;color:#333;font-family:monospace}"
    ".flag{text-decoration:underline wavy #222;text-underline-offset:4px}"
    ".legend span{display:inline-block;padding:.1em .6em;margin:.2em;border-radius:3px}"
    ".nl{color:#777}"
)


def _fg(hex_bg: str) -> str:
    r, g, b = (int(hex_bg[i:i + 2], 16) for i in (1, 3, 5))
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#111"


def html_page(anns: list[Any], title: str) -> str:
    """A self-contained HTML page (inline CSS, no scripts) of annotated texts: each token on a colour-blind-safe
    background for its confidence, its confidence printed above it, a legend; hover shows every number."""
    blocks = []
    for ann in anns:
        spans = []
        for i in range(len(ann)):
            c = float(ann.confidence[i])
            b = bucket(c)
            bg = "#eeeeee" if b is None else b[1]
            tip = (f"id {int(ann.token_ids[i])} | p(token) {_fmt(float(ann.prob[i]))} "
                   f"(raw {_fmt(float(ann.raw_prob[i]))}) | confidence {_fmt(c)} | "
                   f"entropy {_fmt(float(ann.entropy[i]))}")
            if ann.set_size is not None and ann.set_size[i] >= 0:
                tip += f" | set size {int(ann.set_size[i])}"
            flagged = ann.flagged is not None and bool(ann.flagged[i])
            cls = ' class="flag"' if flagged else ""
            text = ann.token_text(i)
            shown = html.escape(text).replace("\n", '<span class="nl">↵</span>\n')
            number = "–" if b is None else f"{c:.2f}"
            spans.append(f'<ruby{cls} style="background:{bg};color:{_fg(bg)}" '
                         f'title="{html.escape(tip, quote=True)}">{shown}<rt>{number}</rt></ruby>')
        blocks.append(f'<div class="text">{"".join(spans)}</div>')
    items = "".join(f'<span style="background:{b[1]};color:{_fg(b[1])}">{b[3]} {_range(i)}</span>'
                    for i, b in enumerate(BUCKETS))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="legend">Calibrated confidence of the model\'s top choice, printed above each token: {items}'
        ' <span class="flag">wavy underline</span>: flagged for review. Hover a token for all its numbers.</p>'
        f"{''.join(blocks)}</body></html>\n"
    )
