"""``tokcal fit``: fit a calibrator on a TokenTable, report before/after on held-out sequences, save JSON."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from ..progress import prefixed, report
from ..report.terminal import plural
from . import app
from .common import QUIET_HELP, console, err_console, friendly_errors, progress_bars, refuse_overwrite

METHODS = ("temperature", "group", "adaptive", "histogram", "isotonic", "beta", "selective", "conformal")


def build_calibrator(method: str, *, by: str | None, alpha: float, threshold: float, score: str,
                     inner: str, bins: int, seed: int) -> Any:
    """The calibrator ``tokcal fit --method`` names (unfitted)."""
    from .. import calibrators as C
    from ..errors import ParameterError

    if method not in METHODS:
        raise ParameterError(f"{{method}} must be one of {', '.join(METHODS)}, "
                             f"got {ParameterError.quote(repr(method))}")
    if method == "temperature":
        return C.Temperature(seed=seed)
    if method == "group":
        return C.GroupTemperature(by or "domain", seed=seed)
    if method == "adaptive":
        return C.AdaptiveTemperature(groups=(by,) if by else (), seed=seed)
    if method == "histogram":
        return C.HistogramBinning(bins)
    if method == "isotonic":
        return C.Isotonic()
    if method == "beta":
        return C.BetaCalibration()
    if method == "selective":
        if inner in ("selective", "conformal"):
            raise ParameterError(f"{{inner}} must be a plain method (not selective or conformal), got {inner!r}")
        return C.Selective(build_calibrator(inner, by=by, alpha=alpha, threshold=threshold, score=score,
                                            inner=inner, bins=bins, seed=seed), threshold)
    return C.ConformalTokenSets(alpha, score, seed=seed)


@app.command("fit")
@friendly_errors
def fit_command(
    table: Path = typer.Argument(..., help="TokenTable: Parquet file or dataset directory."),
    method: str = typer.Option("temperature", "--method", "-m",
                                help="Calibration method, one of: " + ", ".join(METHODS) + "."),
    output: Path = typer.Option(..., "--out", "-o", "--output", help="Where to write the calibrator JSON "
                                                                    "(--output: the same)."),
    by: str = typer.Option(None, "--by", help="Group column (group: default 'domain', or 'token_type', or "
                                              "'freq' (frequency bucket of the predicted token, see --freq-ref); "
                                              "adaptive: one-hot this group)."),
    holdout: float = typer.Option(0.2, "--holdout", help="Share of sequences held out for the before/after "
                                                         "report (0: fit on everything, no report)."),
    alpha: float = typer.Option(0.1, "--alpha", help="conformal: miscoverage level."),
    threshold: float = typer.Option(0.5, "--threshold", help="selective: calibrate tokens below this confidence."),
    score: str = typer.Option("lac", "--score", help="conformal: lac|aps."),
    inner: str = typer.Option("temperature", "--inner", help="selective: the wrapped method."),
    bins: int = typer.Option(15, "--bins", help="ECE bins (and histogram-binning bins)."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Cluster-bootstrap replicates for the intervals."),
    seed: int = typer.Option(0, "--seed"),
    freq_ref: Path | None = typer.Option(None, "--freq-ref", help="Reference frequency (as tokcal evaluate "
                                         "--freq-ref) of adaptive's frequency feature (default: the fitting "
                                         "table's counts) or of group --by freq's buckets."),
    stream: bool | None = typer.Option(None, "--stream/--in-memory",
                                       help="Fit (temperature, group) and report by passes over TABLE in batches, in "
                                            "bounded memory. Default: when the table is large against the free "
                                            "memory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Fit a calibrator; print held-out ECE/NLL/Brier before and after; write it as JSON."""
    from ..calibrators import held_out_metrics
    from ..calibrators.hygiene import held_out_split
    from ..distributed.stats import should_stream
    from ..errors import ParameterError, ValidationError
    from ..table import TokenTable
    from ..validation import EvaluateParams, check_params

    refuse_overwrite({"--output": output}, [table])
    check_params("evaluate", EvaluateParams, bins=bins, bootstrap=bootstrap, seed=seed)  # before any fitting
    if not 0.0 <= holdout < 1.0:
        raise ParameterError(f"{{holdout}} must be in [0, 1) (0: fit on everything), got {holdout!r}")
    cal = build_calibrator(method, by=by, alpha=alpha, threshold=threshold, score=score, inner=inner,
                           bins=bins, seed=seed)
    if freq_ref is not None and method != "adaptive" and not (method == "group" and by == "freq"):
        raise ValidationError(f"--freq-ref: --method {method} uses no token frequency (adaptive and "
                              "group --by freq do)")
    streamable = method in ("temperature", "group", "histogram")
    if streamable and should_stream(table, stream):
        _fit_streamed(table, cal, method, output, holdout, bins, bootstrap, seed, freq_ref, quiet)
        return
    if stream:
        raise ValidationError(f"--stream: method {method!r} needs the table in memory (streamed: temperature, "
                              "group and histogram); use --in-memory, on the table or on a sample of it (some of its "
                              "part files)")
    data = TokenTable.read_parquet(table)
    blocks = False  # split by contiguous blocks (one long document, few sequences): say so
    if holdout > 0:
        split = held_out_split(data, holdout, seed)
        train, test, blocks = split.fit, split.held_out, split.message is not None
        if blocks:
            console.print(f"note: {split.message}", highlight=False, markup=False, soft_wrap=True)
    else:
        train, test = data, None
    with progress_bars(quiet) as progress, _calibration_warnings():
        report(progress, "fit", 0, 1)
        cal.fit(train, **({} if freq_ref is None else {"freq_reference": freq_ref}))
        report(progress, "fit", 1, 1)
    cal.save(output)
    console.print(Text.assemble("fitted ", (method, "bold"), f" on {plural(int(train.labeled.sum()), 'token')} "
                                f"({plural(train.n_sequences, _unit(blocks))}): {cal!r}"), highlight=False)
    if test is None:
        console.print(f"wrote {output}")
        return
    if method == "conformal":
        with _calibration_warnings():
            cov = cal.coverage(test, slices=by)
        o = cov["overall"]
        console.print(f"held out ({plural(o['n'], 'token')}): coverage {o['coverage']:.4f} "
                      f"(target {cov['target']:.3f}), listed sets {o['listed_coverage']:.4f}, "
                      f"mean set size {o['mean_set_size']:.2f}, truncated {o['truncated']:.3f}", highlight=False)
        if not cov["guarantee"]:
            console.print("coverage guarantee: FAILED (sets truncated at the table's top-k)", highlight=False)
        console.print(f"wrote {output}")
        return
    with progress_bars(quiet) as progress:
        before = held_out_metrics(test, None, bins=bins, bootstrap=bootstrap, seed=seed,
                                  progress=prefixed(progress, "held out, before:"))
        after = held_out_metrics(test, cal, bins=bins, bootstrap=bootstrap, seed=seed,
                                 progress=prefixed(progress, "held out, after:"))
    _print_held_out(before, after, test.n_sequences, _unit(blocks), output)


def _print_held_out(before: dict[str, Any], after: dict[str, Any], n_units: int, unit: str, output: Path) -> None:
    from ..calibrators.hygiene import HELD_OUT_METRICS

    tab = Table(title=f"held out: {plural(before['n'], 'token')}, {plural(n_units, unit)} "
                      "(95% bootstrap intervals, as tokcal evaluate)")
    tab.add_column("metric")
    tab.add_column("before", justify="right")
    tab.add_column("after", justify="right")
    for key in HELD_OUT_METRICS:
        tab.add_row(key, _fmt(before, key), _fmt(after, key))
    console.print(tab)
    console.print(f"wrote {output}")


def _unit(blocks: bool) -> str:
    return "block" if blocks else "sequence"


def _fit_streamed(table: Path, cal: Any, method: str, output: Path, holdout: float, bins: int, bootstrap: int,
                  seed: int, freq_ref: Path | None, quiet: bool = False) -> None:
    """``tokcal fit`` by passes over the table in batches: the same split (by sequences or blocks), fit and
    report as in memory."""
    from ..calibrators.hygiene import held_out_row
    from ..distributed.fit import Batches, StreamSplit, fit_stream
    from ..distributed.stats import evaluate_stream

    split = StreamSplit(table, holdout, seed) if holdout > 0 else None
    if split is not None and split.message is not None:
        console.print(f"note: {split.message}", highlight=False, markup=False, soft_wrap=True)
    with progress_bars(quiet) as progress, _calibration_warnings():
        fit_stream(cal, Batches(table, select=split.fit if split else None, progress=prefixed(progress, "fit:")),
                   freq_reference=freq_ref)
    cal.save(output)
    n = sum(cal.counts.values()) if method == "group" else cal.fit_info["n"]
    unit = _unit(split is not None and split.blocks)
    units = f"{plural(split.n_fit_units, unit)}, streamed" if split else "streamed"
    console.print(Text.assemble("fitted ", (method, "bold"), f" on {plural(n, 'token')} ({units}): {cal!r}"),
                  highlight=False)
    if split is None:
        console.print(f"wrote {output}")
        return
    with progress_bars(quiet) as progress:
        rows = [held_out_row(evaluate_stream(table, c, slices=[], bins=bins, bootstrap=bootstrap, seed=seed,
                                             worst=0, select=split.held_out,
                                             progress=prefixed(progress, f"held out, {when}:")).overall, bootstrap)
                for c, when in ((None, "before"), (cal, "after"))]
    _print_held_out(rows[0], rows[1], split.n_out, unit, output)


@contextlib.contextmanager
def _calibration_warnings() -> Iterator[None]:
    """Print each CalibrationWarning raised inside the block as ``warning: ...`` (once each)."""
    from ..calibrators import CalibrationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        yield
    seen: list[str] = []
    for w in caught:
        if issubclass(w.category, CalibrationWarning) and str(w.message) not in seen:
            seen.append(str(w.message))
            err_console.print(Text("warning: ", style="bold yellow") + Text(str(w.message)), soft_wrap=True)
        elif not issubclass(w.category, CalibrationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _fmt(m: dict[str, Any], key: str) -> str:
    if m.get(f"{key}_lo") is not None and m.get(f"{key}_hi") is not None:
        return f"{m[key]:.4f} [{m[f'{key}_lo']:.4f}, {m[f'{key}_hi']:.4f}]"
    return f"{m[key]:.4f}"
