"""``tokcal annotate`` and ``tokcal generate``: calibrated per-token confidence and calibrated decoding.

Models load from a local folder only (``from_pretrained``, safetensors weights, no code shipped with
the model unless ``--trust-remote-code``).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from .._io import atomic_write
from ..errors import TokcalError
from . import app
from .common import console, friendly_errors, load_model, refuse_overwrite

_BUCKETS = ((0.3, "bold red"), (0.6, "yellow"), (0.85, "green"), (math.inf, "bold green"))


def _style(conf: float, flagged: bool) -> str:
    if not math.isfinite(conf):
        return "dim"
    style = next(s for edge, s in _BUCKETS if conf < edge)
    return style + (" underline" if flagged else "")


def rich_text(ann: Any) -> Text:
    """The annotated text, each token coloured by its calibrated confidence (flagged tokens underlined)."""
    out = Text()
    for i in range(len(ann)):
        flagged = bool(ann.flagged[i]) if ann.flagged is not None else False
        out.append(ann.token_text(i), style=_style(float(ann.confidence[i]), flagged))
    return out


def _legend() -> Text:
    t = Text("confidence: ")
    lo = 0.0
    for edge, style in _BUCKETS:
        t.append(f"[{lo:.2f}, {min(edge, 1.0):.2f}{']' if edge > 1 else ')'} ", style=style)
        lo = edge
    return t


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "n/a"


def html_page(anns: list[Any], title: str) -> str:
    """A self-contained HTML page (inline CSS, no scripts) of annotated texts; hover shows the numbers."""
    blocks = []
    for ann in anns:
        spans = []
        for i in range(len(ann)):
            c = float(ann.confidence[i])
            hue = 120.0 * c if math.isfinite(c) else 0.0
            bg = f"hsl({hue:.0f},75%,{85 if math.isfinite(c) else 95}%)"
            tip = (f"id {int(ann.token_ids[i])} | p(token) {_fmt(float(ann.prob[i]))} "
                   f"(raw {_fmt(float(ann.raw_prob[i]))}) | confidence {_fmt(c)} | "
                   f"entropy {_fmt(float(ann.entropy[i]))}")
            if ann.set_size is not None and ann.set_size[i] >= 0:
                tip += f" | set size {int(ann.set_size[i])}"
            flagged = ann.flagged is not None and bool(ann.flagged[i])
            cls = ' class="flag"' if flagged else ""
            spans.append(f'<span{cls} style="background:{bg}" title="{html.escape(tip, quote=True)}">'
                         f"{html.escape(ann.token_text(i))}</span>")
        blocks.append(f"<pre>{''.join(spans)}</pre>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:60em}"
        "pre{white-space:pre-wrap;font-size:1.05em;line-height:1.6;border:1px solid #ccc;padding:1em}"
        "span.flag{text-decoration:underline wavy #b00;text-underline-offset:3px}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Background: calibrated confidence of the model's top choice "
        "(red = low, green = high); wavy underline: flagged for review. Hover a token for its numbers.</p>"
        f"{''.join(blocks)}</body></html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write ``page`` atomically (temp file, then rename)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def _load(model_dir: Path, calibrator: Path, abstainer: Path | None, trust_remote_code: bool,
          gguf_file: str | None = None):
    from transformers.utils import logging as hf_logging

    from ..calibrators import load_calibrator
    from ..integrations.abstain import Abstainer

    hf_logging.disable_progress_bar()  # keep the terminal output to the annotated text

    cal = load_calibrator(calibrator)
    ab = Abstainer.load(abstainer) if abstainer is not None else None
    model, tokenizer = load_model(model_dir, "causal", trust_remote_code, gguf_file)
    return model, tokenizer, cal, ab


def _show(anns: list[Any], html_out: Path | None, title: str) -> None:
    for ann in anns:
        console.print(rich_text(ann))
        if ann.review_spans:
            console.print(Text(f"{len(ann.review_spans)} span(s) flagged for review", style="dim"))
    console.print(_legend())
    if html_out is not None:
        write_html(html_out, html_page(anns, title))
        console.print(f"wrote {html_out}")


@app.command()
@friendly_errors
def annotate(
    model_dir: Path = typer.Argument(..., help="Local causal LM folder (from_pretrained, safetensors)."),
    calibrator: Path = typer.Option(..., "--calibrator", "-c", help="Calibrator JSON (tokcal fit)."),
    text: str | None = typer.Option(None, "--text", help="Text to annotate."),
    file: Path | None = typer.Option(None, "--file", help="UTF-8 text file to annotate."),
    html_out: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page."),
    abstainer: Path | None = typer.Option(None, "--abstainer", help="Abstainer JSON: flag low-confidence tokens."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model."),
    gguf_file: str | None = typer.Option(None, "--gguf-file", help="Load the model from this GGUF file in MODEL_DIR."),
) -> None:
    """Print TEXT coloured token by token by the model's calibrated confidence."""
    from ..integrations.annotate import annotate as run

    if (text is None) == (file is None):
        raise TokcalError("give exactly one of --text or --file")
    refuse_overwrite({"--html": html_out}, [model_dir, calibrator, file, abstainer])
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokcalError(f"{file}: cannot read text ({e})") from None
    model, tokenizer, cal, ab = _load(model_dir, calibrator, abstainer, trust_remote_code, gguf_file)
    ann = run(model, tokenizer, text, cal, abstainer=ab)
    _show([ann], html_out, f"tokcal annotate — {model_dir.name}")


@app.command()
@friendly_errors
def generate(
    model_dir: Path = typer.Argument(..., help="Local causal LM folder (from_pretrained, safetensors)."),
    calibrator: Path = typer.Option(..., "--calibrator", "-c", help="Calibrator JSON (tokcal fit)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt to continue."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling on the calibrated probabilities."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling on the calibrated probabilities (0 = off)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature on top of calibration."),
    max_new_tokens: int = typer.Option(50, "--max-new-tokens", min=1),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sampler."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding instead of sampling."),
    html_out: Path | None = typer.Option(None, "--html", help="Also write the annotated continuation as HTML."),
    abstainer: Path | None = typer.Option(None, "--abstainer", help="Abstainer JSON: flag low-confidence tokens."),
    allow_argmax_change: bool = typer.Option(False, "--allow-argmax-change",
                                             help="Decode with a calibrator that may change the top token."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run code shipped with the model."),
    gguf_file: str | None = typer.Option(None, "--gguf-file", help="Load the model from this GGUF file in MODEL_DIR."),
) -> None:
    """Continue PROMPT sampling from calibrated probabilities; print it coloured by confidence."""
    import torch

    from ..integrations.annotate import annotate as run
    from ..integrations.hf_generate import generate as gen

    if not 0.0 < top_p <= 1.0 or temperature <= 0 or top_k < 0:
        raise TokcalError(f"need 0 < --top-p <= 1, --temperature > 0 and --top-k >= 0 "
                          f"(got {top_p}, {temperature}, {top_k})")
    refuse_overwrite({"--html": html_out}, [model_dir, calibrator, abstainer])
    model, tokenizer, cal, ab = _load(model_dir, calibrator, abstainer, trust_remote_code, gguf_file)
    torch.manual_seed(seed)
    sampling: dict[str, Any] = {"do_sample": not greedy}
    if not greedy:
        sampling.update(top_p=top_p, top_k=top_k, temperature=temperature)
    out = gen(model, tokenizer, prompt, cal, allow_argmax_change=allow_argmax_change,
              max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_logits=True,
              **sampling)
    ann = run(model, tokenizer, out, cal, abstainer=ab)[0]
    console.print(Text(prompt, style="bold"), end="")
    _show([ann], html_out, f"tokcal generate — {model_dir.name}")
