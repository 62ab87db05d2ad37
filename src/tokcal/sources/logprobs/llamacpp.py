"""llama.cpp server, native ``/completion``.

``{"content", "completion_probabilities": [{"id", "token", "bytes", "logprob", "top_logprobs":
[{"id", "token", "bytes", "logprob"}, ...]}, ...]}`` with ``n_probs >= 1``. With
``post_sampling_probs: true`` each entry has ``prob`` and ``top_probs`` instead: probabilities
**after the sampler chain** (temperature, top-k, top-p, min-p, grammar), i.e. the distribution the
token was drawn from, not the model's; ``top_probs`` may hold fewer than ``n_probs`` entries. Read
as log-probabilities (``log prob``) and recorded in the table's ``source["probabilities"]``.
Older servers (before the 2024-12 format) wrote ``{"content", "probs": [{"tok_str", "prob"}]}``,
read the same way (post-softmax probabilities, no ids).

Identity is the server's ``id`` when given (then ``bytes``, then the text).
"""

from __future__ import annotations

from typing import Any

from ...errors import TokcalError
from ._common import get, num, prob_to_logprob

HINT = "llama.cpp /completion: n_probs >= 1"


def _one(e: Any, w: str, vocab: Any, post: bool) -> tuple[int, float]:
    if not isinstance(e, dict):
        raise TokcalError(f"{w}: expected an object, got {type(e).__name__}")
    tok = e.get("token") if "token" in e else e.get("tok_str")
    tid = e.get("id")
    try:
        local = vocab.intern(tok, e.get("bytes"), tid)
    except TokcalError as err:
        raise TokcalError(f"{w}: {err}") from None
    if post:
        return local, prob_to_logprob(get(e, "prob", w, (int, float)), w)
    return local, num(get(e, "logprob", w, (int, float)), w)


class LlamaCpp:
    name = "llama.cpp"
    hint = HINT

    def __init__(self) -> None:
        self.kinds: set[str] = set()

    @staticmethod
    def matches(obj: dict) -> bool:
        return "completion_probabilities" in obj

    def parse(self, obj: dict, line: int, where: str, ctx: Any) -> None:
        probs = obj.get("completion_probabilities")
        if not probs:
            ctx.collector.skip(line, "completion_probabilities is empty (request n_probs >= 1)")
            return
        w = f"{where}: completion_probabilities"
        if not isinstance(probs, list):
            raise TokcalError(f"{w}: expected a list")
        seq = ctx.collector.sequence(line, "generated")
        for j, e in enumerate(probs):
            wj = f"{w}[{j}]"
            if not isinstance(e, dict):
                raise TokcalError(f"{wj}: expected an object")
            if "top_probs" in e or "prob" in e:
                post, key = True, "top_probs"
                self.kinds.add("post-sampling")
            elif "probs" in e:
                post, key = True, "probs"
                self.kinds.add("model (post-softmax, legacy format)")
            else:
                post, key = False, "top_logprobs"
                self.kinds.add("model")
            if key == "probs":
                own_tok = get(e, "content", wj, str)
                alts = get(e, "probs", wj, list)
                ids, lps = [], []
                for a, alt in enumerate(alts):
                    i, v = _one(alt, f"{wj}.probs[{a}]", ctx.vocab, True)
                    ids.append(i)
                    lps.append(v)
                try:
                    own = ctx.vocab.intern(own_tok)
                except TokcalError as err:
                    raise TokcalError(f"{wj}: {err}") from None
                own_lp = lps[ids.index(own)] if own in ids else None
                seq.add(own, own_lp, ids, lps, index=j)
                continue
            own, own_lp = _one(e, wj, ctx.vocab, post)
            ids, lps = [], []
            for a, alt in enumerate(get(e, key, wj, list)):
                i, v = _one(alt, f"{wj}.{key}[{a}]", ctx.vocab, post)
                ids.append(i)
                lps.append(v)
            seq.add(own, own_lp, ids, lps, index=j)
        ctx.close(seq, obj)

    def finish(self, ctx: Any) -> None:
        if self.kinds:
            ctx.meta["probabilities"] = ",".join(sorted(self.kinds))
        if "post-sampling" in self.kinds:
            ctx.collector.notes.append("llama.cpp post_sampling_probs are probabilities after the sampler chain "
                                       "(temperature, top-k/top-p, grammar), not the model's distribution")
