"""``tokcal check``: a calibration gate for CI — exit 0 when within limits, 1 with the reasons when not.

The conditions and their logic are :mod:`tokcal.gate`; this command parses the flags, runs
:func:`tokcal.gate.check` and prints one line per condition (:func:`tokcal.report.terminal.gate_lines`).
Bad input (unreadable table, calibrator or baseline, bad limits, a baseline whose metric is defined
differently: other settings or definition version; the tokcal version alone does not count) exits 2 with
``error: ...``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import QUIET_HELP, console, friendly_errors, progress_bars


@app.command()
@friendly_errors
def check(
    table: Path = typer.Argument(..., help="TokenTable (Parquet file or directory) to check.", metavar="TABLE"),
    calibrator: Path | None = typer.Option(None, "--calibrator", "-c", help="Calibrator JSON to apply first."),
    max_ece: float | None = typer.Option(None, "--max-ece", help="Largest allowed overall --metric."),
    slices: list[str] = typer.Option([], "--slice", help="Slice spec to check, e.g. group:domain, freq, type, "
                                     "position (repeatable)."),
    max_slice_ece: float | None = typer.Option(None, "--max-slice-ece", help="Largest allowed ECE per slice value."),
    min_slice_tokens: int = typer.Option(100, "--min-slice-tokens", help="Skip slice values with fewer tokens."),
    baseline: Path | None = typer.Option(None, "--baseline", help="evaluation.json to compare against."),
    max_regression: float | None = typer.Option(None, "--max-regression",
                                                help="Largest allowed increase of --metric over --baseline."),
    metric: str = typer.Option("ece", "--metric", help="Overall metric: ece, ece_debiased, smooth_ece."),
    bins: int | None = typer.Option(None, "--bins", help="Bins (default: the baseline's, else 15)."),
    binning: str | None = typer.Option(None, "--binning", help="width or mass (default: the baseline's, else width)."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for the intervals shown."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    freq_ref: Path | None = typer.Option(None, "--freq-ref", help="Reference frequency for freq slices (as "
                                         "tokcal evaluate --freq-ref)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Exit 1, with one reason per failing condition, when TABLE is worse calibrated than allowed."""
    import tokcal
    from tokcal import gate

    from ..report.terminal import gate_lines

    gate.validate_limits(max_ece=max_ece, max_slice_ece=max_slice_ece, max_regression=max_regression,
                         metric=metric, slices=slices, baseline=baseline, min_slice_tokens=min_slice_tokens)
    base = tokcal.Evaluation.from_json(baseline) if baseline is not None else None
    t = tokcal.TokenTable.read_parquet(table)
    cal = tokcal.load_calibrator(calibrator) if calibrator is not None else None
    with progress_bars(quiet) as progress:
        result = gate.check(t, cal, max_ece=max_ece, metric=metric, slices=slices, max_slice_ece=max_slice_ece,
                            min_slice_tokens=min_slice_tokens, baseline=base, max_regression=max_regression,
                            baseline_name=str(baseline), bins=bins, binning=binning, bootstrap=bootstrap,
                            seed=seed, reference=freq_ref, progress=progress)
    for line in gate_lines(result):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if not result.passed:
        raise typer.Exit(1)
