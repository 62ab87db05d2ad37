"""Shared CLI plumbing: turn tokcal errors into a one-line message and exit code 2; load a local model.

Torch-free at import time: transformers is imported inside :func:`load_model`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import TokcalError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Report a :class:`TokcalError` as ``error: <message>`` and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TokcalError as e:
            err_console.print(Text("error: ", style="bold red") + Text(str(e)), soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


TASK_MODELS = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM",
               "token-classification": "AutoModelForTokenClassification"}


def load_model(model_dir: Path, task: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` of a local ``from_pretrained`` folder: safetensors weights only,
    no hub access, ``trust_remote_code`` off unless asked; TokcalError naming the folder otherwise."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TokcalError(f"{model_dir}: not a model directory (a local from_pretrained folder is required)")
    import transformers as tf

    cls = getattr(tf, TASK_MODELS[task])
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                                     trust_remote_code=trust_remote_code)
        model = cls.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TokcalError(f"{model_dir}: cannot load a {task} model with safetensors weights ({e})") from None
    return model.eval(), tokenizer
