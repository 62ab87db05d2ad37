"""Hugging Face Text Generation Inference (TGI), native ``/generate``.

``{"generated_text", "details": {"prefill": [{"id", "text", "logprob"}], "tokens": [{"id", "text",
"logprob", "special"}], "top_tokens": [[{"id", "text", "logprob", "special"}, ...], ...],
"best_of_sequences": [...]}}``, with ``details: true``, ``top_n_tokens`` (alternatives of each
generated token) and ``decoder_input_details: true`` (``prefill``).

Tokens carry the server's ``id``: identity is the id. ``prefill`` gives the log-prob of each prompt
token but **no alternatives** (TGI computes top tokens for generated positions only), so its
positions cannot be rows of a top-k table; they are counted and reported, never silently dropped.
``/generate_stream`` events ``{"index", "token", "top_tokens": [...], "generated_text", "details"}``
(one per line, or saved server-sent events) are accumulated until the event whose
``generated_text`` is set. TGI's ``/v1/completions`` returns a bare list of floats (no alternatives): a clear error, see
:mod:`.openai`; its ``/v1/chat/completions`` is OpenAI-shaped.
"""

from __future__ import annotations

from typing import Any

from ...errors import TokcalError
from ._common import SequenceBuilder, as_list, get, num

HINT = "TGI /generate: details=true with top_n_tokens >= 1"


def _token(t: Any, w: str, vocab: Any) -> tuple[int, float]:
    tid = get(t, "id", w, int)
    try:
        local = vocab.intern(t.get("text"), None, tid, t.get("text"))
    except TokcalError as e:
        raise TokcalError(f"{w}: {e}") from None
    return local, num(get(t, "logprob", w, (int, float)), w)


def _sequence(d: Any, w: str, seq: SequenceBuilder, vocab: Any) -> None:
    tokens = get(d, "tokens", w, list)
    top = d.get("top_tokens") or []
    if not isinstance(top, list) or (top and len(top) != len(tokens)):
        raise TokcalError(f"{w}.top_tokens: expected one list of alternatives per token ({len(tokens)})")
    for j, t in enumerate(tokens):
        own, lp = _token(t, f"{w}.tokens[{j}]", vocab)
        ids, lps = [], []
        alts = top[j] if top else []
        if not isinstance(alts, list):
            raise TokcalError(f"{w}.top_tokens[{j}]: expected a list")
        for a, alt in enumerate(alts):
            i, v = _token(alt, f"{w}.top_tokens[{j}][{a}]", vocab)
            ids.append(i)
            lps.append(v)
        seq.add(own, lp, ids, lps, index=j)


class TGI:
    name = "tgi"
    hint = HINT

    def __init__(self) -> None:
        self.prefill = 0
        self.stream: tuple[SequenceBuilder, dict] | None = None

    @staticmethod
    def matches(obj: dict) -> bool:
        return "generated_text" in obj and ("details" in obj or isinstance(obj.get("token"), dict))

    def _event(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        if self.stream is None:
            self.stream = (ctx.collector.sequence(line, "generated"), obj)
        seq, _ = self.stream
        own, lp = _token(obj["token"], f"{where}: token", ctx.vocab)
        alts = obj.get("top_tokens") or []
        if not isinstance(alts, list):
            raise TokcalError(f"{where}: top_tokens: expected a list")
        pairs = [_token(a, f"{where}: top_tokens[{i}]", ctx.vocab) for i, a in enumerate(alts)]
        seq.add(own, lp, [i for i, _ in pairs], [v for _, v in pairs], index=len(seq))
        if obj.get("generated_text") is not None:
            self._close(ctx)

    def _close(self, ctx: Any) -> None:
        assert self.stream is not None
        seq, first = self.stream
        self.stream = None
        ctx.close(seq, first)

    def parse(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        if isinstance(obj.get("token"), dict):
            self._event(obj, line, where, ctx)
            return
        d = obj.get("details")
        if d is None:
            ctx.collector.skip(line, "no details (request details=true)")
            return
        w = f"{where}: details"
        if not isinstance(d, dict):
            raise TokcalError(f"{w}: expected an object")
        prefill = d.get("prefill") or []
        if not isinstance(prefill, list):
            raise TokcalError(f"{w}.prefill: expected a list")
        for j, t in enumerate(prefill):
            if isinstance(t, dict) and t.get("logprob") is not None:
                _token(t, f"{w}.prefill[{j}]", ctx.vocab)
                self.prefill += 1
        best_of = as_list(d.get("best_of_sequences"))
        seqs = [(d, w)] + [(b, f"{w}.best_of_sequences[{i}]") for i, b in enumerate(best_of)]
        for sd, sw in seqs:
            seq = ctx.collector.sequence(line, "generated")
            _sequence(sd, sw, seq, ctx.vocab)
            ctx.close(seq, obj)

    def finish(self, ctx: Any) -> None:
        if self.stream is not None:
            self._close(ctx)
        if self.prefill:
            ctx.collector.notes.append(
                f"{self.prefill} TGI prefill position(s) (decoder_input_details) carry only the prompt token's "
                "log-prob and no alternatives; they are not rows of the table (TGI cannot teacher-force with "
                "alternatives; vLLM's prompt_logprobs can)")
