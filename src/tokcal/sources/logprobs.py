"""Import top-k log-probs returned by APIs: OpenAI Chat Completions, legacy Completions, vLLM.

One JSON object per line (JSONL), each the response as the API returned it:

* ``openai-chat``: ``{"choices": [{"logprobs": {"content": [{"token", "logprob", "bytes",
  "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}}]}``;
* ``openai-completions`` (legacy): ``{"choices": [{"logprobs": {"tokens", "token_logprobs",
  "top_logprobs": [{token: logprob}, ...], "text_offset"}}]}``; a null first entry (``echo``) is skipped;
* ``vllm``: an offline ``RequestOutput`` (``prompt_token_ids``, ``prompt_logprobs``, ``outputs[].token_ids``,
  ``outputs[].logprobs``) or a server response whose choices carry ``prompt_logprobs``. Each position
  is a mapping ``token_id -> {"logprob", "rank", "decoded_token"}`` (null for the first prompt token).
  The position's own token is ``prompt_token_ids[i]`` / ``token_ids[i]`` when given, otherwise the
  mapping's first key (vLLM puts the actual token first).

Labels. ``prompt_logprobs`` over a reference text give teacher forcing through an API: the label
of each position is the prompt token itself. Generated tokens have no gold label (-1) unless the
line carries a reference (``reference_token_ids``, ``reference_tokens`` or ``reference`` text with a
tokenizer): then :func:`~tokcal.sources.align.align_labels` gives each generated token the reference
token it aligns to (inserted tokens get -1). ``tokens_are_reference=True`` treats the returned tokens
themselves as gold (e.g. legacy ``echo=True`` scoring of a given text).

Values. Token strings map to ids through a :class:`Vocabulary` (a tokenizer's, or one built from
the file). ``-9999`` (OpenAI's "very unlikely") and ``-inf`` are kept as ~zero probability; a
gold token whose log-prob is unknown or such a sentinel gets the uniform-remainder estimate
``log(r / (V - k))``, ``r = 1 - sum_top exp(logprob)``, the same model of the unknown tail that
:func:`tokcal.sketch.sketch_logprobs` records (``TailLayout.kind == "uniform-remainder"``).
The top-k width of the table is the smallest number of alternatives any position returned.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokcalError, TokcalWarning
from ..table import TokenTable
from ..vocab import Vocabulary as TokenizerVocabulary
from .align import align_labels
from .readers import iter_jsonl

FORMATS = ("openai-chat", "openai-completions", "vllm")
SENTINEL = -9999.0


def _parse_bytes_token(s: str) -> bytes | None:
    """Legacy OpenAI writes partial UTF-8 as ``"bytes:\\xe2\\x80"``."""
    if not s.startswith("bytes:"):
        return None
    try:
        return s[6:].encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


class Vocabulary:
    """Token string / UTF-8 bytes -> id, and id -> display string.

    From a tokenizer: each id's raw piece, its decoded string and (byte-level BPE) its bytes are
    keys. Without one, ids are assigned in order of first appearance (``growing``).
    """

    def __init__(self, size: int | None = None, strings: Sequence[str] | None = None) -> None:
        self.growing = strings is None
        self._strings: list[str] = list(strings or [])
        self._by_str: dict[str, int] = {}
        self._by_bytes: dict[bytes, int] = {}
        self.min_size = size or 0

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Vocabulary:
        voc = TokenizerVocabulary.from_tokenizer(tokenizer)
        v = cls(size=voc.size, strings=voc.display_strings())
        v.vocabulary = voc
        for i, p in enumerate(voc.pieces):
            if p is not None:
                v._by_str.setdefault(p, i)
                b = voc.piece_bytes(i)
                if b is not None and voc.convention != "wordpiece":
                    v._by_bytes.setdefault(b, i)
        for i, s in enumerate(v._strings):
            v._by_str.setdefault(s, i)
        v.name = voc.name or "tokenizer"
        return v

    vocabulary: TokenizerVocabulary | None = None
    name = "from file"

    def id_of(self, token: Any, token_bytes: Any, where: str) -> int:
        if isinstance(token_bytes, list) and token_bytes and self._by_bytes:
            try:
                i = self._by_bytes.get(bytes(token_bytes))
            except (ValueError, TypeError):
                raise TokcalError(f"{where}: 'bytes' must be a list of integers 0..255, got {token_bytes!r}") from None
            if i is not None:
                return i
        if not isinstance(token, str):
            raise TokcalError(f"{where}: token must be a string, got {token!r}")
        i = self._by_str.get(token)
        if i is None:
            raw = _parse_bytes_token(token)
            if raw is not None:
                i = self._by_bytes.get(raw)
        if i is None and self._by_bytes:
            i = self._by_bytes.get(token.encode("utf-8"))
        if i is not None:
            return i
        if not self.growing:
            raise TokcalError(f"{where}: token {token!r} is not in the vocabulary ({self.name})")
        i = len(self._strings)
        self._strings.append(token)
        self._by_str[token] = i
        return i

    def note_id(self, i: int, decoded: Any) -> None:
        """Record an id given directly (vLLM); keeps a display string when the vocabulary grows."""
        if self.growing:
            while len(self._strings) <= i:
                self._strings.append(f"<{len(self._strings)}>")
            if isinstance(decoded, str) and self._strings[i] == f"<{i}>":
                self._strings[i] = decoded

    @property
    def size(self) -> int:
        return max(len(self._strings), self.min_size)

    def strings(self) -> list[str]:
        return self._strings + [f"<{i}>" for i in range(len(self._strings), self.size)]

    def table_vocabulary(self, size: int) -> TokenizerVocabulary:
        """The table's :class:`tokcal.vocab.Vocabulary`: the tokenizer's raw pieces, or the API's token
        strings (decoded text, ``"text"`` convention) with no piece for ids never seen."""
        if self.vocabulary is not None and self.vocabulary.size == size:
            return self.vocabulary
        if self.vocabulary is not None:
            v = self.vocabulary
            return TokenizerVocabulary([*v.pieces, *[None] * (size - v.size)], v.convention,
                                       special_ids=v.special_ids, eos_ids=v.eos_ids, name=v.name)
        pieces = [None if s == f"<{i}>" else s for i, s in enumerate(self._strings)]
        return TokenizerVocabulary([*pieces, *[None] * (size - len(pieces))], "text", name=self.name)


@dataclass
class _Position:
    cands: dict[int, float]  # id -> logprob (alternatives, possibly plus the position's own token)
    n_top: int  # how many of the best of cands are a proper top-n (no gaps)
    token: int  # the position's own token (sampled or prompt)
    token_lp: float | None


@dataclass
class _Sequence:
    line: int
    kind: str  # "prompt" (labels = own tokens) or "generated"
    positions: list[_Position]
    offsets: list[int] = field(default_factory=list)  # index of each position in its sequence


def _num(x: Any, where: str) -> float:
    if x is None:
        raise TokcalError(f"{where}: logprob is null")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TokcalError(f"{where}: logprob must be a number, got {x!r}")
    if math.isnan(x) or x > 1e-6:
        raise TokcalError(f"{where}: logprob {x!r} is not a log-probability (NaN or above 0)")
    return float(x)


def _get(obj: Any, key: str, where: str, typ: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise TokcalError(f"{where}: missing '{key}'")
    val = obj[key]
    if not isinstance(val, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise TokcalError(f"{where}.{key}: expected {names}, got {type(val).__name__}")
    return val


def _parse_chat(obj: dict, where: str, vocab: Vocabulary) -> list[tuple[str, list[_Position]]]:
    out = []
    for c, choice in enumerate(_get(obj, "choices", where, list)):
        w = f"{where}: choices[{c}]"
        lp = _get(choice, "logprobs", w, dict)
        content = _get(lp, "content", f"{w}.logprobs", list)
        pos = []
        for j, e in enumerate(content):
            we = f"{w}.logprobs.content[{j}]"
            tok = vocab.id_of(_get(e, "token", we, str), e.get("bytes"), we)
            tlp = _num(_get(e, "logprob", we, (int, float)), we)
            cands: dict[int, float] = {}
            for a, alt in enumerate(_get(e, "top_logprobs", we, list)):
                wa = f"{we}.top_logprobs[{a}]"
                i = vocab.id_of(_get(alt, "token", wa, str), alt.get("bytes"), wa)
                cands[i] = max(cands.get(i, -math.inf), _num(_get(alt, "logprob", wa, (int, float)), wa))
            n_top = len(cands)
            cands.setdefault(tok, tlp)
            pos.append(_Position(cands, n_top, tok, tlp))
        out.append(("generated", pos))
    return out


def _parse_completions(obj: dict, where: str, vocab: Vocabulary, key: str = "logprobs"
                       ) -> list[tuple[str, list[_Position]]]:
    out = []
    for c, choice in enumerate(_get(obj, "choices", where, list)):
        w = f"{where}: choices[{c}].{key}"
        lp = _get(choice, key, f"{where}: choices[{c}]", dict)
        tokens = _get(lp, "tokens", w, list)
        tlps = _get(lp, "token_logprobs", w, list)
        tops = _get(lp, "top_logprobs", w, list)
        if not len(tokens) == len(tlps) == len(tops):
            raise TokcalError(f"{w}: tokens, token_logprobs and top_logprobs differ in length "
                              f"({len(tokens)}, {len(tlps)}, {len(tops)})")
        pos = []
        for j, (t, tl, top) in enumerate(zip(tokens, tlps, tops, strict=True)):
            wj = f"{w}[{j}]"
            tok = vocab.id_of(t, None, f"{w}.tokens[{j}]")
            if top is None or tl is None:
                pos.append(None)  # no prediction here (echoed first token)
                continue
            if not isinstance(top, dict):
                raise TokcalError(f"{w}.top_logprobs[{j}]: expected an object token -> logprob")
            cands: dict[int, float] = {}
            for s, v in top.items():
                i = vocab.id_of(s, None, f"{w}.top_logprobs[{j}]")
                cands[i] = max(cands.get(i, -math.inf), _num(v, f"{w}.top_logprobs[{j}][{s!r}]"))
            tlp = _num(tl, f"{wj}: token_logprobs")
            n_top = len(cands)
            cands.setdefault(tok, tlp)
            pos.append(_Position(cands, n_top, tok, tlp))
        out.append(("generated", pos))
    return out


def _vllm_positions(entries: Any, ids: Any, where: str, vocab: Vocabulary) -> list[_Position | None]:
    if not isinstance(entries, list):
        raise TokcalError(f"{where}: expected a list of per-position mappings, got {type(entries).__name__}")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(entries)):
        raise TokcalError(f"{where}: {len(entries)} positions but token ids of another length")
    out: list[_Position | None] = []
    for j, m in enumerate(entries):
        wj = f"{where}[{j}]"
        if m is None:
            out.append(None)
            continue
        if not isinstance(m, dict) or not m:
            raise TokcalError(f"{wj}: expected a non-empty mapping token_id -> {{logprob, rank, decoded_token}}")
        cands, ranks = {}, {}
        for key, e in m.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise TokcalError(f"{wj}: key {key!r} is not a token id") from None
            if i < 0:
                raise TokcalError(f"{wj}: negative token id {i}")
            if isinstance(e, (int, float)) and not isinstance(e, bool):
                e = {"logprob": e}
            cands[i] = _num(_get(e, "logprob", f"{wj}[{key}]", (int, float)), f"{wj}[{key}]")
            r = e.get("rank")
            ranks[i] = r if isinstance(r, int) and not isinstance(r, bool) else None
            vocab.note_id(i, e.get("decoded_token"))
        tok = int(ids[j]) if ids is not None else int(next(iter(m)))
        if tok not in cands:
            raise TokcalError(f"{wj}: the position's token {tok} has no entry")
        have = sorted(r for r in ranks.values() if r is not None)
        if len(have) == len(ranks):
            run = 0
            while run < len(have) and have[run] == run + 1:
                run += 1
            n_top = run
        else:
            n_top = len(cands)
        out.append(_Position(cands, n_top, tok, cands[tok]))
    return out


def _parse_vllm(obj: dict, where: str, vocab: Vocabulary) -> list[tuple[str, list[_Position | None]]]:
    out: list[tuple[str, list[_Position | None]]] = []
    if "choices" in obj:  # OpenAI-compatible server
        for c, choice in enumerate(_get(obj, "choices", where, list)):
            w = f"{where}: choices[{c}]"
            if choice.get("prompt_logprobs") is not None:
                ids = choice.get("prompt_token_ids", obj.get("prompt_token_ids"))
                out.append(("prompt", _vllm_positions(choice["prompt_logprobs"], ids, f"{w}.prompt_logprobs", vocab)))
            if isinstance(choice.get("logprobs"), dict):
                lp = choice["logprobs"]
                if "content" in lp:
                    out += _parse_chat({"choices": [choice]}, where, vocab)
                else:
                    out += _parse_completions({"choices": [choice]}, where, vocab)
        if not out:
            raise TokcalError(f"{where}: no prompt_logprobs or logprobs in any choice")
        return out
    if obj.get("prompt_logprobs") is not None:
        out.append(("prompt", _vllm_positions(obj["prompt_logprobs"], obj.get("prompt_token_ids"),
                                              f"{where}: prompt_logprobs", vocab)))
    for c, o in enumerate(obj.get("outputs") or []):
        if isinstance(o, dict) and o.get("logprobs") is not None:
            out.append(("generated", _vllm_positions(o["logprobs"], o.get("token_ids"),
                                                     f"{where}: outputs[{c}].logprobs", vocab)))
    if not out:
        raise TokcalError(f"{where}: no prompt_logprobs and no outputs[].logprobs")
    return out


def detect_format(obj: dict) -> str:
    """The format of one response object (see the module docstring)."""
    if "outputs" in obj or "prompt_logprobs" in obj:
        return "vllm"
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if choice.get("prompt_logprobs") is not None:
            return "vllm"
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and "content" in lp:
            return "openai-chat"
        if isinstance(lp, dict) and "tokens" in lp:
            return "openai-completions"
    raise TokcalError("cannot tell the log-prob format (no choices[].logprobs.content, choices[].logprobs.tokens, "
                      "prompt_logprobs or outputs); pass format explicitly")


_PARSERS = {"openai-chat": _parse_chat, "openai-completions": _parse_completions, "vllm": _parse_vllm}


def _reference(obj: dict, where: str, vocab: Vocabulary, tokenizer: Any) -> list[int] | None:
    if "reference_token_ids" in obj:
        ids = obj["reference_token_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise TokcalError(f"{where}: reference_token_ids must be a list of non-negative integers")
        return ids
    if "reference_tokens" in obj:
        toks = _get(obj, "reference_tokens", where, list)
        return [vocab.id_of(t, None, f"{where}: reference_tokens[{j}]") for j, t in enumerate(toks)]
    if "reference" in obj:
        if tokenizer is None:
            raise TokcalError(f"{where}: a 'reference' text needs a tokenizer (--vocab TOKENIZER_DIR)")
        return list(tokenizer(_get(obj, "reference", where, str), add_special_tokens=False)["input_ids"])
    return None


def read_logprobs(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    tokenizer: Any = None,
    vocab_size: int | None = None,
    tokens_are_reference: bool = False,
) -> TokenTable:
    """Read a JSONL file of API responses into a TokenTable (tail unknown: uniform remainder).

    ``tokenizer``: maps token strings to ids (and gives the vocabulary size); without one, ids are
    assigned in order of appearance and ``vocab_size`` (default: the number of distinct tokens
    seen) sets V for the uniform tail. One sequence per choice (and per vLLM prompt).
    """
    if format != "auto" and format not in FORMATS:
        raise TokcalError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    p = Path(path)
    if not p.is_file():
        raise TokcalError(f"{p}: no such file")
    vocab = Vocabulary.from_tokenizer(tokenizer) if tokenizer is not None else Vocabulary(size=vocab_size)
    seqs: list[tuple[int, str, list[_Position | None], list[int] | None]] = []
    fmt = None if format == "auto" else format
    for lineno, obj in iter_jsonl(p):
        where = f"{p}:{lineno}"
        if fmt is None:
            try:
                fmt = detect_format(obj)
            except TokcalError as e:
                raise TokcalError(f"{where}: {e}") from None
        ref = _reference(obj, where, vocab, tokenizer)
        for kind, positions in _PARSERS[fmt](obj, where, vocab):
            seqs.append((lineno, kind, positions, ref))
    if not seqs:
        raise TokcalError(f"{p}: no responses")
    return _build(seqs, vocab, vocab_size, tokens_are_reference, {"format": fmt, "file": str(p)})


def _build(seqs, vocab: Vocabulary, vocab_size: int | None, tokens_are_reference: bool,
           meta: dict[str, Any]) -> TokenTable:
    V = vocab.size
    if vocab_size is not None:
        if vocab_size < V:
            raise TokcalError(f"vocab_size={vocab_size} is smaller than the {V} token ids in use")
        V = vocab_size
        v_from = "given"
    elif vocab.growing:
        v_from = "distinct tokens seen"
        warnings.warn(f"{meta['file']}: no tokenizer and no vocab_size, so the vocabulary size is taken as the "
                      f"{V} distinct tokens seen; the uniform tail, imputed log-probs and Brier scores assume it. "
                      "Pass the model's vocab_size (CLI: --vocab-size) or its tokenizer (--vocab)",
                      TokcalWarning, stacklevel=3)
    else:
        v_from = "tokenizer"
    rows: list[tuple[int, int, _Position, int]] = []
    label_kinds = set()
    for s, (lineno, kind, positions, ref) in enumerate(seqs):
        present = [(j, q) for j, q in enumerate(positions) if q is not None]
        if kind == "prompt" or tokens_are_reference:
            labels = [q.token for _, q in present]
            label_kinds.add("teacher-forced")
        elif ref is not None:
            labels = [int(x) for x in align_labels([q.token for _, q in present], ref).labels]
            label_kinds.add("aligned")
        else:
            labels = [-1] * len(present)
            label_kinds.add("none")
        for (j, q), y in zip(present, labels, strict=True):
            if y >= V:
                raise TokcalError(f"line {lineno}: token id {y} outside the vocabulary of size {V}")
            rows.append((s, j, q, y))
        for j, q in present:
            bad = [i for i in q.cands if i >= V]
            if bad:
                raise TokcalError(f"line {lineno}: position {j} has token id {bad[0]} >= vocab size {V}")
    if not rows:
        raise TokcalError(f"{meta['file']}: no positions with log-probs")
    ks = [q.n_top for _, _, q, _ in rows]
    k = min(ks)
    if k < 1:
        i = int(np.argmin(ks))
        raise TokcalError(f"{meta['file']}: line {seqs[rows[i][0]][0]} position {rows[i][1]} has no top_logprobs "
                          "alternatives; request top_logprobs >= 1")
    n = len(rows)
    top_ids = np.empty((n, k), np.int64)
    top_lp = np.empty((n, k), np.float64)
    label_lp = np.full(n, np.nan)
    imputed = 0
    for r, (_, _, q, y) in enumerate(rows):
        best = sorted(q.cands.items(), key=lambda kv: -kv[1])[:k]
        top_ids[r] = [i for i, _ in best]
        top_lp[r] = [max(v, -1e4) for _, v in best]
        if y < 0:
            continue
        v = q.cands.get(y)
        if v is None or v <= SENTINEL or not math.isfinite(v):
            rest = V - k
            mass = 1.0 - float(np.exp(top_lp[r]).sum())
            v = math.log(max(mass, 1e-12) / rest) if rest > 0 else -1e4
            if y in top_ids[r]:
                v = float(top_lp[r][list(top_ids[r]).index(y)])
            else:
                imputed += 1
        label_lp[r] = v
    kinds = sorted(label_kinds)
    source = {**meta, "task": "api-logprobs", "top_k": k, "tail": "unknown (uniform remainder)",
              "labels": kinds[0] if len(kinds) == 1 else "mixed: " + ",".join(kinds),
              "label_logprob_imputed": imputed, "vocab": vocab.name, "vocab_size": V, "vocab_size_from": v_from}
    return TokenTable.from_logprobs(
        top_ids, top_lp, np.array([y for *_, y in rows], np.int64), label_lp, vocab_size=V,
        sequence_ids=np.array([s for s, *_ in rows], np.int64), positions=np.array([j for _, j, *_ in rows]),
        vocab=vocab.table_vocabulary(V), source=source,
    )
