"""Shared CLI plumbing: turn tokcal errors into a one-line message and exit code 2; load a local model.

Torch-free at import time: the model loader (:func:`tokcal.sources.hf.load_model`) is imported on use."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import ParameterError, TokcalError
from ..progress import ProgressCallback

# Data (token strings, group values, paths) is printed as it is: no rich markup or emoji codes in it
# are interpreted. Styles come from rich Text objects.
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])


def flag_names(fn: Callable[..., Any], aliases: dict[str, str] | None = None) -> dict[str, str]:
    """``{python parameter: its command-line flag}`` of a typer command (the first ``--long`` spelling), plus
    ``aliases`` (library parameter names the command exposes under another flag)."""
    import inspect
    import typing

    names = dict(aliases or {})
    hints = typing.get_type_hints(fn, include_extras=True)
    for name, p in inspect.signature(fn).parameters.items():
        infos = [p.default, *getattr(hints.get(name), "__metadata__", ())]
        info = next((i for i in infos if isinstance(i, typer.models.OptionInfo)), None)
        if info is None:
            continue
        decls = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str) and d.startswith("--")]
        names.setdefault(name, decls[0] if decls else "--" + name.replace("_", "-"))
    return names


def friendly_errors(fn: F | None = None, *, aliases: dict[str, str] | None = None) -> Any:
    """Report a :class:`TokcalError` as ``error: <message>`` and exit 2 instead of a traceback; a
    :class:`~tokcal.errors.ParameterError` names the command's flags (``--max-ece``), not Python's names.
    ``aliases``: library parameter names spelled as another flag, e.g. ``{"tokens_are_reference":
    "--teacher-forced"}``."""
    if fn is None:
        return lambda f: friendly_errors(f, aliases=aliases)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                return fn(*args, **kwargs)
        except TokcalError as e:
            print_error(e.render(flag_names(fn, aliases)) if isinstance(e, ParameterError) else str(e))
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_error(text: str) -> None:
    """``error: <text>`` on stderr, the one way a command reports bad input (its exit code is 2)."""
    err_console.print(Text("error: ", style="bold red") + Text(text), soft_wrap=True, highlight=False)


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(outputs: Mapping[str, Path | None], inputs: Iterable[Path | None]) -> None:
    """TokcalError (exit 2) when an output would destroy an input, before anything is read or written.

    ``outputs``: ``{option name: path}``. An output is refused when it resolves (symlinks and hard
    links included) to an input file, to an input directory, or to a path inside an input directory
    (a dataset, a model folder), or when two outputs are the same path."""
    ins = [(p, Path(p).resolve()) for p in inputs if p is not None]
    seen: dict[Path, str] = {}
    for name, out in outputs.items():
        if out is None:
            continue
        res = Path(out).resolve()
        if res in seen:
            raise TokcalError(f"{name} {out}: the same path as {seen[res]}; give each output its own path")
        seen[res] = name
        for given, inp in ins:
            inside = inp.is_dir() and inp in res.parents
            if _same(res, inp) or inside:
                where = "is" if not inside else "lies inside"
                raise TokcalError(f"{name} {out}: {where} the input {given}; writing there would destroy it "
                                  "(choose another output path)")


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    """A Python warning as one ``warning: <message>`` line on stderr (no source line)."""
    err_console.print(Text("warning: ", style="bold yellow") + Text(str(message)), soft_wrap=True, highlight=False)


def require_creatable_dir(name: str, path: Path) -> None:
    """TokcalError unless ``path`` is a directory or could be made one (nothing is created): its
    nearest existing ancestor must be a directory this process may write into."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise TokcalError(f"{name} {path}: exists and is not a directory")
        anc = path
    else:
        anc = next((p for p in path.absolute().parents if p.exists()), Path("/"))
        if not anc.is_dir():
            raise TokcalError(f"{name} {path}: cannot create it, {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise TokcalError(f"{name} {path}: cannot write into {anc} (permission denied)")


def parse_groups(pairs: list[str], flag: str = "--group") -> dict[str, str]:
    """``["domain=kjv", ...]`` -> ``{"domain": "kjv"}``; a pair without ``=`` or a name is an error naming it."""
    out: dict[str, str] = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name.strip():
            raise TokcalError(f"{flag} must be NAME=VALUE, got {p!r}")
        out[name.strip()] = value
    return out


def quiet_transformers(verbose: bool) -> None:
    """transformers' weight-loading bars and info logs off, unless ``verbose``."""
    from transformers.utils import logging as hf_logging

    if verbose:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_info()
    else:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def load_model(model_dir: Path, task: str, trust_remote_code: bool = False, gguf_file: str | None = None,
               verbose: bool = False) -> tuple[Any, Any]:
    """:func:`tokcal.sources.hf.load_model` (imported here on first use: this module stays torch-free), with
    transformers' loading bars and info logs shown only when ``verbose``."""
    quiet_transformers(verbose)
    from ..sources.hf import load_model as _load

    return _load(model_dir, task, gguf_file, trust_remote_code=trust_remote_code)


#: the ``--quiet/-q`` option of the commands that draw progress bars
QUIET_HELP = "No progress bars (they are also off when stderr is not a terminal, e.g. in CI logs)."


def progress_enabled(quiet: bool, console: Console | None = None) -> bool:
    """Whether to draw progress bars: not ``quiet``, stderr (``console``) a terminal and not a dumb one."""
    c = console or err_console
    return not quiet and c.is_terminal and not c.is_dumb_terminal


@contextlib.contextmanager
def progress_bars(quiet: bool = False, console: Console | None = None,
                  labels: Mapping[str, str] | None = None) -> Iterator[ProgressCallback | None]:
    """A :data:`tokcal.progress.ProgressCallback` drawing one rich bar per step on stderr (``console``),
    removed when done; None (nothing drawn, not even a final line) when :func:`progress_enabled` is false.
    ``labels``: the text shown for a step (default: the step's name)."""
    if not progress_enabled(quiet, console):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console or err_console, transient=True)
    tasks: dict[str, Any] = {}

    def update(step: str, done: int, total: int) -> None:
        if total <= 0:  # a step with nothing to do (no slices) is done
            done = total = 1
        if step not in tasks:
            tasks[step] = bars.add_task((labels or {}).get(step, step), total=max(total, 1))
        bars.update(tasks[step], completed=done, total=max(total, 1))

    with bars:
        yield update
