"""Teacher-forced token predictions from Hugging Face models (causal LM, seq2seq, token classification).

Imports torch and transformers at module top: load it only when a model is at hand
(``from tokcal.sources import hf``).

Every predicted token becomes a TokenTable row. Logits are never kept for a whole batch: the
causal path runs the model body, picks the hidden states of the target positions and applies the
output head in chunks of ~``_CHUNK_ELEMS_CPU`` (CPU) or ``_CHUNK_ELEMS_DEVICE`` logits, each chunk
sketched on its device
(:func:`tokcal.sketch.sketch_logits`, exact at T = 1; on CPU the chunk goes zero-copy to the numba
kernel). Seq2seq and token classification sketch
the selected decoder/tagger rows of one batch in the same chunks.

**Long texts (causal).** Sliding windows as in the Hugging Face perplexity guide: window w covers
tokens ``[w*stride, w*stride + max_length)``; it predicts only the tokens after the previous
window's end, so every token is predicted exactly once, each with at least
``max_length - stride`` tokens of context (``1 <= stride < max_length``; default ``max_length // 2``).

**Context length.** A ``max_length`` (or ``max_target_length``) beyond the positions the model's
config declares (``n_positions``, ``max_position_embeddings``, ``n_ctx``, ``seq_length``) is clamped
to them with a :class:`~tokcal.errors.TokcalWarning`; a given ``stride`` is scaled by the same factor,
so the windows overlap by the same share. The table's source records ``max_length`` (used) and
``max_length_asked``. Since tokcal windows long texts itself, the tokenizer is called with
``verbose=False`` (transformers' "sequence length is longer than the maximum" warning does not apply).
A dataset directory this call created is removed again if it stops before finishing any part.

**BOS and special tokens (causal).** ``prepend_bos=None`` keeps the tokenizer's own behaviour
(``tokenizer(text)``: GPT-2 adds nothing, Llama prepends ``<s>``); ``True`` tokenizes without
special tokens and prepends ``tokenizer.bos_token_id`` (so the first text token is predicted);
``False`` uses no special tokens at all (the first text token is context only).

**End of sequence.** EOS is a real prediction (and a classic place of miscalibration), so an EOS
token inside the ids is a target; ``append_eos=True`` (causal) appends ``eos_token_id`` to every
document so the end of each document is predicted too. Seq2seq targets keep the tokenizer's EOS.
Every other special token (BOS, padding, mask, CLS/SEP, ...) is context only, never a target.
``position`` is the index of the predicted token in the document's token ids after this BOS policy.

**Padding.** Causal batches are padded on ``tokenizer.padding_side`` with explicit
``position_ids`` (cumulative attention mask), so left and right padding give the same values.
Seq2seq and token-classification batches are padded on the right.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ParameterError, TokcalError
from ..sketch import DEFAULT_TOP_K
from ..table import TokenTable
from ..vocab import Vocabulary
from ._hf_common import (
    Progress,
    _check_top_k,
    _clamp_to_context,
    _concat_sketches,
    _context_length,
    _device,
    _drive,
    _Item,
    _items,
    _model_info,
    _non_target_ids,
    _pad_id,
    _Rows,
    _sketch_rows,
)
from .dataset import DEFAULT_FLUSH_SECONDS, DEFAULT_PART_ROWS
from .readers import Document, Pair, TaggedSentence


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, first_target)`` over ``n_tokens`` ids (HF perplexity guide).

    Window ``[begin, end)`` predicts tokens ``first_target .. end-1`` (token t from positions
    ``begin .. t-1``). Token 0 is never predicted; every other token exactly once.
    """
    if not 1 <= stride < max_length:
        raise ParameterError(f"{{stride}} must be in [1, {{max_length}}={max_length}), got {stride}")
    out, begin, prev_end = [], 0, 1
    while prev_end < n_tokens:
        end = min(begin + max_length, n_tokens)
        out.append((begin, end, prev_end))
        prev_end = end
        begin += stride
    return out


class _CausalRunner:
    """Body + output head of a causal LM; falls back to the full forward if the head is not plain."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        base = getattr(model, "base_model", None)
        self.base = base if base is not None and base is not model and self.head is not None else None
        fwd = inspect.signature((self.base or model).forward).parameters
        self.positions = "position_ids" in fwd
        self.checked = self.base is None

    def _kwargs(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.positions:
            kw["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        return kw

    def rows(self, ids: torch.Tensor, mask: torch.Tensor, b: torch.Tensor, t: torch.Tensor
             ) -> Callable[[int, int], torch.Tensor]:
        """A function giving the logits of rows ``(b[i], t[i])`` for ``i in [start, stop)``."""
        kw = self._kwargs(ids, mask)
        if not self.checked:
            self.checked = True
            probe = {k: v[:1, :16] for k, v in kw.items()}  # row 0 is the widest window: no left padding
            h = self.base(**probe, use_cache=False)[0]
            full = self.model(**probe, use_cache=False).logits
            mine = self.head(h)
            scale = 1e-4 * (1.0 + float(full.abs().max()))
            if mine.shape != full.shape or float((mine - full).abs().max()) > scale:
                self.base = None  # logits are not head(hidden) here (soft-capping, scaling, ...)
        if self.base is not None:
            hidden = self.base(**kw, use_cache=False)[0][b, t]
            return lambda a, z: self.head(hidden[a:z]).float()
        logits = self.model(**kw, use_cache=False).logits[b, t]
        return lambda a, z: logits[a:z].float()


def collect_causal(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str | Document],
    *,
    top_k: int = DEFAULT_TOP_K,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    device: Any = None,
    groups: Mapping[str, str | Sequence[str]] | None = None,
    out_dir: str | os.PathLike | None = None,
    doc_ids: Sequence[str] | None = None,
    prepend_bos: bool | None = None,
    append_eos: bool = False,
    part_rows: int = DEFAULT_PART_ROWS,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    writer: str | None = None,
    sequence_ids: Sequence[int] | None = None,
    block_tokens: int | None = None,
    progress: Progress | None = None,
) -> TokenTable | Path:
    """Teacher-forced next-token predictions of a causal LM on ``texts``, one row per token.

    ``texts``: strings or :class:`~tokcal.sources.readers.Document` (whose id and groups are used).
    ``max_length``: window length (default: the model's context size); ``stride``: window step
    (default ``max_length // 2``). ``groups``: name -> one value for all texts or one per text.
    ``out_dir``: stream Parquet parts into this dataset directory (resumable, see
    :mod:`tokcal.sources.dataset`; parts of ``part_rows`` rows, finished documents flushed at least
    every ``flush_seconds``; under a ``torch.distributed`` process group each rank collects its share,
    :mod:`tokcal.distributed.torchrun`; ``writer`` names this process among several writing the
    directory, whose coordinator merges the manifest, :mod:`tokcal.distributed.ray`) and return its path
    instead of a table. ``sequence_ids``: the ``sequence_id`` of each text (default: its index). ``prepend_bos`` and
    ``append_eos``: see the module docstring. Texts are processed, and written, in blocks of about
    ``block_tokens`` tokens; ``progress(docs, tokens)`` is called with increments after each block.
    ``sequence_id`` is the index of the text in ``texts``.
    """
    _check_top_k(top_k)
    if batch_size < 1:
        raise ParameterError(f"{{batch_size}} must be >= 1, got {batch_size}")
    items = _items(texts, Document, doc_ids, groups, lambda x: x.text if isinstance(x, Document) else str(x),
                   sequence_ids)
    L = max_length if max_length is not None else _context_length(model, tokenizer)
    if L is None:
        raise ParameterError("cannot tell the model's context length; pass {max_length}")
    if L < 2:
        raise ParameterError(f"{{max_length}} must be >= 2, got {L}")
    if stride is not None:
        sliding_windows(0, L, stride)  # validates the stride asked for, against the length asked for
    L, asked = _clamp_to_context(model, L, "max_length")
    if stride is not None and asked is not None:
        stride = max(1, stride * L // asked)  # the same overlap, as a share of the window
    S = stride if stride is not None else max(1, L // 2)
    sliding_windows(0, L, S)  # validates stride
    if prepend_bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise TokcalError("prepend_bos=True but the tokenizer has no bos_token_id")
    if append_eos and getattr(tokenizer, "eos_token_id", None) is None:
        raise TokcalError("append_eos=True but the tokenizer has no eos_token_id")
    dev = _device(model, device)
    runner = _CausalRunner(model)
    vocab_size = int(runner.head.weight.shape[0]) if runner.head is not None else int(model.config.vocab_size)
    if len(tokenizer) > vocab_size:
        raise TokcalError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}")
    k = min(top_k, vocab_size)
    special = _non_target_ids(tokenizer)
    pad = _pad_id(tokenizer)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    bos = {None: "tokenizer", True: "prepend", False: "none"}[prepend_bos]
    info = _model_info(model, tokenizer)
    source = {**info, "task": "causal-lm", "top_k": k, "labels": "teacher-forced", "max_length": L,
              "stride": S, "bos": bos, "append_eos": bool(append_eos)}
    if asked is not None:
        source["max_length_asked"] = asked
    settings = {**source, "vocab_size": vocab_size}

    def encode(block: list[_Item]) -> list[list[int]]:
        texts_ = [it.data for it in block]
        # verbose=False: tokcal windows long texts itself, so the "longer than the maximum" warning is moot
        if prepend_bos is None:
            ids = tokenizer(texts_, verbose=False)["input_ids"]
        else:
            ids = tokenizer(texts_, add_special_tokens=False, verbose=False)["input_ids"]
            ids = [[tokenizer.bos_token_id, *x] for x in ids] if prepend_bos else ids
        return [[*x, tokenizer.eos_token_id] for x in ids] if append_eos else ids

    def predict(block: list[_Item]) -> _Rows:
        rows = _Rows([], [], [], [])
        windows = []
        for it, ids in zip(block, encode(block), strict=True):
            arr = np.asarray(ids, np.int64)
            windows += [(it.seq, arr, b, e, f) for b, e, f in sliding_windows(len(arr), L, S)]
        windows.sort(key=lambda w: w[3] - w[2], reverse=True)
        with torch.inference_mode():
            for a in range(0, len(windows), batch_size):
                batch = windows[a:a + batch_size]
                width = max(e - b for _, _, b, e, _ in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                bi, ti, seq, pos, lab = [], [], [], [], []
                for r, (s, arr, b, e, f) in enumerate(batch):
                    off = width - (e - b) if left else 0
                    ids[r, off:off + e - b] = torch.from_numpy(arr[b:e])
                    mask[r, off:off + e - b] = 1
                    tgt = np.arange(f, e)
                    tgt = tgt[~np.isin(arr[tgt], special)]
                    bi.append(np.full(len(tgt), r))
                    ti.append(off + tgt - 1 - b)
                    seq.append(np.full(len(tgt), s))
                    pos.append(tgt)
                    lab.append(arr[tgt])
                labels = np.concatenate(lab)
                if not len(labels):
                    continue
                fn = runner.rows(ids.to(dev), mask.to(dev), torch.from_numpy(np.concatenate(bi)).to(dev),
                                 torch.from_numpy(np.concatenate(ti)).to(dev))
                sk = _concat_sketches(_sketch_rows(fn, labels, len(labels), vocab_size, k, dev))
                rows.add(sk, np.concatenate(seq), np.concatenate(pos), labels)
        return rows

    vocab = Vocabulary.from_tokenizer(tokenizer, size=vocab_size)
    return _drive(items, predict, lambda it: len(it.data) // 3 + 1,
                  budget=block_tokens or max(4096, 4 * batch_size * L), vocab=vocab, source=source,
                  settings=settings, out_dir=out_dir, part_rows=part_rows, progress=progress,
                  flush_seconds=flush_seconds, writer=writer)


# ----------------------------------------------------------------------------------------------
# Sequence-to-sequence
# ----------------------------------------------------------------------------------------------


def _shift_right(model: Any, labels: torch.Tensor, pad: int) -> torch.Tensor:
    if hasattr(model, "prepare_decoder_input_ids_from_labels"):
        return model.prepare_decoder_input_ids_from_labels(labels=labels)
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise TokcalError("model.config.decoder_start_token_id is not set; cannot build decoder inputs")
    out = labels.new_full(labels.shape, pad)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start
    return out.masked_fill_(out == -100, pad)


def collect_seq2seq(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str] | Pair],
    *,
    top_k: int = DEFAULT_TOP_K,
    max_length: int | None = None,
    max_target_length: int | None = None,
    batch_size: int = 8,
    device: Any = None,
    groups: Mapping[str, str | Sequence[str]] | None = None,
    out_dir: str | os.PathLike | None = None,
    doc_ids: Sequence[str] | None = None,
    part_rows: int = DEFAULT_PART_ROWS,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    writer: str | None = None,
    sequence_ids: Sequence[int] | None = None,
    block_tokens: int | None = None,
    progress: Progress | None = None,
) -> TokenTable | Path:
    """Decoder teacher-forced on each target given its source, one row per target token.

    Sources are encoded with the tokenizer's special tokens and truncated to ``max_length``;
    targets with ``tokenizer(text_target=...)``, truncated to ``max_target_length`` (default
    ``max_length``). Decoder inputs are the targets shifted right (``decoder_start_token_id``).
    EOS is a target (a real prediction); other special target tokens (BOS, padding) are not rows.
    ``position``: index in the target ids.
    """
    _check_top_k(top_k)
    items = _items(pairs, Pair, doc_ids, groups,
                   lambda x: (x.source, x.target) if isinstance(x, Pair) else (str(x[0]), str(x[1])), sequence_ids)
    L, asked = _clamp_to_context(model, max_length or _context_length(model, tokenizer) or 512, "max_length")
    LT, asked_t = _clamp_to_context(model, max_target_length or L, "max_target_length")
    dev = _device(model, device)
    head = model.get_output_embeddings()
    vocab_size = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
    k = min(top_k, vocab_size)
    special = _non_target_ids(tokenizer)
    pad = _pad_id(tokenizer)
    source = {**_model_info(model, tokenizer), "task": "seq2seq", "top_k": k, "labels": "teacher-forced",
              "max_length": L, "max_target_length": LT}
    source.update({key: v for key, v in (("max_length_asked", asked), ("max_target_length_asked", asked_t))
                   if v is not None})
    settings = {**source, "vocab_size": vocab_size}

    def predict(block: list[_Item]) -> _Rows:
        rows = _Rows([], [], [], [])
        src = tokenizer([it.data[0] for it in block], truncation=True, max_length=L)["input_ids"]
        tgt = tokenizer(text_target=[it.data[1] for it in block], truncation=True, max_length=LT)["input_ids"]
        order = sorted(range(len(block)), key=lambda i: len(src[i]) + len(tgt[i]), reverse=True)
        with torch.inference_mode():
            for a in range(0, len(order), batch_size):
                idx = order[a:a + batch_size]
                ws = max(max(len(src[i]) for i in idx), 1)
                wt = max(max(len(tgt[i]) for i in idx), 1)
                ids = torch.full((len(idx), ws), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), ws), dtype=torch.long)
                labels = torch.full((len(idx), wt), -100, dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, :len(src[i])] = torch.tensor(src[i], dtype=torch.long)
                    mask[r, :len(src[i])] = 1
                    labels[r, :len(tgt[i])] = torch.tensor(tgt[i], dtype=torch.long)
                lab_np = labels.numpy()
                keep = (lab_np >= 0) & ~np.isin(lab_np, special)
                if not keep.any():
                    continue
                b, t = np.nonzero(keep)
                dec = _shift_right(model, labels.clone(), pad)
                logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                               decoder_input_ids=dec.to(dev), use_cache=False).logits
                sel = logits[torch.from_numpy(b).to(dev), torch.from_numpy(t).to(dev)]
                del logits
                y = lab_np[b, t]
                sk = _concat_sketches(_sketch_rows(lambda p, q, s=sel: s[p:q].float(), y, len(y), vocab_size, k, dev))
                rows.add(sk, np.array([block[idx[r]].seq for r in b], np.int64), t, y)
        return rows

    vocab = Vocabulary.from_tokenizer(tokenizer, size=vocab_size)
    return _drive(items, predict, lambda it: (len(it.data[0]) + len(it.data[1])) // 3 + 1,
                  budget=block_tokens or max(4096, 16 * batch_size * 64), vocab=vocab, source=source, settings=settings,
                  out_dir=out_dir, part_rows=part_rows, progress=progress,
                  flush_seconds=flush_seconds, writer=writer)


# ----------------------------------------------------------------------------------------------
# Token classification
# ----------------------------------------------------------------------------------------------


def collect_token_classification(
    model: Any,
    tokenizer: Any,
    words: Sequence[Sequence[str]] | Sequence[TaggedSentence],
    labels: Sequence[Sequence[str | int] | None] | None = None,
    *,
    top_k: int = DEFAULT_TOP_K,
    max_length: int | None = None,
    batch_size: int = 8,
    device: Any = None,
    groups: Mapping[str, str | Sequence[str]] | None = None,
    out_dir: str | os.PathLike | None = None,
    doc_ids: Sequence[str] | None = None,
    part_rows: int = DEFAULT_PART_ROWS,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    writer: str | None = None,
    sequence_ids: Sequence[int] | None = None,
    block_tokens: int | None = None,
    progress: Progress | None = None,
) -> TokenTable | Path:
    """Word-level predictions of a token classifier: one row per word, read at its first sub-token.

    ``words``: lists of words (or :class:`TaggedSentence`, which carry their tags); ``labels``: one
    tag per word (names mapped through ``model.config.label2id``, or ids), None = unknown (-1).
    Needs a fast tokenizer (``word_ids``). Words cut by ``max_length`` truncation are not rows (a
    warning says how many). The table's vocabulary is ``model.config.id2label``; ``position`` is
    the word index.
    """
    _check_top_k(top_k)
    words = list(words)
    if labels is not None and len(labels) != len(words):
        raise TokcalError(f"labels: {len(labels)} tag lists for {len(words)} sentences")

    def to_data(i_x: tuple[int, Any]) -> tuple[tuple[str, ...], tuple | None]:
        i, x = i_x
        if isinstance(x, TaggedSentence):
            return x.words, x.tags
        tags = None if labels is None or labels[i] is None else tuple(labels[i])
        return tuple(str(w) for w in x), tags

    wrapped = [TaggedSentence(x.id, *to_data((i, x)), x.groups) if isinstance(x, TaggedSentence)
               else TaggedSentence(f"#{i}", *to_data((i, x))) for i, x in enumerate(words)]
    items = _items(wrapped, TaggedSentence, doc_ids, groups, lambda x: (x.words, x.tags), sequence_ids)
    if not getattr(tokenizer, "is_fast", False):
        raise TokcalError("token classification needs a fast tokenizer (word_ids)")
    cfg = model.config
    n_labels = int(cfg.num_labels)
    label2id = {str(k): int(v) for k, v in (getattr(cfg, "label2id", None) or {}).items()}
    id2label = {int(k): str(v) for k, v in (getattr(cfg, "id2label", None) or {}).items()}
    vocab = Vocabulary([id2label.get(i, f"LABEL_{i}") for i in range(n_labels)], "none", special_ids=(),
                       eos_ids=(), name="model.config.id2label")
    L, asked = _clamp_to_context(model, max_length or _context_length(model, tokenizer) or 512, "max_length")
    dev = _device(model, device)
    k = min(top_k, n_labels)
    pad = _pad_id(tokenizer)
    source = {**_model_info(model, tokenizer), "task": "token-classification", "top_k": k,
              "labels": "teacher-forced", "max_length": L, "label_position": "first-subtoken"}
    if asked is not None:
        source["max_length_asked"] = asked
    settings = {**source, "vocab_size": n_labels, "label2id": label2id}
    truncated = [0]

    def tag_id(it: _Item, w: int, tag: Any) -> int:
        if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool):
            if 0 <= tag < n_labels:
                return int(tag)
        elif str(tag) in label2id:
            return label2id[str(tag)]
        raise TokcalError(f"{it.id}: word {w} has tag {tag!r}, not in model.config.label2id {sorted(label2id)}")

    def predict(block: list[_Item]) -> _Rows:
        rows = _Rows([], [], [], [])
        for it in block:
            ws, tags = it.data
            if tags is not None and len(tags) != len(ws):
                raise TokcalError(f"{it.id}: {len(ws)} words but {len(tags)} tags")
        enc = tokenizer([list(it.data[0]) for it in block], is_split_into_words=True, truncation=True,
                        max_length=L)
        with torch.inference_mode():
            for a in range(0, len(block), batch_size):
                idx = list(range(a, min(len(block), a + batch_size)))
                width = max(len(enc["input_ids"][i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                bi, ti, seq, pos, lab = [], [], [], [], []
                for r, i in enumerate(idx):
                    it = block[i]
                    x = enc["input_ids"][i]
                    ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
                    mask[r, :len(x)] = 1
                    wid = enc.word_ids(i)
                    seen = set()
                    for j, w in enumerate(wid):
                        if w is None or w in seen:
                            continue
                        seen.add(w)
                        bi.append(r)
                        ti.append(j)
                        seq.append(it.seq)
                        pos.append(w)
                        tags = it.data[1]
                        lab.append(-1 if tags is None else tag_id(it, w, tags[w]))
                    truncated[0] += len(it.data[0]) - len(seen)
                if not bi:
                    continue
                logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
                sel = logits[torch.tensor(bi, device=dev), torch.tensor(ti, device=dev)]
                y = np.asarray(lab, np.int64)
                sk = _concat_sketches(_sketch_rows(lambda p, q, s=sel: s[p:q].float(), y, len(y), n_labels, k, dev))
                rows.add(sk, np.asarray(seq, np.int64), np.asarray(pos, np.int64), y)
        return rows

    out = _drive(items, predict, lambda it: len(it.data[0]) + 1, budget=block_tokens or max(4096, 64 * batch_size),
                 vocab=vocab, source=source, settings=settings, out_dir=out_dir, part_rows=part_rows, progress=progress,
                  flush_seconds=flush_seconds, writer=writer)
    if truncated[0]:
        warnings.warn(f"{truncated[0]} words beyond max_length={L} were cut and are not in the table", stacklevel=2)
    return out


TASK_MODELS = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM",
               "token-classification": "AutoModelForTokenClassification"}


def load_model(path: str | os.PathLike, task: str = "causal", gguf_file: str | os.PathLike | None = None, *,
               trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` of a local ``from_pretrained`` folder, never the hub.

    ``task``: ``causal``, ``seq2seq`` or ``token-classification``. Weights are read from safetensors
    only (never pickle), or, with ``gguf_file`` (a file name inside ``path``, or a path), from a GGUF
    file through transformers' GGUF loader (needs the ``gguf`` package, extra ``gguf``): the tensors
    are dequantised to a normal float32 torch model and the tokenizer is built from the file's
    ``tokenizer.ggml.*`` metadata. ``trust_remote_code`` stays off unless asked. Every failure is a
    :class:`TokcalError` naming the folder or file.
    """
    import transformers as tf

    from ..errors import TokcalError

    if task not in TASK_MODELS:
        raise TokcalError(f"task must be one of {tuple(TASK_MODELS)}, got {task!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise TokcalError(f"{folder}: not a model directory (a local from_pretrained folder is required)")
    cls = getattr(tf, TASK_MODELS[task])
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        file = folder / gguf_file
        if not file.is_file():
            raise TokcalError(f"{file}: no such GGUF file")
        try:
            import gguf  # noqa: F401 - transformers needs it to read the file
        except ImportError:
            raise TokcalError(f"{file}: reading GGUF needs the gguf package (pip install 'tokcal[gguf]')") from None
        kwargs["gguf_file"] = str(gguf_file)
        what = f"{file}: cannot load a {task} model from this GGUF file"
    else:
        kwargs["use_safetensors"] = True
        what = f"{folder}: cannot load a {task} model with safetensors weights"
    try:
        tok_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, **tok_kwargs)
        model = cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise TokcalError(f"{what} ({type(e).__name__}: {e})") from None
    return model.eval(), tokenizer
