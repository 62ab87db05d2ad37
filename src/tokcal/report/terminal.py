"""Text for the terminal: the gate's outcomes, evaluation summaries, and plain words for numbers.

Everything here reads results (:class:`tokcal.gate.GateResult`, ``Evaluation.to_dict()``) and words
them; nothing computes a metric.
"""

from __future__ import annotations

from typing import Any

FLAGS = {"max_ece": "--max-ece", "max_slice_ece": "--max-slice-ece", "max_regression": "--max-regression"}


def num(x: Any, digits: int = 4) -> str:
    """``x`` with ``digits`` decimals, ``undefined`` when missing; never ``-0.0000``."""
    if x is None:
        return "undefined"
    text = f"{float(x):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def signed(x: Any, digits: int = 4) -> str:
    """``x`` with an explicit sign (``+0.0000`` for zero, never ``-0.0000``)."""
    if x is None:
        return "undefined"
    text = f"{float(x):+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


def plural(n: int, word: str, many: str | None = None, sep: bool = True) -> str:
    """``1 sequence``, ``2 sequences`` (``many`` for irregular plurals); thousands separators unless ``sep``
    is False."""
    count = f"{n:,}" if sep else str(n)
    return f"{count} {word if n == 1 else (many or word + 's')}"


def _ci(ci: Any) -> str:
    return "" if ci is None else f" (95% CI {num(ci[0])} to {num(ci[1])})"


def outcome_line(o: Any) -> str:
    """One :class:`tokcal.gate.Outcome` as a sentence naming the value, its interval and the limit's flag."""
    flag = f"{FLAGS[o.condition]} {o.limit:g}"
    if o.condition == "max_slice_ece" and o.skipped:
        return f"slice {o.slice}: not checked (< {o.n} tokens): {', '.join(o.skipped)}"
    if o.condition == "max_regression":
        if o.value is None or o.baseline is None:
            return f"{o.metric}: undefined (now {num(o.value)}, {o.baseline_name} {num(o.baseline)})"
        text = f"{o.metric} = {num(o.value)} vs {num(o.baseline)} in {o.baseline_name}: change {signed(o.change)}"
    elif o.condition == "max_slice_ece":
        text = f"slice {o.slice}={o.slice_value} ({plural(o.n, 'token', sep=False)}): ece = {num(o.value)}{_ci(o.ci)}"
    else:
        text = f"{o.metric} = {num(o.value)}{_ci(o.ci)}"
    if o.value is None:
        return f"{text}: undefined, cannot be checked against {flag}"
    return f"{text} {'<=' if o.ok else 'exceeds'} {flag}"


def gate_lines(result: Any) -> list[str]:
    """The lines ``tokcal check`` prints: ``ok``/``FAIL`` per outcome, the signature, the verdict."""
    lines = [f"{'ok  ' if o.ok else 'FAIL'} {outcome_line(o)}" for o in result.outcomes]
    lines.append(f"signature: {result.signature}")
    failed = len(result.failures)
    lines.append(f"check failed: {plural(failed, 'condition')} not met" if failed else "check passed")
    return lines


# -- evaluation summary ---------------------------------------------------------------------------

SUMMARY_METRICS = ("accuracy", "confidence", "ece", "ece_debiased", "smooth_ece", "mce", "rmsce", "signed_gap",
                   "nll", "brier", "top_label_brier", "classwise_ece", "aurc")
SIGNIFICANT_NOTE = "* the 95% interval of conf - acc excludes 0: significantly over- (+) or under-confident (-)"


def ranked_slice_rows(d: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(slice, row) of every slice value, the significant ones first, then by |conf - acc|."""
    rows = [(name, r) for name, values in (d.get("slices") or {}).items() for r in values]
    rows.sort(key=lambda x: (not x[1].get("significant"), -abs(x[1].get("signed_gap") or 0.0)))
    return rows


def context_text(ctx: Any) -> str:
    """A worst-token context as one line: the text before, the predicted token in brackets, the gold token
    when it differs; newlines and tabs shown as symbols."""
    def shown(s: Any) -> str:
        return str(s).replace("\n", "↵").replace("\t", "⇥")

    if not isinstance(ctx, dict):
        return shown(ctx)
    note = "" if ctx.get("gold") == ctx.get("token") else f"  (gold: {shown(ctx.get('gold'))!r})"
    return f"{shown(ctx.get('before', ''))}[{shown(ctx.get('token'))}]{note}"


def print_summary(d: dict[str, Any], console: Any = None, n_worst: int = 8) -> None:
    """Rich tables of an evaluation dict, readable at 80 columns and in logs (no TTY): overall metrics with
    intervals, the most miscalibrated slice values, the worst predicted tokens, the signature."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .data import slice_definition

    console = console or Console()
    o = d["overall"]
    kw = {"box": box.SIMPLE_HEAD, "padding": (0, 0)}

    def title(text: str) -> None:
        console.print(text, style="bold", highlight=False, markup=False)

    res = (d.get("settings") or {}).get("resampling") or {}
    unit = (f", bootstrap over {res.get('n_units')} blocks of {res.get('block_length')} positions"
            if res.get("unit") == "block" else "")
    title(f"tokcal evaluation: {plural(o['n'], 'token')}, {plural(o['n_sequences'], 'sequence')}{unit}")
    t = Table(**kw)
    t.add_column("metric", overflow="fold")
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("95% interval", justify="right", no_wrap=True)
    for key in SUMMARY_METRICS:
        ci = (o.get("ci") or {}).get(key)
        shown = "" if ci is None else "n/a" if ci[0] is None or ci[1] is None else f"[{num(ci[0])}, {num(ci[1])}]"
        t.add_row(key, num(o.get(key)), shown)
    console.print(t)
    gap = o.get("signed_gap") or 0.0
    direction = "over-confident" if gap > 0 else "under-confident" if gap < 0 else "neither over- nor under-confident"
    console.print(f"conf - acc {signed(o.get('signed_gap'))} ({direction}); share of the ECE from over-confident "
                  f"bins {o['over_share']:.0%}, under-confident {o['under_share']:.0%}", highlight=False)
    rows = ranked_slice_rows(d)
    if rows:
        title("most miscalibrated slice values")
        s = Table(**kw)
        s.add_column("slice=value", overflow="fold")
        for col in ("tokens", "acc", "conf", "conf-acc", "95% CI", "ece"):
            s.add_column(col, justify="right", no_wrap=True)
        for name, r in rows[:n_worst]:
            ci = r.get("gap_ci") or [None, None]
            s.add_row(Text(f"{name}={r['value']}"), f"{r['n']:,}", num(r.get("accuracy"), 3),
                      num(r.get("confidence"), 3),
                      signed(r.get("signed_gap"), 3) + ("*" if r.get("significant") else " "),
                      "n/a" if ci[0] is None else f"[{signed(ci[0], 3)}, {signed(ci[1], 3)}]", num(r.get("ece"), 3))
        console.print(s)
        console.print(SIGNIFICANT_NOTE, highlight=False, markup=False)
        for name in d.get("slices") or {}:
            note = slice_definition(d, name)
            if note is not None:
                console.print(Text(f"{name}: {note}", style="dim"), highlight=False)
    if d.get("worst_tokens"):
        title("worst predicted tokens (share of the per-token gap)")
        w = Table(**kw)
        w.add_column("token", overflow="fold")
        for col in ("n", "acc", "conf", "conf-acc", "share"):
            w.add_column(col, justify="right", no_wrap=True)
        for r in d["worst_tokens"][:n_worst]:
            w.add_row(Text(repr(r["token"])), f"{r['n']:,}", num(r.get("accuracy"), 3), num(r.get("confidence"), 3),
                      signed(r.get("gap"), 3), f"{r['ece_share']:.1%}")
        console.print(w)
    console.print(Text(str(d["signature"]), style="dim"), highlight=False, soft_wrap=True)


def ece_cell(value: float, ci: Any) -> str:
    """An ECE with its 95 % interval below it (``0.0123`` / ``[0.0100, 0.0150]``); the value alone without one."""
    if ci is None or None in ci:
        return num(value)
    return f"{num(value)}\n[{num(ci[0])}, {num(ci[1])}]"


def ece_table(by_column: dict[str, dict[str, tuple[float, Any]]], rows: list[str], headers: dict[str, str],
              title: str) -> Any:
    """A rich Table of ECEs: one column per key of ``by_column`` (headed ``headers[key]``), one row per name in
    ``rows`` (``by_column[column][row] = (ECE, 95 % interval or None)``); the lowest ECE of each column in
    bold green."""
    from rich.table import Table
    from rich.text import Text

    tbl = Table(title=title)
    tbl.add_column("calibrator")
    for col in by_column:
        tbl.add_column(headers.get(col, col), justify="right")
    best = {col: min(v for v, _ in cells.values()) for col, cells in by_column.items()}
    for name in rows:
        cells = []
        for col, values in by_column.items():
            value, ci = values[name]
            cells.append(Text(ece_cell(value, ci), style="bold green" if value == best[col] else ""))
        tbl.add_row(name.replace("_", " "), *cells)
    return tbl


def collecting_line(n_in_domain: int, n_shift: int, n_parameters: int) -> str:
    """What ``tokcal demo`` says before it collects."""
    return (f"collecting {n_in_domain + n_shift:,} texts ({n_in_domain:,} KJV test passages, {n_shift:,} fortunes) "
            f"with the embedded model ({n_parameters:,} parameters)")


def check_command(out: Any, limits: dict[str, float | None], check_slice: str = "group:domain") -> str:
    """The ``tokcal check`` of a demo's output (``out``) with the suggested ``limits`` (``max_ece``,
    ``max_slice_ece`` on ``check_slice``; None: not checked)."""
    cmd = f"tokcal check {out}/test.parquet --calibrator {out}/calibrator.json"
    if limits.get("max_ece") is not None:
        cmd += f" --max-ece {limits['max_ece']:g}"
    if limits.get("max_slice_ece") is not None:
        cmd += f" --slice {check_slice} --max-slice-ece {limits['max_slice_ece']:g}"
    return cmd


def demo_summary(by_domain: dict[str, dict[str, tuple[float, Any]]], rows: list[str], n_tokens: dict[str, int],
                 labels: dict[str, str], *, temperature: float, group_temperatures: dict[str, float], chosen: str,
                 selection: dict[str, float], out: Any, seconds: float, limits: dict[str, float | None],
                 check_slice: str = "group:domain") -> list[Any]:
    """What ``tokcal demo`` prints, in order: the ECE table per domain (:func:`ece_table`, each column headed
    ``labels[domain]`` and its ``n_tokens``), the fitted temperatures, the calibrator chosen to ship with its
    inner-split scores, the files written, and a ``tokcal check`` to try (:func:`check_command`)."""
    per_domain = ", ".join(f"{k} {v:.3f}" for k, v in group_temperatures.items())
    scores = ", ".join(f"{k.replace('_', ' ')} {num(v)}" for k, v in selection.items())
    headers = {d: f"{labels.get(d, d)}\n{n_tokens[d]:,} tokens" if d in n_tokens else labels.get(d, d)
               for d in by_domain}
    return [
        ece_table(by_domain, rows, headers, "Token-level ECE on the test half, 95 % cluster-bootstrap intervals"),
        f"fitted on the calibration half: one temperature T = {temperature:.3f}; per domain (shrunk to the "
        f"global one): {per_domain}",
        f"chosen to ship: {chosen.replace('_', ' ')} (lowest ECE on a held-out part of the calibration half: "
        f"{scores})",
        f"wrote {out}/report.html, evaluation.json, calibrator.json ({chosen}), evaluations/, calibrators/, "
        f"test.parquet, calibration.parquet in {seconds:.1f} s",
        f"try: {check_command(out, limits, check_slice)}",
    ]
