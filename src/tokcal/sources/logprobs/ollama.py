"""Ollama native ``/api/generate`` and ``/api/chat``.

``{"model", "created_at", "response" | "message", "done", "logprobs": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}`` with ``logprobs: true`` and
``top_logprobs: N`` (0..20) in the request. A streamed answer (one chunk per line, ``done: false``
until the last) is accumulated until ``done: true``. Without ``top_logprobs`` each position has
only its own token: a clear error asking for it. Identity: ``bytes``, then the text.
"""

from __future__ import annotations

from typing import Any

from ...errors import TokcalError
from . import openai
from ._common import SequenceBuilder

HINT = "Ollama: logprobs=true with top_logprobs >= 1"


class Ollama:
    name = "ollama"
    hint = HINT

    def __init__(self) -> None:
        self.pending: tuple[SequenceBuilder, dict] | None = None

    @staticmethod
    def matches(obj: dict) -> bool:
        return "created_at" in obj and "done" in obj and ("response" in obj or "message" in obj)

    def parse(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        if self.pending is None:
            self.pending = (ctx.collector.sequence(line, "generated"), obj)
        seq, _ = self.pending
        lp = obj.get("logprobs")
        if lp is not None:
            if not isinstance(lp, list):
                raise TokcalError(f"{where}: logprobs: expected a list, got {type(lp).__name__}")
            openai.add_content(lp, seq, ctx.vocab, f"{where}: logprobs")
        if obj.get("done"):
            self._close(ctx)

    def _close(self, ctx: Any) -> None:
        assert self.pending is not None
        seq, first = self.pending
        self.pending = None
        if len(seq) == 0:
            ctx.collector.skip(seq.line, "no logprobs (request logprobs=true, top_logprobs >= 1)")
        else:
            ctx.close(seq, first)

    def finish(self, ctx: Any) -> None:
        if self.pending is not None:
            self._close(ctx)
