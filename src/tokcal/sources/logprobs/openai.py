"""OpenAI: Chat Completions (whole responses and streamed chunks) and legacy Completions.

* ``openai-chat``: ``{"choices": [{"logprobs": {"content": [{"token", "logprob", "bytes",
  "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...], "refusal"}}]}``. Streamed
  ``chat.completion.chunk`` objects (one per line, or saved server-sent events) are accumulated by
  response ``id`` and choice ``index`` until the choice's ``finish_reason``. The same shape comes
  from every OpenAI-compatible server's ``/v1/chat/completions`` (vLLM, TGI, llama.cpp, Ollama).
* ``openai-completions`` (legacy): ``{"choices": [{"logprobs": {"tokens", "token_logprobs",
  "top_logprobs": [{token: logprob}, ...], "text_offset"}}]}``; the null first entry of ``echo`` is
  skipped; streamed chunks (same ``id``, ``finish_reason`` null until the last) are one sequence.

A choice whose ``logprobs`` is null (not requested, a refusal) is a response without log-probs.
"""

from __future__ import annotations

from typing import Any

from ...errors import TokcalError
from ._common import SequenceBuilder, Skip, as_list, get, num

HINT = "OpenAI-style chat: logprobs=true with top_logprobs >= 1"


def _entry_slow(e: Any, we: str, vocab: Any) -> tuple[int, float, list[int], list[float]]:
    """The validating path: the exact field and value that is wrong."""
    tok = get(e, "token", we, str)
    try:
        own = vocab.intern(tok, e.get("bytes"))
    except TokcalError as err:
        raise TokcalError(f"{we}: {err}") from None
    lp = num(get(e, "logprob", we, (int, float)), we)
    ids, lps = [], []
    tops = e.get("top_logprobs") or []
    if not isinstance(tops, list):
        raise TokcalError(f"{we}.top_logprobs: expected list, got {type(tops).__name__}")
    for a, alt in enumerate(tops):
        wa = f"{we}.top_logprobs[{a}]"
        t = get(alt, "token", wa, str)
        try:
            ids.append(vocab.intern(t, alt.get("bytes")))
        except TokcalError as err:
            raise TokcalError(f"{wa}: {err}") from None
        lps.append(num(get(alt, "logprob", wa, (int, float)), wa))
    return own, lp, ids, lps


def add_content(content: Any, seq: SequenceBuilder, vocab: Any, where: str) -> None:
    """Append chat ``logprobs.content`` entries to a sequence (fast path, validating on failure)."""
    if not isinstance(content, list):
        raise TokcalError(f"{where}: expected a list, got {type(content).__name__}")
    intern = vocab.intern
    cached = vocab.cache.get
    add = seq.add
    start = len(seq)
    s_own, s_lp, s_ntop, s_index = seq.own.append, seq.own_lp.append, seq.ntop.append, seq.index.append
    s_cids, s_clps, s_count = seq.cids, seq.clps, seq.counts.append
    for j, e in enumerate(content):
        try:  # the common case inlined: tokens known by their text, numbers <= 0
            tok = e["token"]
            own = cached(tok)
            if own is None:
                own = intern(tok, e.get("bytes"))
            lp = e["logprob"]
            tops = e.get("top_logprobs") or ()
            ids = [cached(a["token"]) for a in tops]
            if None in ids:
                ids = [intern(a["token"], a.get("bytes")) for a in tops]
            lps = [a["logprob"] for a in tops]
            total = lp + sum(lps)
            ok = total == total and lp <= 1e-6 and (not lps or max(lps) <= 1e-6)
        except (KeyError, TypeError, AttributeError, TokcalError):
            ok = False
        if not ok:
            own, lp, ids, lps = _entry_slow(e, f"{where}[{j}]", vocab)
        elif len(set(ids)) == len(ids) and lps == sorted(lps, reverse=True):  # SequenceBuilder.add, inlined
            n = len(ids)
            s_ntop(n)
            s_own(own)
            s_lp(lp)
            s_index(start + j)
            s_cids += ids
            s_clps += lps
            if own in ids:
                s_count(n)
            else:
                s_cids.append(own)
                s_clps.append(lp)
                s_count(n + 1)
            continue
        add(own, lp, ids, lps, index=start + j)


def _chat_choice(choice: Any, w: str, seq: SequenceBuilder, vocab: Any) -> None:
    lp = get(choice, "logprobs", w, (dict, type(None)))
    if lp is None:
        msg = choice.get("message") or choice.get("delta") or {}
        raise Skip("refusal" if isinstance(msg, dict) and msg.get("refusal") else "logprobs is null")
    content = lp.get("content")
    if content is None:
        raise Skip("refusal" if lp.get("refusal") else "logprobs.content is null")
    add_content(content, seq, vocab, f"{w}.logprobs.content")


class Chat:
    name = "openai-chat"
    hint = HINT

    def __init__(self) -> None:
        self.pending: dict[tuple[Any, Any], tuple[SequenceBuilder, dict]] = {}

    @staticmethod
    def matches(obj: dict) -> bool:
        if obj.get("object") == "chat.completion.chunk":
            return True
        for c in as_list(obj.get("choices")):
            if isinstance(c, dict) and ("message" in c or "delta" in c):
                return True
            if isinstance(c, dict) and isinstance(c.get("logprobs"), dict) and "content" in c["logprobs"]:
                return True
        return False

    def parse(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        if obj.get("object") == "chat.completion.chunk":
            self._chunk(obj, line, where, ctx)
            return
        choices = get(obj, "choices", where, list)
        for c, choice in enumerate(choices):
            w = f"{where}: choices[{c}]"
            seq = ctx.collector.sequence(line, "generated")
            try:
                _chat_choice(choice, w, seq, ctx.vocab)
            except Skip as s:
                ctx.collector.skip(line, str(s))
                continue
            ctx.close(seq, obj)
        if not choices:
            ctx.collector.skip(line, "no choices")

    def _chunk(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        for c, choice in enumerate(get(obj, "choices", where, list)):
            w = f"{where}: choices[{c}]"
            key = (obj.get("id"), choice.get("index", c) if isinstance(choice, dict) else c)
            if not all(isinstance(k, (str, int, float, type(None))) for k in key):
                raise TokcalError(f"{w}: 'id' and 'index' of a stream chunk must be strings or numbers")
            if key not in self.pending:
                self.pending[key] = (ctx.collector.sequence(line, "generated"), obj)
            seq, first = self.pending[key]
            lp = get(choice, "logprobs", w, (dict, type(None))) if isinstance(choice, dict) and "logprobs" in choice \
                else None
            if lp is not None and lp.get("content") is not None:
                add_content(lp["content"], seq, ctx.vocab, f"{w}.logprobs.content")
            if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                self._close(key, ctx)

    def _close(self, key: tuple[Any, Any], ctx: Any) -> None:
        seq, first = self.pending.pop(key)
        if len(seq) == 0:
            ctx.collector.skip(seq.line, f"stream {key[0]!r} choice {key[1]} carried no log-probs")
        else:
            ctx.close(seq, first)

    def finish(self, ctx: Any) -> None:
        for key in list(self.pending):
            self._close(key, ctx)


def add_legacy(lp: Any, w: str, seq: SequenceBuilder, vocab: Any, skip_first: int = 0, ordered: bool = False,
               offset: int = 0) -> None:
    """Append legacy Completions ``logprobs`` (parallel lists) to a sequence; the first
    ``skip_first`` entries (an echoed prompt read elsewhere) are left out. OpenAI's ``top_logprobs``
    mappings are the true top-n in no particular order; vLLM's list the sampled token first
    (``ordered=True``)."""
    tokens = get(lp, "tokens", w, list)
    tlps = get(lp, "token_logprobs", w, list)
    tops = get(lp, "top_logprobs", w, (list, type(None)))
    if tops is None:
        tops = [None] * len(tokens)
    if not len(tokens) == len(tlps) == len(tops):
        raise TokcalError(f"{w}: tokens, token_logprobs and top_logprobs differ in length "
                          f"({len(tokens)}, {len(tlps)}, {len(tops)})")
    ids_given = lp.get("token_ids") if isinstance(lp.get("token_ids"), list) else None
    for j in range(skip_first, len(tokens)):
        t, tl, top = tokens[j], tlps[j], tops[j]
        try:
            own = vocab.intern(t, None, ids_given[j] if ids_given and j < len(ids_given) else None)
        except TokcalError as e:
            raise TokcalError(f"{w}.tokens[{j}]: {e}") from None
        if tl is None:
            continue  # no prediction here (the echoed first token)
        if top is None:
            top = {}
        if not isinstance(top, dict):
            raise TokcalError(f"{w}.top_logprobs[{j}]: expected an object token -> logprob")
        ids, lps = [], []
        for s, v in top.items():
            try:
                ids.append(vocab.intern(s))
            except TokcalError as e:
                raise TokcalError(f"{w}.top_logprobs[{j}]: {e}") from None
            lps.append(num(v, f"{w}.top_logprobs[{j}][{s!r}]"))
        seq.add(own, num(tl, f"{w}[{j}]: token_logprobs"), ids, lps, index=offset + j, ordered=ordered)


class Completions:
    name = "openai-completions"
    hint = "legacy completions: logprobs >= 1"

    def __init__(self) -> None:
        self.pending: dict[tuple[Any, Any], tuple[SequenceBuilder, dict, int]] = {}

    @staticmethod
    def matches(obj: dict) -> bool:
        for c in as_list(obj.get("choices")):
            if isinstance(c, dict) and (("text" in c and "logprobs" in c)
                                        or (isinstance(c.get("logprobs"), dict) and "tokens" in c["logprobs"])):
                return True
        return False

    def parse(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        for c, choice in enumerate(get(obj, "choices", where, list)):
            w = f"{where}: choices[{c}]"
            lp = get(choice, "logprobs", w, (dict, list, type(None)))
            if lp is None:
                ctx.collector.skip(line, "logprobs is null")
                continue
            if isinstance(lp, list):
                raise TokcalError(f"{w}.logprobs: a list of numbers (TGI's /v1/completions) has only the chosen "
                                  "tokens' log-probs and no alternatives; use TGI's /generate with top_n_tokens, "
                                  "or /v1/chat/completions with top_logprobs")
            # a streamed completion sends one chunk per token with the same id: one sequence
            key = (obj.get("id"), choice.get("index", c))
            seq, first, done = self.pending.pop(key, None) or (ctx.collector.sequence(line, "generated"), obj, 0)
            add_legacy(lp, f"{w}.logprobs", seq, ctx.vocab, offset=done)
            if choice.get("finish_reason") is None and obj.get("id"):
                self.pending[key] = (seq, first, done + len(lp["tokens"]))
            else:
                ctx.close(seq, first)

    def finish(self, ctx: Any) -> None:
        for seq, first, _ in self.pending.values():
            ctx.close(seq, first)
        self.pending.clear()
