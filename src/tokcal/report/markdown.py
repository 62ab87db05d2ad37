"""A Markdown summary of evaluations, for model cards and pull-request comments.

The same answer as the HTML report's top, in text: the headline (words by
:data:`tokcal.report.verdict.RULES`), a table of the evaluations with 95 % intervals, the group slices
(and the most miscalibrated others) per value, and the check command with limits from the measured values.
Reads evaluation dicts; computes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .data import as_dicts, interval, number, write_file
from .terminal import num, signed
from .verdict import RULES, details, sentences, slice_order, verdict


def _md(x: Any) -> str:
    """Text safe inside a Markdown table cell: pipes, backticks, markup characters and newlines escaped."""
    s = str(x)
    for ch in ("\\", "|", "`", "*", "_", "[", "]", "<", ">", "#"):
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", "↵").replace("\r", "")


def _ci(value: Any, ci: Any, digits: int = 4, sign: bool = False) -> str:
    v = number(value)
    shown = "—" if v is None else (signed(v, digits) if sign else num(v, digits))
    iv = interval(ci)
    if iv is None:
        return shown
    f = signed if sign else num
    return f"{shown} [{f(iv[0], digits)}, {f(iv[1], digits)}]"


def render_markdown(evaluations: Any, title: str = "Calibration", recommended: str | None = None,
                    files: Mapping[str, Any] | None = None, max_slices: int = 3) -> str:
    """The summary as Markdown text (see the module docstring)."""
    from ..gate import suggest_limits

    evs = as_dicts(evaluations)
    v = verdict(evs, recommended)
    lines = [f"## {_md(title)}", "", " ".join(_md(x) for x in sentences(evs, v)), ""]
    if v.candidate is not None and not v.paired:
        lines += [f"_Not paired: {_md(v.reason)}._", ""]
    groups = details(v)
    if any(len(vals) > 1 for _, vals in groups):  # the headline counted some: name them all here
        lines += [f"- {_md(k)}: {_md(', '.join(vals))}" for k, vals in groups] + [""]
    lines += ["| evaluation | tokens | accuracy | ECE | conf − acc | NLL | Brier |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ev in evs.items():
        o, ci = ev["overall"], ev["overall"].get("ci") or {}
        cells = [_md(name), f"{int(o.get('n') or 0):,}", _ci(o.get("accuracy"), ci.get("accuracy"), 3),
                 _ci(o.get("ece"), ci.get("ece")), _ci(o.get("signed_gap"), ci.get("signed_gap"), 4, True),
                 _ci(o.get("nll"), ci.get("nll"), 3), _ci(o.get("brier"), ci.get("brier"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    base = evs[v.baseline]
    order = slice_order(base)
    shown = [s for s in order if s.startswith("group:")]
    shown += [s for s in order if not s.startswith("group:")
              and any(r.get("significant") for r in (base.get("slices") or {}).get(s, []))]
    names = [v.baseline] + ([v.candidate] if v.candidate and v.candidate != v.baseline else [])
    for sname in shown[:max_slices]:
        lines += [f"**{_md(sname)}**: ECE per value (\\* = conf − acc significantly ≠ 0)", "",
                  "| value | tokens | " + " | ".join(_md(n) for n in names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        rows = {n: {str(r.get("value")): r for r in (evs[n].get("slices") or {}).get(sname, [])} for n in names}
        for value, r0 in rows[v.baseline].items():
            cells = []
            for n in names:
                r = rows[n].get(value)
                cells.append("—" if r is None else _ci(r.get("ece"), r.get("ece_ci"), 3)
                             + (" \\*" if r.get("significant") else ""))
            lines.append(f"| {_md(value)} | {int(r0.get('n') or 0):,} | " + " | ".join(cells) + " |")
        lines.append("")
    ship = v.candidate or v.baseline
    ev = evs[ship]
    groups = [s for s in (ev.get("slices") or {}) if s.startswith("group:")]
    limits = suggest_limits(ev, slices=groups)
    files = files or {}
    cmd = ["tokcal check", str(files.get("table") or "TABLE")]
    if (ev.get("settings") or {}).get("calibrator"):
        cmd += ["--calibrator", str((files.get("calibrators") or {}).get(ship) or "CAL.json")]
    if limits["max_ece"] is not None:
        cmd += ["--max-ece", f"{limits['max_ece']:g}"]
    if groups and limits["max_slice_ece"] is not None:
        cmd += [*(f"--slice {g}" for g in groups), "--max-slice-ece", f"{limits['max_slice_ece']:g}"]
    lines += ["Gate CI on it (limits from the measured intervals):", "", "```bash", " ".join(cmd), "```", "",
              "<details><summary>How the words are chosen</summary>", "", *[f"- {r}" for r in RULES], "",
              "</details>", "", f"<sub>{_md(base.get('signature', ''))}</sub>", ""]
    return "\n".join(lines)


def write_markdown(path: str | os.PathLike, evaluations: Any, title: str = "Calibration",
                   recommended: str | None = None, files: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`render_markdown` to ``path`` atomically."""
    text = render_markdown(evaluations, title=title, recommended=recommended, files=files)
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
