"""Plumbing shared by the Hugging Face collectors of :mod:`tokcal.sources.hf`: input items and
groups, blocks of documents, streaming to a dataset directory, device helpers, and
chunked sketching of logits on their device. Imports torch: load it only with a model at hand."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ParameterError, TokcalError, TokcalWarning
from ..sketch import LogitSketch, sketch_logits
from ..table import TokenTable
from ..vocab import Vocabulary
from .dataset import DEFAULT_FLUSH_SECONDS, WRITERS, DatasetWriter

#: logits per sketched chunk. On CPU 512 MiB of float32: the output head's weights are re-read
#: for every chunk, and GPT-2 small's head ran 20-35 % slower on 166-row chunks. On an accelerator
#: 32 MiB: its matmul is efficient at any size, and the torch sketch holds ~7 chunk-sized temporaries.
_CHUNK_ELEMS_CPU = 1 << 27
_CHUNK_ELEMS_DEVICE = 1 << 23
_SKETCH_COLUMNS = ("top_ids", "top_logits", "label_logit", "log_normalizer", "tail")
Progress = Callable[[int, int], None]  # (documents finished, tokens predicted) increments


# ----------------------------------------------------------------------------------------------
# Items, groups and bookkeeping shared by the three tasks
# ----------------------------------------------------------------------------------------------


@dataclass
class _Item:
    id: str
    seq: int
    hash: str
    groups: dict[str, str]
    data: Any


def _items(raw: Sequence[Any], kind: type, doc_ids: Sequence[str] | None,
           groups: Mapping[str, Any] | None, to_data: Callable[[Any], Any],
           sequence_ids: Sequence[int] | None = None) -> list[_Item]:
    if isinstance(raw, (str, bytes)):
        raise TokcalError("expected a sequence of inputs, got a single string")
    raw = list(raw)
    if doc_ids is not None and len(doc_ids) != len(raw):
        raise TokcalError(f"doc_ids: {len(doc_ids)} ids for {len(raw)} inputs")
    if sequence_ids is not None and len(sequence_ids) != len(raw):
        raise TokcalError(f"sequence_ids: {len(sequence_ids)} ids for {len(raw)} inputs")
    seqs = list(range(len(raw))) if sequence_ids is None else [int(s) for s in sequence_ids]
    extra: dict[str, list[str]] = {}
    for name, val in (groups or {}).items():
        if isinstance(val, str):
            extra[name] = [val] * len(raw)
        else:
            vals = [str(v) for v in val]
            if len(vals) != len(raw):
                raise TokcalError(f"group '{name}': {len(vals)} values for {len(raw)} inputs")
            extra[name] = vals
    out = []
    for i, x in enumerate(raw):
        own = dict(x.groups) if isinstance(x, kind) else {}
        own.update({k: v[i] for k, v in extra.items()})
        data = to_data(x)
        did = doc_ids[i] if doc_ids is not None else (x.id if isinstance(x, kind) else f"#{i}")
        h = hashlib.sha256(repr((data, sorted(own.items()))).encode()).hexdigest()[:16]
        out.append(_Item(str(did), seqs[i], h, own, data))
    names = {frozenset(it.groups) for it in out}
    if len(names) > 1:
        raise TokcalError(f"inputs disagree on group names: {sorted(sorted(n) for n in names)}")
    return out


@dataclass
class _Rows:
    """Predictions of one block of documents, in any order."""

    sketches: list[LogitSketch]
    seq: list[np.ndarray]
    pos: list[np.ndarray]
    label: list[np.ndarray]

    def add(self, sk: LogitSketch, seq: np.ndarray, pos: np.ndarray, label: np.ndarray) -> None:
        self.sketches.append(sk)
        self.seq.append(seq)
        self.pos.append(pos)
        self.label.append(label)


def _table(rows: _Rows, block: list[_Item], vocab: Vocabulary, source: dict[str, Any]) -> TokenTable | None:
    if not rows.sketches:
        return None
    seq, pos, lab = (np.concatenate(x) for x in (rows.seq, rows.pos, rows.label))
    order = np.lexsort((pos, seq))
    sk = _concat_sketches(rows.sketches)
    sk = LogitSketch(*(getattr(sk, f)[order] for f in _SKETCH_COLUMNS), layout=sk.layout, vocab_size=sk.vocab_size)
    seq, pos, lab = seq[order], pos[order], lab[order]
    by_seq = {it.seq: it for it in block}
    groups = {name: np.array([by_seq[s].groups[name] for s in seq], dtype=object) for name in block[0].groups}
    return TokenTable.from_sketch(sk, lab, sequence_ids=seq, positions=pos, groups=groups, vocab=vocab,
                                  source=source)


def _blocks(items: list[_Item], cost: Callable[[_Item], int], budget: int) -> list[list[_Item]]:
    blocks, cur, used = [], [], 0
    for it in items:
        cur.append(it)
        used += cost(it)
        if used >= budget:
            blocks.append(cur)
            cur, used = [], 0
    if cur:
        blocks.append(cur)
    return blocks


def _drive(items: list[_Item], predict: Callable[[list[_Item]], _Rows], cost: Callable[[_Item], int],
           budget: int, vocab: Vocabulary, source: dict[str, Any], settings: dict[str, Any],
           out_dir: str | os.PathLike | None, part_rows: int, progress: Progress | None,
           flush_seconds: float = DEFAULT_FLUSH_SECONDS, writer: str | None = None) -> TokenTable | Path:
    fresh = out_dir is not None and not Path(out_dir).exists()
    try:
        return _drive_blocks(items, predict, cost, budget, vocab, source, settings, out_dir, part_rows, progress,
                             flush_seconds, writer)
    except BaseException:
        if fresh:
            _remove_if_unfinished(Path(out_dir))
        raise


def _remove_if_unfinished(out_dir: Path) -> None:
    """Remove a dataset directory this run created if no part was finished: nothing half-made stays."""
    if not out_dir.is_dir() or any(out_dir.glob("*.parquet")):
        return
    writers = out_dir / WRITERS
    if writers.is_dir() and any(p.suffix == ".json" for p in writers.iterdir()):
        return  # a writer listed documents (perhaps without tokens), or another rank is writing
    names = {p.name for p in out_dir.iterdir()}
    if all(n in ("manifest.json", WRITERS) or n.endswith(".tmp") for n in names):
        for p in [*(writers.iterdir() if writers.is_dir() else ()), *out_dir.iterdir()]:
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        out_dir.rmdir()


def _drive_blocks(items: list[_Item], predict: Callable[[list[_Item]], _Rows], cost: Callable[[_Item], int],
                  budget: int, vocab: Vocabulary, source: dict[str, Any], settings: dict[str, Any],
                  out_dir: str | os.PathLike | None, part_rows: int, progress: Progress | None,
                  flush_seconds: float, name: str | None) -> TokenTable | Path:
    """Predict ``items`` block by block; into a table, or into the dataset ``out_dir``.

    With ``out_dir`` under an initialised ``torch.distributed`` process group, this rank takes the
    items whose index is ``rank`` modulo the world size (:mod:`tokcal.distributed.torchrun`). A given
    writer ``name`` (a Ray actor) takes every item and leaves the manifest merge to its coordinator. On
    an exception or ``KeyboardInterrupt`` the finished documents are flushed before it propagates.
    """
    from ..distributed.torchrun import Shard, barrier_and_merge, current_shard

    shard = current_shard() if out_dir is not None and name is None else Shard()
    writer = DatasetWriter(out_dir, settings, part_rows=part_rows, flush_seconds=flush_seconds,
                           writer=name or shard.writer) if out_dir is not None else None
    mine = [it for it in items if shard.mine(it.seq)]
    todo = [it for it in mine if writer is None or not writer.is_done(it.id, it.hash, it.seq)]
    if progress is not None and len(todo) < len(mine):
        progress(len(mine) - len(todo), 0)
    tables = []
    try:
        for block in _blocks(todo, cost, budget):
            table = _table(predict(block), block, vocab, source)
            n = 0 if table is None else len(table)
            if writer is not None:
                counts = {} if table is None else dict(zip(*np.unique(table.sequence_id, return_counts=True),
                                                           strict=True))
                writer.add(table, [{"id": it.id, "hash": it.hash, "sequence_id": it.seq,
                                    "rows": int(counts.get(it.seq, 0))} for it in block])
            elif table is not None:
                tables.append(table)
            if progress is not None:
                progress(len(block), n)
    except BaseException:
        if writer is not None:
            writer.flush()
        raise
    if writer is not None:
        writer.flush()
        if name is None:
            barrier_and_merge(writer)
        return Path(out_dir)
    if not tables:
        raise TokcalError("no tokens to predict: every input was empty or made only of special tokens")
    return tables[0] if len(tables) == 1 else TokenTable.concat(tables)


def _device(model: Any, device: Any) -> torch.device:
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _non_target_ids(tokenizer: Any) -> np.ndarray:
    """Special token ids that are never prediction targets: all of them except EOS."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or []) - {getattr(tokenizer, "eos_token_id", None)}
    return np.array(sorted(ids), np.int64)


def _model_info(model: Any, tokenizer: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {
        "model": str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__),
        "model_class": type(model).__name__,
        "revision": getattr(cfg, "_commit_hash", None),
        "tokenizer": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
    }


def _sketch_rows(logit_fn: Callable[[int, int], torch.Tensor], labels: np.ndarray, n: int, vocab: int,
                 top_k: int, device: torch.device) -> list[LogitSketch]:
    """Sketch ``n`` rows whose logits ``logit_fn(start, stop)`` yields chunk by chunk, on ``device``."""
    step = max(1, (_CHUNK_ELEMS_CPU if device.type == "cpu" else _CHUNK_ELEMS_DEVICE) // max(vocab, 1))
    out = []
    for a in range(0, n, step):
        z = logit_fn(a, min(n, a + step))
        if z.device.type == "cpu":
            z = z.numpy()  # zero-copy; on CPU the numba kernel is ~3x faster than the torch ops
        out.append(sketch_logits(z, labels[a:a + step], top_k=top_k, chunk_rows=step))
    return out


def _concat_sketches(parts: list[LogitSketch]) -> LogitSketch:
    if len(parts) == 1:
        return parts[0]
    return LogitSketch(*(np.concatenate([getattr(s, f) for s in parts]) for f in _SKETCH_COLUMNS),
                       layout=parts[0].layout, vocab_size=parts[0].vocab_size)


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def _check_top_k(top_k: int) -> None:
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ParameterError(f"{{top_k}} must be a positive integer, got {top_k!r}")


# ----------------------------------------------------------------------------------------------
# Causal language models
# ----------------------------------------------------------------------------------------------


_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def _model_positions(model: Any) -> tuple[int, str] | None:
    """``(positions, config field)``: how many positions the model's config says it has, if it says."""
    cfg = getattr(model, "config", None)
    for name in _POSITION_FIELDS:
        v = getattr(cfg, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v, name
    return None


def _context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context: its config's positions, else the tokenizer's ``model_max_length``."""
    pos = _model_positions(model)
    if pos is not None:
        return pos[0]
    v = getattr(tokenizer, "model_max_length", None)
    return v if isinstance(v, int) and 0 < v < 1_000_000 else None


def _clamp_to_context(model: Any, length: int, what: str) -> tuple[int, int | None]:
    """``(length, asked)``: ``length`` clamped to the model's positions, with a :class:`TokcalWarning`
    when it was longer (``asked``: the length asked for, else None). Past its positions a model
    either fails (learned position embeddings: an index error) or predicts from positions it never
    saw in training, so tokcal never runs it there."""
    pos = _model_positions(model)
    if pos is None or length <= pos[0]:
        return length, None
    warnings.warn(f"{what}={length} is longer than the model's context of {pos[0]} positions "
                  f"(config.{pos[1]}); using {what}={pos[0]}", TokcalWarning, stacklevel=3)
    return pos[0], length
