"""The ``tokcal`` command. Each ``*_cmd.py`` module in this package adds its commands to ``app``."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from .._version import __version__
from ._help import TokcalTyper

app = TokcalTyper(
    name="tokcal",
    help="Token-level calibration of sequence models: collect, evaluate, fit, check, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        typer.echo(f"tokcal {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the tokcal version and exit."),
) -> None:
    """Token-level calibration of sequence models: collect, evaluate, fit, check, report."""


for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_cmd")):
    importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:  # pragma: no cover - console entry point
    app()
