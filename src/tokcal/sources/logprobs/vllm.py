"""vLLM: offline ``RequestOutput`` and the OpenAI-compatible server's extensions.

* offline: ``{"prompt_token_ids", "prompt_logprobs", "outputs": [{"token_ids", "logprobs"}]}``; each
  position a mapping ``token_id -> {"logprob", "rank", "decoded_token"}`` (null for the first prompt
  token); the position's own token is ``prompt_token_ids[i]`` / ``token_ids[i]``, else the first key
  (vLLM puts the actual token first).
* ``/v1/chat/completions`` with ``prompt_logprobs``: vLLM puts ``prompt_logprobs`` and
  ``prompt_token_ids`` at the **top level** of the response, next to OpenAI-style ``choices``.
* ``/v1/completions`` with ``prompt_logprobs``: each choice carries ``prompt_logprobs`` and
  ``prompt_token_ids``; with ``echo=True`` the legacy ``logprobs`` *also* starts with the prompt,
  so its first ``len(prompt_token_ids)`` entries are left out (read once, from ``prompt_logprobs``).
* ``return_tokens_as_token_ids=true`` writes tokens as ``"token_id:N"``: read as the id N.

The sampled token is listed first in vLLM's ``top_logprobs`` (see :mod:`._common` for the re-sort).
"""

from __future__ import annotations

from typing import Any

from ...errors import TokcalError
from . import openai
from ._common import SequenceBuilder, Skip, get, num

HINT = "vLLM: prompt_logprobs >= 1 (teacher forcing) or logprobs / top_logprobs >= 1"


def add_positions(entries: Any, ids: Any, where: str, seq: SequenceBuilder, vocab: Any) -> int:
    """Append ``token_id -> Logprob`` mappings; returns how many entries (null ones included)."""
    if not isinstance(entries, list):
        raise TokcalError(f"{where}: expected a list of per-position mappings, got {type(entries).__name__}")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(entries)):
        raise TokcalError(f"{where}: {len(entries)} positions but token ids of another length")
    for j, m in enumerate(entries):
        wj = f"{where}[{j}]"
        if m is None:
            continue
        if not isinstance(m, dict) or not m:
            raise TokcalError(f"{wj}: expected a non-empty mapping token_id -> {{logprob, rank, decoded_token}}")
        cids, lps, ranks, by_id = [], [], [], {}
        for key, e in m.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise TokcalError(f"{wj}: key {key!r} is not a token id") from None
            if i < 0:
                raise TokcalError(f"{wj}: negative token id {i}")
            if isinstance(e, (int, float)) and not isinstance(e, bool):
                e = {"logprob": e}
            lp = num(get(e, "logprob", f"{wj}[{key}]", (int, float)), f"{wj}[{key}]")
            local = vocab.intern(None, None, i, e.get("decoded_token"))
            r = e.get("rank")
            cids.append(local)
            lps.append(lp)
            ranks.append(r if isinstance(r, int) and not isinstance(r, bool) else None)
            by_id[i] = local
        own_id = ids[j] if ids is not None else next(iter(m))
        if isinstance(own_id, bool) or not isinstance(own_id, (int, str)):
            raise TokcalError(f"{wj}: the position's token id {own_id!r} is not an integer")
        try:
            tok = int(own_id)
        except ValueError:
            raise TokcalError(f"{wj}: the position's token id {own_id!r} is not an integer") from None
        if tok not in by_id:
            raise TokcalError(f"{wj}: the position's token {tok} has no entry")
        own = by_id[tok]
        seq.add(own, lps[cids.index(own)], cids, lps, ranks=ranks, index=j)
    return len(entries)


class VLLM:
    name = "vllm"
    hint = HINT

    @staticmethod
    def matches(obj: dict) -> bool:
        if "outputs" in obj or "prompt_logprobs" in obj:
            return True
        choices = obj.get("choices")
        return isinstance(choices, list) and any(isinstance(c, dict) and "prompt_logprobs" in c for c in choices)

    def parse(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        n = 0
        if "choices" in obj:
            top = obj.get("prompt_logprobs")
            if top is not None:  # chat: the prompt at the top level
                seq = ctx.collector.sequence(line, "prompt")
                add_positions(top, obj.get("prompt_token_ids"), f"{where}: prompt_logprobs", seq, ctx.vocab)
                ctx.close(seq, obj)
                n += 1
            for c, choice in enumerate(get(obj, "choices", where, list)):
                w = f"{where}: choices[{c}]"
                if not isinstance(choice, dict):
                    raise TokcalError(f"{w}: expected an object")
                n_prompt = 0
                if choice.get("prompt_logprobs") is not None:
                    seq = ctx.collector.sequence(line, "prompt")
                    ids = choice.get("prompt_token_ids", obj.get("prompt_token_ids"))
                    n_prompt = add_positions(choice["prompt_logprobs"], ids, f"{w}.prompt_logprobs", seq, ctx.vocab)
                    ctx.close(seq, obj)
                    n += 1
                lp = choice.get("logprobs")
                if lp is None:
                    continue
                seq = ctx.collector.sequence(line, "generated")
                if isinstance(lp, dict) and "content" in lp:
                    try:
                        openai._chat_choice(choice, w, seq, ctx.vocab)
                    except Skip as s:
                        ctx.collector.skip(line, str(s))
                        continue
                else:
                    # echo=True: the legacy list repeats the prompt already read from prompt_logprobs
                    openai.add_legacy(get(choice, "logprobs", w, dict), f"{w}.logprobs", seq, ctx.vocab,
                                      skip_first=n_prompt, ordered=True)
                if len(seq):
                    ctx.close(seq, obj)
                    n += 1
            if not n:
                ctx.collector.skip(line, "no prompt_logprobs or logprobs in any choice")
            return
        if obj.get("prompt_logprobs") is not None:
            seq = ctx.collector.sequence(line, "prompt")
            add_positions(obj["prompt_logprobs"], obj.get("prompt_token_ids"), f"{where}: prompt_logprobs", seq,
                          ctx.vocab)
            ctx.close(seq, obj)
            n += 1
        outputs = obj.get("outputs") or []
        if not isinstance(outputs, list):
            raise TokcalError(f"{where}: outputs must be a list")
        for c, o in enumerate(outputs):
            if isinstance(o, dict) and o.get("logprobs") is not None:
                seq = ctx.collector.sequence(line, "generated")
                add_positions(o["logprobs"], o.get("token_ids"), f"{where}: outputs[{c}].logprobs", seq, ctx.vocab)
                ctx.close(seq, obj)
                n += 1
        if not n:
            ctx.collector.skip(line, "no prompt_logprobs and no outputs[].logprobs")

    def finish(self, ctx: Any) -> None:
        pass
