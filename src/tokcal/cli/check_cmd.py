"""``tokcal check``: a calibration gate for CI — exit 0 when within limits, 1 with the reasons when not.

Conditions (each one reported on its own line, passing or failing):

* ``--max-ece X``: the overall ``--metric`` (ece, ece_debiased or smooth_ece) is at most X;
* ``--slice SPEC --max-slice-ece Y``: every value of each slice with at least ``--min-slice-tokens``
  tokens has a binned ECE of at most Y;
* ``--baseline EVAL.json --max-regression Z``: the metric exceeds the baseline's by at most Z. The
  two numbers must have the same definition (their signatures agree on every setting and on the
  definition version; the tokcal version does not count); otherwise the check refuses (exit 2).

Bad input (unreadable table, calibrator or baseline, bad limits) exits 2 with ``error: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ..errors import ValidationError
from ..metrics.signature import definition_differences
from . import app
from .common import console, friendly_errors

METRICS = ("ece", "ece_debiased", "smooth_ece")


@dataclass(frozen=True)
class Outcome:
    """One checked condition: did it pass, and the sentence that says why."""

    ok: bool
    message: str


def _num(x: Any) -> str:
    return "undefined" if x is None else f"{float(x):.4f}"


def _ci(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f" (95% CI {float(ci[0]):.4f} to {float(ci[1]):.4f})"
    return ""


def _limit(name: str, value: float | None) -> None:
    if value is not None and not (value >= 0 and value < float("inf")):
        raise ValidationError(f"{name} must be a finite number >= 0, got {value}")


def check_overall(ev: Mapping[str, Any], metric: str, max_value: float) -> Outcome:
    """The overall ``metric`` of ``ev`` (an evaluation dict) is at most ``max_value``."""
    o = ev["overall"]
    value = o.get(metric)
    text = f"{metric} = {_num(value)}{_ci((o.get('ci') or {}).get(metric))}"
    if value is None:
        return Outcome(False, f"{text}: undefined, cannot be checked against --max-ece {max_value:g}")
    if value > max_value:
        return Outcome(False, f"{text} exceeds --max-ece {max_value:g}")
    return Outcome(True, f"{text} <= --max-ece {max_value:g}")


def check_slices(ev: Mapping[str, Any], names: list[str], max_value: float, min_tokens: int) -> list[Outcome]:
    """Every value of each slice in ``names`` with at least ``min_tokens`` tokens has ECE <= ``max_value``."""
    slices = ev.get("slices") or {}
    outcomes = []
    for name in names:
        if name not in slices:
            have = ", ".join(slices) or "none"
            raise ValidationError(f"slice {name!r} is not in the evaluation (slices evaluated: {have})")
        small = [r for r in slices[name] if (r.get("n") or 0) < min_tokens]
        for r in slices[name]:
            if (r.get("n") or 0) < min_tokens:
                continue
            where = f"slice {name}={r.get('value')} ({r.get('n')} tokens): ece = {_num(r.get('ece'))}"
            where += _ci(r.get("ece_ci"))
            if r.get("ece") is None or r["ece"] > max_value:
                outcomes.append(Outcome(False, f"{where} exceeds --max-slice-ece {max_value:g}"))
            else:
                outcomes.append(Outcome(True, f"{where} <= --max-slice-ece {max_value:g}"))
        if small:
            values = ", ".join(str(r.get("value")) for r in small)
            outcomes.append(Outcome(True, f"slice {name}: not checked (< {min_tokens} tokens): {values}"))
    return outcomes


def check_regression(ev: Mapping[str, Any], baseline: Mapping[str, Any], metric: str, max_increase: float,
                     baseline_name: str = "baseline") -> Outcome:
    """``metric`` rose by at most ``max_increase`` over the baseline; refuses a baseline whose metric is
    defined differently (:func:`tokcal.metrics.definition_differences`: settings and definition version,
    not the tokcal version)."""
    ours = (ev.get("signatures") or {}).get(metric)
    theirs = (baseline.get("signatures") or {}).get(metric)
    if theirs is None:
        raise ValidationError(f"{baseline_name}: has no signature for {metric}; cannot compare")
    diffs = definition_differences(theirs, ours) if ours is not None else ["no signature"]
    if diffs:  # definitions, not strings: another tokcal version alone is comparable
        raise ValidationError(
            f"{metric} of this table and of {baseline_name} are defined differently and are not "
            f"comparable ({'; '.join(diffs)}, baseline vs now):\n  this table: {ours}\n  baseline:   {theirs}\n"
            "re-run the baseline with the same settings (or pass matching --bins/--binning)"
        )
    now, before = ev["overall"].get(metric), baseline["overall"].get(metric)
    if now is None or before is None:
        return Outcome(False, f"{metric}: undefined (now {_num(now)}, {baseline_name} {_num(before)})")
    text = (f"{metric} = {_num(now)} vs {_num(before)} in {baseline_name}: change {now - before:+.4f}")
    if now - before > max_increase:
        return Outcome(False, f"{text} exceeds --max-regression {max_increase:g}")
    return Outcome(True, f"{text} <= --max-regression {max_increase:g}")


@app.command()
@friendly_errors
def check(
    table: Path = typer.Argument(..., help="TokenTable (Parquet file or directory) to check."),
    calibrator: Path | None = typer.Option(None, "--calibrator", "-c", help="Calibrator JSON to apply first."),
    max_ece: float | None = typer.Option(None, "--max-ece", help="Largest allowed overall --metric."),
    slices: list[str] = typer.Option([], "--slice", help="Slice spec to check, e.g. group:domain, freq, type, "
                                     "position (repeatable)."),
    max_slice_ece: float | None = typer.Option(None, "--max-slice-ece", help="Largest allowed ECE per slice value."),
    min_slice_tokens: int = typer.Option(100, "--min-slice-tokens", help="Skip slice values with fewer tokens."),
    baseline: Path | None = typer.Option(None, "--baseline", help="evaluation.json to compare against."),
    max_regression: float | None = typer.Option(None, "--max-regression",
                                                help="Largest allowed increase of --metric over --baseline."),
    metric: str = typer.Option("ece", "--metric", help=f"Overall metric: {', '.join(METRICS)}."),
    bins: int | None = typer.Option(None, "--bins", help="Bins (default: the baseline's, else 15)."),
    binning: str | None = typer.Option(None, "--binning", help="width or mass (default: the baseline's, else width)."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for the intervals shown."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    freq_ref: Path | None = typer.Option(None, "--freq-ref", help="Reference frequency for freq slices (as "
                                         "tokcal evaluate --freq-ref)."),
) -> None:
    """Exit 1, with one reason per failing condition, when TABLE is worse calibrated than allowed."""
    import tokcal

    from ..report.data import as_dict, load_evaluation
    from ..slices import parse_slices

    if metric not in METRICS:
        raise ValidationError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    for name, value in (("--max-ece", max_ece), ("--max-slice-ece", max_slice_ece),
                        ("--max-regression", max_regression)):
        _limit(name, value)
    if (baseline is None) != (max_regression is None):
        raise ValidationError("--baseline and --max-regression go together")
    if bool(slices) != (max_slice_ece is not None):
        raise ValidationError("--slice and --max-slice-ece go together")
    if max_ece is None and max_slice_ece is None and max_regression is None:
        raise ValidationError("nothing to check: give --max-ece, --slice/--max-slice-ece or "
                              "--baseline/--max-regression")

    base = load_evaluation(baseline) if baseline is not None else None
    settings = (base or {}).get("settings") or {}
    bins = bins if bins is not None else int(settings.get("bins") or 15)
    binning = binning if binning is not None else str(settings.get("binning") or "width")

    t = tokcal.TokenTable.read_parquet(table)
    parsed = parse_slices(slices, t, reference=freq_ref) if slices else []
    cal = tokcal.load_calibrator(calibrator) if calibrator is not None else None
    ev = as_dict(tokcal.evaluate(t, calibrator=cal, slices=parsed, bins=bins, binning=binning,
                                 bootstrap=bootstrap, seed=seed), name=str(table))

    outcomes: list[Outcome] = []
    if max_ece is not None:
        outcomes.append(check_overall(ev, metric, max_ece))
    if slices:
        outcomes += check_slices(ev, [s.name for s in parsed], max_slice_ece, min_slice_tokens)
    if base is not None:
        outcomes.append(check_regression(ev, base, metric, max_regression, baseline_name=str(baseline)))

    sig = (ev.get("signatures") or {}).get(metric) or ev.get("signature")
    for o in outcomes:
        console.print(f"{'ok  ' if o.ok else 'FAIL'} {o.message}", highlight=False, soft_wrap=True, markup=False)
    failed = sum(not o.ok for o in outcomes)
    console.print(f"signature: {sig}", highlight=False, soft_wrap=True, markup=False)
    if failed:
        console.print(f"check failed: {failed} condition(s) not met", highlight=False, markup=False)
        raise typer.Exit(1)
    console.print("check passed", highlight=False, markup=False)
