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
