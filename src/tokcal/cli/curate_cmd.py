"""``tokcal curate``: a challenge set and per-sequence sampling weights from a table's evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import console, friendly_errors, refuse_overwrite


@app.command()
@friendly_errors
def curate(
    table: Annotated[Path, typer.Argument(help="TokenTable (Parquet file or directory) with a vocabulary.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Challenge set, JSON Lines (a `tokcal collect` input).")],
    words_out: Annotated[Path | None, typer.Option("--words-out", help="The targets as a words: list.")] = None,
    weights_out: Annotated[Path | None, typer.Option(
        "--weights-out", help="Per-sequence sampling weights, JSON Lines {sequence_id, weight}.")] = None,
    evaluation: Annotated[Path | None, typer.Option(
        "--evaluation", "-e", help="evaluation.json of TABLE (default: evaluate it here).")] = None,
    calibrator: Annotated[Path | None, typer.Option("--calibrator", "-c", help="Calibrator JSON to apply.")] = None,
    words: Annotated[Path | None, typer.Option("--words", help="Challenge word list to mine as well.")] = None,
    context: Annotated[int, typer.Option(help="Tokens of context before each target.")] = 32,
    overconfident: Annotated[int, typer.Option(help="Most confident wrong predictions to take.")] = 50,
    per_token: Annotated[int, typer.Option(help="Rows per worst token.")] = 3,
    per_slice: Annotated[int, typer.Option(help="Rows per significant slice value.")] = 5,
    boost: Annotated[float, typer.Option(help="Weight boost of a sequence made only of hard tokens.")] = 4.0,
    rare_rank: Annotated[int, typer.Option(help="Frequency rank from which a gold token is rare.")] = 1000,
    freq_ref: Annotated[Path | None, typer.Option(
        "--freq-ref", help="Reference frequency for rare tokens: counts JSON, TokenTable or text corpus.")] = None,
) -> None:
    """Mine TABLE's most miscalibrated contexts into a challenge set (and weights for fine-tuning)."""
    from ..calibrators import load_calibrator
    from ..curate import challenge_set, sampling_weights, write_challenge, write_weights
    from ..evaluation import Evaluation
    from ..table import TokenTable

    refuse_overwrite({"--out": out, "--words-out": words_out, "--weights-out": weights_out},
                     [table, evaluation, calibrator, words, freq_ref])
    t = TokenTable.read_parquet(table)
    cal = load_calibrator(calibrator) if calibrator is not None else None
    ev = Evaluation.from_json(evaluation) if evaluation is not None else None
    if ev is None:
        from ..evaluation import evaluate

        ev = evaluate(t, calibrator=cal, bootstrap=200, seed=0)
    items = challenge_set(t, ev, calibrator=cal, context=context, overconfident=overconfident,
                          per_token=per_token, per_slice=per_slice, words=words)
    weights = None if weights_out is None else sampling_weights(t, ev, calibrator=cal, boost=boost,
                                                                rare_rank=rare_rank, freq_ref=freq_ref)
    write_challenge(items, out, words_out)
    reasons: dict[str, int] = {}
    for it in items:
        reasons[it.reason] = reasons.get(it.reason, 0) + 1
    console.print(f"wrote {out}: {len(items)} contexts ("
                  + ", ".join(f"{k} {v}" for k, v in reasons.items()) + ")", highlight=False)
    if words_out is not None:
        console.print(f"wrote {words_out}", highlight=False)
    if weights_out is not None and weights is not None:
        seq, w = weights
        write_weights(seq, w, weights_out)
        console.print(f"wrote {weights_out}: {len(seq)} sequences, weights {w.min():.3f} to {w.max():.3f}",
                      highlight=False)
