"""``tokcal annotate`` and ``tokcal generate``: calibrated per-token confidence and calibrated decoding.

Models load from a local folder only (``from_pretrained``, safetensors weights, no code shipped with
the model unless ``--trust-remote-code``). On a terminal the text is coloured by confidence; piped
(or with ``--format``), one line per token (TSV with a header, or JSON lines). The display itself is
:mod:`tokcal.report.annotation`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from ..errors import ParameterError, TokcalError
from ..report.annotation import html_page, jsonl_lines, legend, rich_text, tsv_lines
from ..report.data import write_file
from . import app
from .common import console, err_console, friendly_errors, load_model, parse_groups, refuse_overwrite

FORMATS = ("auto", "text", "tsv", "jsonl")
_GROUP_HELP = ("NAME=VALUE given to group and adaptive calibrators for every token, e.g. domain=kjv "
               "(repeatable).")


def _load(model_dir: Path, calibrator: Path, abstainer: Path | None, trust_remote_code: bool, verbose: bool,
          gguf_file: str | None = None):
    from ..calibrators import load_calibrator
    from ..integrations.abstain import Abstainer

    cal = load_calibrator(calibrator)
    ab = Abstainer.load(abstainer) if abstainer is not None else None
    model, tokenizer = load_model(model_dir, "causal", trust_remote_code, gguf_file, verbose=verbose)
    return model, tokenizer, cal, ab


def needed_groups(cal: Any) -> dict[str, list[str]]:
    """``{group name: values seen in fitting}`` that a (possibly wrapped) calibrator reads from its context."""
    from ..calibrators import AdaptiveTemperature, GroupTemperature
    from ..calibrators.group import FREQ, TOKEN_TYPE

    inner = getattr(cal, "calibrator", None)  # Selective wraps another calibrator
    if inner is not None:
        return needed_groups(inner)
    if isinstance(cal, GroupTemperature) and cal.by not in (TOKEN_TYPE, FREQ):  # those come from the token
        return {cal.by: sorted(cal.temperatures or {})}
    if isinstance(cal, AdaptiveTemperature):
        return {name: list(cal.categories.get(name, [])) for name in cal.groups}
    return {}


def check_groups(cal: Any, groups: dict[str, str], calibrator: Path) -> None:
    """A group or adaptive calibrator needs ``--group NAME=VALUE`` for each group it was fitted with."""
    for name, values in needed_groups(cal).items():
        if name not in groups:
            seen = f" (values seen in fitting: {', '.join(values)})" if values else ""
            raise TokcalError(f"{calibrator}: this calibrator depends on the group '{name}'; pass "
                              f"--group {name}=VALUE{seen}")


def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ParameterError(f"{{fmt}} must be one of {', '.join(FORMATS)}, got {ParameterError.quote(repr(fmt))}")
    if fmt == "auto":
        return "text" if console.is_terminal else "tsv"
    return fmt


def _show(anns: list[Any], html_out: Path | None, title: str, fmt: str, prompt: str | None = None) -> None:
    if fmt == "text":
        if prompt is not None:
            console.print(Text(prompt, style="bold"), end="")
        for ann in anns:
            console.print(rich_text(ann))
            if ann.review_spans:
                n = len(ann.review_spans)
                console.print(Text(f"{n} span{'' if n == 1 else 's'} flagged for review", style="dim"))
        console.print(legend())
    else:
        lines = tsv_lines(anns) if fmt == "tsv" else jsonl_lines(anns)
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    if html_out is not None:
        page = html_page(anns, title)
        write_file(html_out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        # on stderr when the token lines go to stdout, so a pipe reads only them
        (console if fmt == "text" else err_console).print(f"wrote {html_out}", highlight=False)


@app.command()
@friendly_errors
def annotate(
    model_dir: Path = typer.Argument(..., help="Local causal LM folder (from_pretrained, safetensors)."),
    calibrator: Path = typer.Option(..., "--calibrator", "-c", help="Calibrator JSON (tokcal fit)."),
    text: str | None = typer.Option(None, "--text", help="Text to annotate."),
    file: Path | None = typer.Option(None, "--file", help="UTF-8 text file to annotate."),
    group: list[str] = typer.Option([], "--group", help=_GROUP_HELP),
    fmt: str = typer.Option("auto", "--format", help="text (coloured), tsv or jsonl; auto: text on a terminal, "
                                                    "tsv when piped."),
    html_out: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page."),
    abstainer: Path | None = typer.Option(None, "--abstainer", help="Abstainer JSON: flag low-confidence tokens."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model."),
    gguf_file: str | None = typer.Option(None, "--gguf-file", help="Load the model from this GGUF file in MODEL_DIR."),
    verbose: bool = typer.Option(False, "--verbose", help="Show transformers' loading messages and bars."),
) -> None:
    """Show TEXT token by token with the model's calibrated confidence."""
    from ..integrations.annotate import annotate as run

    if (text is None) == (file is None):
        raise TokcalError("give exactly one of --text or --file")
    refuse_overwrite({"--html": html_out}, [model_dir, calibrator, file, abstainer])
    groups = parse_groups(group)
    fmt = _format(fmt)
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokcalError(f"{file}: cannot read text ({e})") from None
    model, tokenizer, cal, ab = _load(model_dir, calibrator, abstainer, trust_remote_code, verbose, gguf_file)
    check_groups(cal, groups, calibrator)
    ann = run(model, tokenizer, text, cal, abstainer=ab, groups=groups or None)
    _show([ann], html_out, f"tokcal annotate — {model_dir.name}", fmt)


@app.command()
@friendly_errors
def generate(
    model_dir: Path = typer.Argument(..., help="Local causal LM folder (from_pretrained, safetensors)."),
    calibrator: Path = typer.Option(..., "--calibrator", "-c", help="Calibrator JSON (tokcal fit)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt to continue."),
    group: list[str] = typer.Option([], "--group", help=_GROUP_HELP),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling on the calibrated probabilities."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling on the calibrated probabilities (0 = off)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature on top of calibration."),
    max_new_tokens: int = typer.Option(50, "--max-new-tokens", min=1),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sampler."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding instead of sampling."),
    fmt: str = typer.Option("auto", "--format", help="text (coloured), tsv or jsonl; auto: text on a terminal, "
                                                    "tsv when piped."),
    html_out: Path | None = typer.Option(None, "--html", help="Also write the annotated continuation as HTML."),
    abstainer: Path | None = typer.Option(None, "--abstainer", help="Abstainer JSON: flag low-confidence tokens."),
    allow_argmax_change: bool = typer.Option(False, "--allow-argmax-change",
                                             help="Decode with a calibrator that may change the top token."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model."),
    gguf_file: str | None = typer.Option(None, "--gguf-file", help="Load the model from this GGUF file in MODEL_DIR."),
    verbose: bool = typer.Option(False, "--verbose", help="Show transformers' loading messages and bars."),
) -> None:
    """Continue PROMPT sampling from calibrated probabilities; show it with its per-token confidence."""
    import torch

    from ..integrations.annotate import annotate as run
    from ..integrations.hf_generate import generate as gen
    from ..validation import SamplingParams, check_params

    check_params("generate", SamplingParams, top_p=top_p, top_k=top_k, temperature=temperature,
                 max_new_tokens=max_new_tokens, seed=seed)
    refuse_overwrite({"--html": html_out}, [model_dir, calibrator, abstainer])
    groups = parse_groups(group)
    fmt = _format(fmt)
    model, tokenizer, cal, ab = _load(model_dir, calibrator, abstainer, trust_remote_code, verbose, gguf_file)
    check_groups(cal, groups, calibrator)
    torch.manual_seed(seed)
    sampling: dict[str, Any] = {"do_sample": not greedy}
    if not greedy:
        sampling.update(top_p=top_p, top_k=top_k, temperature=temperature)
    out = gen(model, tokenizer, prompt, cal, allow_argmax_change=allow_argmax_change, groups=groups or None,
              max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_logits=True, **sampling)
    ann = run(model, tokenizer, out, cal, abstainer=ab, groups=groups or None)[0]
    _show([ann], html_out, f"tokcal generate — {model_dir.name}", fmt, prompt=prompt)
