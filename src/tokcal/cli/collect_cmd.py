"""``tokcal collect`` (HF model -> dataset directory) and ``tokcal import-logprobs`` (API JSONL -> dataset)."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..errors import TokcalError
from ..report.terminal import plural
from ..sources.dataset import DEFAULT_FLUSH_SECONDS, DEFAULT_PART_ROWS
from . import app
from .common import (
    QUIET_HELP,
    console,
    err_console,
    friendly_errors,
    load_model,
    parse_groups,
    progress_enabled,
    refuse_overwrite,
    require_creatable_dir,
)

TASKS = ("causal", "seq2seq", "token-classification")


def _read_inputs(task: str, data: list[Path], groups: dict[str, str], paragraphs: bool, text_field: str,
                 group_fields: list[str], source_field: str, target_field: str) -> list:
    from ..sources import readers

    items: list = []
    for path in data:
        if task == "causal":
            if path.suffix == ".jsonl":
                items += readers.read_jsonl(path, text_field=text_field, group_fields=group_fields, groups=groups)
            else:
                items += readers.read_text(path, split="paragraph" if paragraphs else "file", groups=groups)
        elif task == "seq2seq":
            items += readers.read_pairs_jsonl(path, source_field=source_field, target_field=target_field,
                                              group_fields=group_fields, groups=groups)
        else:
            items += readers.read_conll(path, groups=groups)
    if not items:
        raise TokcalError("no documents in the input files")
    names = {tuple(sorted(it.groups)) for it in items}
    if len(names) > 1:
        raise TokcalError(f"input files disagree on group names: {sorted(names)} (add --group or --group-field)")
    return items


def _progress(total: int, show: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]collect"), BarColumn(), MofNCompleteColumn(), TextColumn("docs"),
        TextColumn("{task.fields[rate]:>9} tok/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err_console, transient=False, disable=not show,
    )


@app.command()
@friendly_errors
def collect(
    model_dir: Path = typer.Argument(..., help="Local model folder (from_pretrained, safetensors)."),
    data: list[Path] = typer.Argument(..., help="Input files: .txt / .jsonl (causal), .jsonl pairs (seq2seq), "
                                                "CoNLL (token-classification)."),
    out: Path = typer.Option(..., "-o", "--out", help="Dataset directory (created; a rerun resumes)."),
    task: str = typer.Option("causal", help="causal | seq2seq | token-classification"),
    top_k: int = typer.Option(32, "--top-k", help="Logits kept per token."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_length: int | None = typer.Option(None, "--max-length", help="Window / truncation length."),
    stride: int | None = typer.Option(None, "--stride", help="Sliding-window step (causal)."),
    group: list[str] = typer.Option([], "--group", help="NAME=VALUE added to every token (repeatable)."),
    group_field: list[str] = typer.Option([], "--group-field", help="JSONL field used as a group (repeatable)."),
    text_field: str = typer.Option("text", "--text-field"),
    source_field: str = typer.Option("source", "--source-field"),
    target_field: str = typer.Option("target", "--target-field"),
    paragraphs: bool = typer.Option(False, "--paragraphs", help="Plain text: one document per paragraph."),
    append_eos: bool = typer.Option(False, "--append-eos", help="Causal: also predict EOS at each document's end."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model."),
    gguf_file: str | None = typer.Option(None, "--gguf-file", help="Load the weights (and tokenizer) from this GGUF "
                                                                   "file in MODEL_DIR (dequantised; extra gguf)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show transformers' loading messages and bars."),
    part_rows: int = typer.Option(DEFAULT_PART_ROWS, "--part-rows", min=1, help="Rows per Parquet part."),
    flush_seconds: float = typer.Option(DEFAULT_FLUSH_SECONDS, "--flush-seconds", min=0.0,
                                        help="Write finished documents at least this often (a kill loses less)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Collect teacher-forced token predictions of a Hugging Face model into a Parquet dataset.

    Under ``torchrun --nproc-per-node N -m tokcal collect ...`` each process collects its share into
    the same directory. Ctrl-C (or SIGTERM) writes the finished documents, says how to resume, exits 130.
    """
    if task not in TASKS:
        raise TokcalError(f"--task must be one of {TASKS}, got {task!r}")
    refuse_overwrite({"--out": out}, [model_dir, *data])
    require_creatable_dir("--out", out)
    items = _read_inputs(task, data, parse_groups(group), paragraphs, text_field, group_field, source_field,
                         target_field)
    from ..distributed.torchrun import Shard, init_from_env, launched_by_torchrun, leave_group

    shard = Shard()
    if launched_by_torchrun():
        shard, device = init_from_env(device)
    try:
        model, tokenizer = load_model(model_dir, task, trust_remote_code, gguf_file, verbose=verbose)
        import torch

        from ..sources import hf
        from ..table import TokenTable

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        common = dict(top_k=top_k, max_length=max_length, batch_size=batch_size, device=dev, out_dir=out,
                      part_rows=part_rows, flush_seconds=flush_seconds)
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: as Ctrl-C
        try:
            skipped, new_tokens = _run(task, items, model, tokenizer, hf, common, stride, append_eos,
                                       show=shard.rank == 0 and progress_enabled(quiet),
                                       total=sum(shard.mine(i) for i in range(len(items))))
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the finished documents are written; keep it that way
            where = f" (rank {shard.rank})" if shard.world > 1 else ""
            err_console.print(f"interrupted{where}: {_done(out)} of {len(items):,} documents are saved in {out}; "
                              "run the same command again to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        if shard.rank == 0:
            n = sum(len(t) for t in TokenTable.iter_parquet(out, batch_rows=None))
            console.print(resume_message(len(items), skipped, new_tokens, n, out), highlight=False)
    finally:
        if shard.world > 1:
            leave_group()  # before exiting: a rank that leaves its process group alive can abort in teardown


def _done(out: Path) -> int:
    from ..sources.dataset import read_manifest

    try:
        m = read_manifest(out)
    except TokcalError:
        return 0
    return 0 if m is None else sum(len(p["documents"]) for p in m["parts"])


def _run(task: str, items: list, model, tokenizer, hf, common: dict, stride: int | None, append_eos: bool,
         show: bool, total: int) -> tuple[int, int]:
    """Run the task's collector with a progress bar; returns (documents skipped, tokens predicted)."""
    with _progress(total, show) as bar:
        job = bar.add_task("collect", total=total, rate="-")
        tokens, skipped = [0], [0]

        def update(docs: int, toks: int) -> None:
            if toks == 0 and tokens[0] == 0:  # documents already in the dataset, reported before any work
                skipped[0] += docs
            tokens[0] += toks
            elapsed = bar.tasks[0].elapsed or 0.0
            bar.update(job, advance=docs, rate=f"{tokens[0] / elapsed:,.0f}" if elapsed > 0 else "-")

        if task == "causal":
            hf.collect_causal(model, tokenizer, items, stride=stride, append_eos=append_eos, progress=update, **common)
        elif task == "seq2seq":
            hf.collect_seq2seq(model, tokenizer, items, progress=update, **common)
        else:
            hf.collect_token_classification(model, tokenizer, items, progress=update, **common)
    return skipped[0], tokens[0]


def resume_message(n_docs: int, skipped: int, new_tokens: int, total_tokens: int, out: Path) -> str:
    """What a (resumed) collection did: nothing, everything, or the new part of it."""
    if skipped >= n_docs:
        what = "the 1 document is" if n_docs == 1 else f"all {n_docs:,} documents are"
        return f"nothing to do: {what} already in {out} ({plural(total_tokens, 'token')}); wrote nothing"
    done = f"wrote {plural(new_tokens, 'token')} of {plural(n_docs - skipped, 'document')} to {out}"
    if skipped:
        done += f" (skipped {plural(skipped, 'document')} already there; {plural(total_tokens, 'token')} in all)"
    return done


@app.command("import-logprobs")
@friendly_errors
def import_logprobs(
    file: Path = typer.Argument(..., help="Log of server responses: JSON lines, saved server-sent events, "
                                          "one JSON document or a JSON array."),
    out: Path = typer.Option(..., "-o", "--out", help="Dataset directory to write."),
    format: str = typer.Option("auto", "--format", help="auto | openai-chat | openai-completions | vllm | tgi | "
                                                        "llama.cpp | ollama"),
    vocab: str | None = typer.Option(None, "--vocab", help="Tokenizer folder, or a tiktoken encoding name "
                                                           "(cl100k_base, o200k_base, ...), mapping tokens to ids."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Vocabulary size when no tokenizer is given."),
    tokens_are_reference: bool = typer.Option(
        False, "--tokens-are-reference", "--teacher-forced",
        help="The returned tokens are the reference text (echo / prompt scoring), so they are the labels; "
             "without it, tokens are labelled only from reference fields in the lines."),
    strict: bool = typer.Option(False, "--strict", help="A response without log-probs is an error, not skipped."),
) -> None:
    """Import top-k log-probs of OpenAI, vLLM, TGI, llama.cpp or Ollama (tail unknown) into a TokenTable dataset."""

    from ..sources.logprobs import read_logprobs, tiktoken_encoding

    refuse_overwrite({"--out": out}, [file, Path(vocab) if vocab is not None and Path(vocab).exists() else None])
    require_creatable_dir("--out", out)
    tokenizer = None
    if vocab is not None:
        if Path(vocab).is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(vocab, local_files_only=True)
        elif "/" in vocab or Path(vocab).exists():
            raise TokcalError(f"{vocab}: not a tokenizer directory")
        else:
            tokenizer = tiktoken_encoding(vocab)
    if out.exists() and any(out.glob("*.parquet")):
        raise TokcalError(f"{out}: already holds Parquet parts; choose a new directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = read_logprobs(file, format=format, tokenizer=tokenizer, vocab_size=vocab_size,
                              tokens_are_reference=tokens_are_reference, strict=strict)
    for w in caught:
        err_console.print(Text("warning: ", style="bold yellow") + Text(str(w.message)), soft_wrap=True,
                          highlight=False)
    table.write_parquet(out / "part-00000.parquet")
    if not table.labeled.any():
        warnings.warn("no token has a label, so tokcal evaluate cannot score this table: pass "
                      "--tokens-are-reference if the returned tokens are the reference text, or give the lines "
                      "reference_tokens / reference_token_ids / a reference text", stacklevel=1)
    console.print(f"wrote {plural(len(table), 'token')} ({plural(table.n_sequences, 'sequence')}, top-{table.k}, "
                  f"format: {table.source['format']}, labels: {table.source['labels']}) to {out}", highlight=False)
