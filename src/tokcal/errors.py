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
    """A bad parameter value in the one message format, ``<where>: <field> <requirement>, got <value>``
    (:mod:`tokcal.validation`), that keeps its parameters as fields so each caller names them its own way.

    ``template`` writes a parameter as ``{name}`` or ``{name=value}`` (literal braces doubled: ``{{``);
    ``where`` names the owner (``"evaluate"``, ``"GroupTemperature"``). ``str(error)`` is Python's
    spelling (``evaluate: bins must be an integer, got 2.5``, ``allow_argmax_change=True``); :meth:`render`
    spells the parameters another way, e.g. as the command line's flags (``--bins must be an integer, got
    2.5``, ``--allow-argmax-change``), and drops the ``<where>:`` prefix when every parameter is a flag
    (a flag already says where it belongs).
    """

    _TOKEN = r"\{\{|\}\}|\{(\w+)(?:=([^{}]*))?\}"

    def __init__(self, template: str, where: str | None = None) -> None:
        self.template = template
        self.where = where
        super().__init__(self.render())

    @staticmethod
    def quote(text: object) -> str:
        """``text`` (a value shown in a message) with its braces doubled, so it is never read as a parameter."""
        return str(text).replace("{", "{{").replace("}", "}}")

    @property
    def params(self) -> list[str]:
        """The parameters the message names, in order (Python's names)."""
        import re

        return [m.group(1) for m in re.finditer(self._TOKEN, self.template) if m.group(1)]

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message with each parameter spelled as ``names`` says (a flag: ``--flag`` or ``--flag VALUE``;
        ``{flag=True}`` is just ``--flag``); parameters missing from ``names`` keep Python's spelling."""
        import re

        def one(m: re.Match[str]) -> str:
            name, value = m.group(1), m.group(2)
            if name is None:  # an escaped brace
                return m.group(0)[0]
            if names is None or name not in names:
                return name if value is None else f"{name}={value}"
            flag = names[name]
            return flag if value in (None, "True") else f"{flag} {value}"

        text = re.sub(self._TOKEN, one, self.template)
        params = self.params
        flagged = names is not None and bool(params) and all(p in names for p in params)
        return text if not self.where or flagged else f"{self.where}: {text}"
