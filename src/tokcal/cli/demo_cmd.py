"""``tokcal demo``: the embedded model on held-out and shifted text, three calibrators, one report."""

from __future__ import annotations

from pathlib import Path

import typer

from ..validation import MAX_BOOTSTRAP
from . import app
from .common import QUIET_HELP, console, friendly_errors, progress_bars, quiet_transformers, require_creatable_dir


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Directory for the report and files."),
    in_domain: int = typer.Option(400, "--in-domain", min=20, help="KJV test-book passages to collect."),
    shift: int = typer.Option(600, "--shift", min=20, help="Fortunes to collect (the shifted domain)."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, max=MAX_BOOTSTRAP,
                                  help="Bootstrap resamples for the intervals."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the calibration/test split and the bootstrap."),
    verbose: bool = typer.Option(False, "--verbose", help="Show transformers' loading messages and bars."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Run the embedded demo: collect, calibrate, evaluate by domain, write report.html and JSONs."""
    from ..demo.run import run_demo, summary

    require_creatable_dir("--out", out)
    quiet_transformers(verbose)
    with progress_bars(quiet) as progress:
        result = run_demo(out, n_in_domain=in_domain, n_shift=shift, bootstrap=bootstrap, seed=seed,
                          console=console, progress=progress)
    for item in summary(result):
        console.print(item, highlight=False, soft_wrap=isinstance(item, str))
