"""``tokcal evaluate`` (calibration report of a TokenTable) and ``tokcal synth`` (synthetic table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ValidationError
from . import app
from .common import QUIET_HELP, console, friendly_errors, progress_bars, refuse_overwrite


@app.command()
@friendly_errors(aliases={"slices": "--slice"})
def evaluate(
    table: Annotated[Path, typer.Argument(help="TokenTable: a Parquet file or a directory of parts.")],
    calibrator: Annotated[Path | None, typer.Option("--calibrator", "-c", help="Calibrator JSON to apply.")] = None,
    slice_: Annotated[list[str] | None, typer.Option(
        "--slice", "-s", help="Slice spec (repeatable): freq, freq:predicted, type, type:predicted, "
        "group:NAME, position, words:FILE. Default: freq, freq:predicted, type, position, all groups.")] = None,
    bins: Annotated[int, typer.Option(help="Reliability bins.")] = 15,
    binning: Annotated[str, typer.Option(help="width or mass.")] = "width",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (0: no intervals).")] = 200,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    unit: Annotated[str, typer.Option(help="Resampling unit: auto (sequences; contiguous blocks when there are "
                                           "fewer than 30 sequences or one holds most tokens), sequence or "
                                           "block.")] = "auto",
    block_length: Annotated[int | None, typer.Option(
        "--block-length", help="Positions per block (default: the collection's max_length, else 256).")] = None,
    freq_ref: Annotated[Path | None, typer.Option(
        "--freq-ref", help="Reference frequency for the freq slices: a counts JSON {\"counts\": [...]}, a "
        "TokenTable (Parquet file or directory) or a text corpus. Default: id order for byte-level BPE, "
        "else the table itself (with a warning).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write Evaluation.to_dict() as JSON here.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML report here.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of this evaluation in the HTML report "
                                             "(default: the table's file or folder name).")] = None,
    stream: Annotated[bool | None, typer.Option(
        "--stream/--in-memory", help="Read TABLE in batches, in bounded memory (AURC from fine bins; mass "
        "binning: its exact edges by extra passes). "
        "Default: stream when the table is large against the free memory.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Measure token-level calibration of TABLE and print the summary."""
    from ..evaluation import evaluate as run_evaluate
    from ..table import TokenTable

    words = [Path(s.partition(":")[2]) for s in slice_ or [] if s.startswith("words:")]
    refuse_overwrite({"--json": json_out, "--html": html_out}, [table, calibrator, *words])
    cal = None
    if calibrator is not None:
        from ..calibrators import load_calibrator

        cal = load_calibrator(calibrator)
    from ..distributed.stats import evaluate_stream, should_stream

    if should_stream(table, stream, binning):
        with progress_bars(quiet) as progress:
            ev = evaluate_stream(table, calibrator=cal, slices=slice_ or None, bins=bins, binning=binning,
                                 bootstrap=bootstrap, seed=seed, freq_ref=freq_ref, unit=unit,
                                 block_length=block_length, progress=progress)
        tbl = next(TokenTable.iter_parquet(table, batch_rows=1))  # its metadata
    else:
        tbl = TokenTable.read_parquet(table)
        with progress_bars(quiet) as progress:
            ev = run_evaluate(tbl, calibrator=cal, slices=slice_ or None, bins=bins, binning=binning,
                              bootstrap=bootstrap, seed=seed, freq_ref=freq_ref, unit=unit, block_length=block_length,
                              progress=progress)
    if json_out is not None:
        ev.to_json(json_out)
    if html_out is not None:
        from ..report import write_html

        label = name or (Path(table).stem if Path(table).suffix else Path(table).name) or "evaluation"
        files = {"table": str(table), "calibrators": {label: str(calibrator)} if calibrator else {},
                 "evaluations": {label: str(json_out)} if json_out else {}}
        write_html(html_out, {label: ev}, files=files)
    ev.print_summary(console)
    for path in (json_out, html_out):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


@app.command()
@friendly_errors(aliases={"n_tokens": "--n", "vocab_size": "--vocab", "beta_star": "--beta"})
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output Parquet file.")],
    n: Annotated[int, typer.Option("--n", help="Number of tokens.")] = 20000,
    vocab: Annotated[int, typer.Option("--vocab", help="Vocabulary size.")] = 1000,
    beta: Annotated[float, typer.Option("--beta", help="True inverse temperature beta* (1 = calibrated).")] = 1.0,
    domains: Annotated[str | None, typer.Option(
        "--domains", help="Domains with their beta*, e.g. news=0.7,code=1.5 (overrides --beta).")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a synthetic TokenTable whose labels follow softmax(beta* z) (known calibration)."""
    from ..synthetic import make_table

    table = make_table(n, vocab, beta_star=beta, domains=_parse_domains(domains) if domains else None,
                       seq_len=seq_len, seed=seed)
    table.write_parquet(out)
    console.print(f"wrote {out}: {table!r}", highlight=False)


def _parse_domains(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, eq, value = part.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValidationError(f"--domains must be NAME=BETA pairs such as news=0.7,code=1.5, got {part!r}") \
                from None
    return out
