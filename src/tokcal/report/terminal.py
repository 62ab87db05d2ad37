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
