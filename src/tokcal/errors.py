"""Errors raised by tokcal. Every message names the problem: file, column, row, value."""

from __future__ import annotations


class TokcalError(ValueError):
    """Base class of every error tokcal raises on bad input."""


class ValidationError(TokcalError):
    """An array or column violates the TokenTable contract (shape, dtype, range, finiteness)."""


class SchemaError(TokcalError):
    """A file is not a tokcal file, is truncated, misses a column, or has an unknown schema version."""


class ConvergenceError(TokcalError):
    """An optimiser could not reach a solution inside its bounds."""


class TokcalWarning(UserWarning):
    """A result tokcal computed but cannot fully stand behind (an assumption it had to make)."""


def first_bad_row(mask) -> int:
    """Index of the first True in a boolean mask (callers check ``mask.any()`` first)."""
    import numpy as np

    return int(np.flatnonzero(mask)[0])


class ParameterError(ValidationError):
    """A bad argument, worded so that each caller names it its own way.

    ``template`` writes a parameter as ``{name}`` or ``{name=value}``; ``str(error)`` shows Python's
    spelling (``max_ece``, ``allow_argmax_change=True``) and :meth:`render` another one, e.g. the command
    line's (``--max-ece``, ``--allow-argmax-change``) from ``{python name: flag}``.
    """

    _FIELD = r"\{(\w+)(?:=([^{}]*))?\}"

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render())

    @property
    def params(self) -> list[str]:
        import re

        return [m.group(1) for m in re.finditer(self._FIELD, self.template)]

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message with each parameter spelled as ``names`` says (a flag: ``--flag`` or ``--flag VALUE``;
        ``{flag=True}`` is just ``--flag``); parameters missing from ``names`` keep Python's spelling."""
        import re

        def one(m: re.Match[str]) -> str:
            name, value = m.group(1), m.group(2)
            if names is None or name not in names:
                return name if value is None else f"{name}={value}"
            flag = names[name]
            return flag if value in (None, "True") else f"{flag} {value}"

        return re.sub(self._FIELD, one, self.template)
