"""How the ``tokcal`` commands show themselves in ``--help`` and usage lines.

Usage lines read ``tokcal collect [OPTIONS] MODEL_DIR DATA...`` (argument names in capitals, optional ones
in brackets), boolean flags show no value type (``--paragraphs``, not ``--paragraphs <bool>``), and options
show a plain value type (``--group TEXT``; repeatable ones say so in their help) instead of Python's
(``<list[str]>``).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import ParameterError

_TYPES = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "bool": "BOOL"}


def _argument_name(p: Any) -> str:
    return p.metavar or (p.name or "").upper()


def _option_type(p: Any, plain: Any = None) -> Any:
    plain = plain or type(p).display_type_rich

    def display(ctx: Any) -> str | None:
        if getattr(p, "is_flag", False) or getattr(p, "count", False):
            return None
        if p.metavar is not None and not isinstance(p, TyperArgument):
            return p.metavar
        shown = plain(p, ctx)
        if shown is None:
            return None
        inner = shown.strip("<>").removesuffix("...")
        if inner.startswith("list[") and inner.endswith("]"):
            inner = inner[5:-1]
        return "|".join(_TYPES.get(t.lower(), t) for t in inner.split("|"))

    return display


def _tidy(params: list[Any]) -> None:
    for p in params:
        if isinstance(p, TyperArgument):
            p.metavar = _argument_name(p)
            p.display_type_rich = _option_type(p, type(p).display_type)
        elif isinstance(p, TyperOption):
            p.display_type_rich = _option_type(p)


class _Tidy:
    """Mixin: tidy the parameters, and the ``--help`` option click adds on the fly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)
        if opt is not None:
            _tidy([opt])
        return opt


_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


class TokcalCommand(_Tidy, TyperCommand):
    """A typer command with click-style usage lines and value types (module docstring); a boolean flag
    followed by ``true``/``false`` is a usage error (the word would otherwise be read as an argument); a
    value of the wrong type is ``error: --flag <requirement>, got <value>`` (exit 2), as every other bad value."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        flags = {o for p in self.params if isinstance(p, TyperOption) and p.is_flag for o in p.opts}
        for here, after in zip(args, args[1:], strict=False):
            if here == "--":
                break
            if here in flags and after.lower() in _BOOL_WORDS:
                raise typer.BadParameter(f"{here} is a flag and takes no value: write {here} alone "
                                         f"(got {here} {after})", ctx=ctx)
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as e:
            error = value_error(e)
            if error is None:
                raise
            from .common import print_error

            print_error(error.render({error.params[0]: _spelling(e.param)}))
            raise typer.Exit(2) from None

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = _argument_name(p) + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces


def _spelling(p: Any) -> str:
    """How the command line names a parameter: its first ``--long`` flag, else its name (an argument)."""
    if isinstance(p, TyperArgument):
        return _argument_name(p)
    return next((o for o in p.opts if o.startswith("--")), p.opts[0])


def value_error(e: typer.BadParameter) -> ParameterError | None:
    """A value typer could not convert to its option's type (it validates with pydantic) as a
    :class:`~tokcal.errors.ParameterError` in the one message format (``{bins} must be an integer, got
    2.5``); None for other usage errors (a missing argument, an unknown option)."""
    from pydantic import ValidationError

    from ..validation import error_template

    if e.param is None or not isinstance(e.__cause__, ValidationError):
        return None
    return ParameterError(error_template(e.__cause__, field=e.param.name))


class TokcalGroup(_Tidy, TyperGroup):
    """The ``tokcal`` group, its own options shown as :class:`TokcalCommand` shows them."""


class TokcalTyper(typer.Typer):
    """``typer.Typer`` whose commands are :class:`TokcalCommand` unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, cls=kwargs.pop("cls", TokcalGroup), **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or TokcalCommand, **kwargs)
