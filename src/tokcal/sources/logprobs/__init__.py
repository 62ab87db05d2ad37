"""Import top-k log-probs that servers returned: OpenAI, vLLM, TGI, llama.cpp, Ollama.

One parser module per server family (:mod:`.openai`, :mod:`.vllm`, :mod:`.tgi`, :mod:`.llamacpp`,
:mod:`.ollama`), over shared plumbing: records of a file (:mod:`._io`: JSON lines, server-sent
events, one document or a JSON array, the OpenAI Batch wrapper), token identity
(:mod:`._identity`: server ids, then bytes, then text) and positions -> TokenTable (:mod:`._common`).

Labels. ``prompt_logprobs`` over a reference text give teacher forcing through an API: the label
of each position is the prompt token itself. Generated tokens have no gold label (-1) unless the
response carries a reference (``reference_token_ids``, ``reference_tokens`` or ``reference`` text
with a tokenizer): then :func:`~tokcal.sources.align.align_labels` gives each generated token the
reference token it aligns to (inserted tokens get -1). ``tokens_are_reference=True`` treats the
returned tokens themselves as gold (e.g. legacy ``echo=True`` scoring of a given text).

A log may mix responses with and without log-probs (``"logprobs": null``, refusals, failed batch
requests): those are skipped with one warning that counts them and names the first lines
(``strict=True``: an error instead). Malformed JSON or a structurally wrong response is always an
error naming ``file:line`` and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import ParameterError, TokcalError
from ...table import TokenTable
from ...vocab import Vocabulary as TokenizerVocabulary
from ._common import Collector, SequenceBuilder, get
from ._identity import Vocabulary, tiktoken_encoding, token_key
from ._io import iter_records, unwrap_batch
from .llamacpp import LlamaCpp
from .ollama import Ollama
from .openai import Chat, Completions
from .tgi import TGI
from .vllm import VLLM

PARSERS = {"vllm": VLLM, "tgi": TGI, "llama.cpp": LlamaCpp, "ollama": Ollama, "openai-chat": Chat,
           "openai-completions": Completions}
FORMATS = tuple(PARSERS)
_LOOKS_FOR = {
    "vllm": "prompt_logprobs or outputs (RequestOutput)",
    "tgi": "generated_text + details, or generated_text + token (stream)",
    "llama.cpp": "completion_probabilities",
    "ollama": "created_at + done + response/message",
    "openai-chat": "choices[].message/delta or choices[].logprobs.content, or object chat.completion.chunk",
    "openai-completions": "choices[].text + choices[].logprobs, or choices[].logprobs.tokens",
}

__all__ = ["read_logprobs", "detect_format", "FORMATS", "Vocabulary", "token_key", "vocabulary_for",
           "tiktoken_encoding"]


def detect_format(obj: Any) -> str:
    """The format of one response object; a :class:`TokcalError` lists every format tried."""
    if isinstance(obj, dict):
        obj, _ = unwrap_batch(obj)
        if obj is None:
            raise TokcalError("a failed batch request has no response to tell the format from")
        for name, cls in PARSERS.items():
            if cls.matches(obj):
                return name
    tried = "; ".join(f"{n} ({what})" for n, what in _LOOKS_FOR.items())
    raise TokcalError(f"cannot tell the log-prob format; tried {tried}; pass format explicitly")


class _Context:
    def __init__(self, vocab: Vocabulary, tokenizer: Any, tokens_are_reference: bool) -> None:
        self.vocab = vocab
        self.collector = Collector(vocab)
        self.tokenizer = tokenizer
        self.tokens_are_reference = tokens_are_reference
        self.meta: dict[str, Any] = {}
        self.where = ""

    def close(self, seq: SequenceBuilder, obj: dict) -> None:
        seq.close(self._reference(obj), self.tokens_are_reference)

    def _reference(self, obj: dict) -> list[int] | None:
        where = self.where
        if "reference_token_ids" in obj:
            ids = obj["reference_token_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                    for i in ids):
                raise TokcalError(f"{where}: reference_token_ids must be a list of non-negative integers")
            return [self.vocab.intern(None, None, i) for i in ids]
        if "reference_tokens" in obj:
            toks = get(obj, "reference_tokens", where, list)
            out = []
            for j, t in enumerate(toks):
                try:
                    out.append(self.vocab.intern(t))
                except TokcalError as e:
                    raise TokcalError(f"{where}: reference_tokens[{j}]: {e}") from None
            return out
        if "reference" in obj:
            if self.tokenizer is None:
                raise TokcalError(f"{where}: a 'reference' text needs a tokenizer (--vocab TOKENIZER_DIR)")
            text = get(obj, "reference", where, str)
            if hasattr(self.tokenizer, "encode_ordinary"):  # tiktoken
                return list(self.tokenizer.encode_ordinary(text))
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return None


def vocabulary_for(tokenizer: Any, vocab_size: int | None = None) -> Vocabulary:
    """The :class:`Vocabulary` of a Hugging Face tokenizer, a ``tiktoken.Encoding``, a
    :class:`tokcal.vocab.Vocabulary`, or none (grows from the file)."""
    if tokenizer is None:
        return Vocabulary(size=vocab_size)
    if isinstance(tokenizer, TokenizerVocabulary):
        return Vocabulary.of(tokenizer)
    if hasattr(tokenizer, "decode_single_token_bytes"):
        return Vocabulary.from_tiktoken(tokenizer)
    return Vocabulary.from_tokenizer(tokenizer)


def read_logprobs(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    tokenizer: Any = None,
    vocab_size: int | None = None,
    tokens_are_reference: bool = False,
    strict: bool = False,
) -> TokenTable:
    """Read a log of server responses into a TokenTable (tail unknown: uniform remainder).

    ``format``: ``"auto"`` (each response is recognised by its fields; an unknown one is an error
    listing the formats tried) or one of :data:`FORMATS`. ``tokenizer``: a Hugging Face tokenizer
    or a ``tiktoken.Encoding``, mapping tokens to the model's ids (and giving V); without one, server
    ids are kept and other tokens get ids in order of appearance, and ``vocab_size`` (default: the
    largest id + 1) sets V for the uniform tail. One sequence per choice (and per vLLM prompt).
    ``strict``: a response without log-probs is an error instead of a skipped, counted one.
    """
    if format != "auto" and format not in FORMATS:
        raise ParameterError(f"{{format}} must be 'auto' or one of {', '.join(FORMATS)}, got "
                             f"{ParameterError.quote(repr(format))}")
    p = Path(path)
    vocab = vocabulary_for(tokenizer, vocab_size)
    ctx = _Context(vocab, tokenizer, tokens_are_reference)
    parsers: dict[str, Any] = {}
    n_records = 0
    for lineno, obj, index in iter_records(p):
        where = f"{p}:{lineno}{index}"
        ctx.where = where
        n_records += 1
        if not isinstance(obj, dict):
            raise TokcalError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        body, reason = unwrap_batch(obj)
        if body is None:
            if strict:
                raise TokcalError(f"{where}: {reason}")
            ctx.collector.skip(lineno, reason or "no response")
            continue
        fmt = format
        if fmt == "auto":
            try:
                fmt = detect_format(body)
            except TokcalError as e:
                raise TokcalError(f"{where}: {e}") from None
        parser = parsers.get(fmt)
        if parser is None:
            parser = parsers[fmt] = PARSERS[fmt]()
        parser.parse(body, lineno, where, ctx)
        if strict and ctx.collector.n_skipped:
            raise TokcalError(f"{where}: {ctx.collector.skipped[-1][1]} (strict: every response must have "
                              "log-probs)")
    for parser in parsers.values():
        parser.finish(ctx)
    if n_records == 0:
        raise TokcalError(f"{p}: no responses")
    names = sorted(parsers)
    meta = {"format": names[0] if len(names) == 1 else "mixed: " + ",".join(names), "file": str(p),
            "hint": "; ".join(PARSERS[n].hint for n in names) or "top_logprobs >= 1", **ctx.meta}
    return ctx.collector.table(str(p), meta, vocab_size, strict)
