"""Shared plumbing of the log-prob parsers: numbers, field access, positions, sequences, the table.

Positions are streamed into numpy chunks (int32 ids and counts, float32 log-probs, the precision
the table stores): Python lists hold at most one chunk (~260k candidates) before they become
arrays. :meth:`Collector.table` turns the chunks into a :class:`~tokcal.table.TokenTable` with
numpy, in blocks of rows.

Per position a parser gives its own token (the sampled or prompt token) with its log-prob, and the
alternatives in the order the server listed them. The **proper top-n** of a position is the longest
run of alternatives that is certainly the n best:

* with vLLM ranks (``prompt_logprobs``): the run of ranks 1, 2, ..., n;
* a list in descending order: all of it;
* a list *not* in descending order lists the sampled token first (vLLM): it is re-sorted, and when
  the sampled token is then the last one it may not be among the true n best, so n = len - 1.

The top-k width of the table is the smallest proper top-n of any position. Values: ``-9999``
(OpenAI's "very unlikely") and ``-inf`` are ~zero probability; a gold token whose log-prob is
unknown or such a sentinel gets the uniform-remainder estimate ``log(r / (V - k))``,
``r = 1 - sum_top exp(logprob)``, the model of the unknown tail that
:func:`tokcal.sketch.sketch_logprobs` records (``TailLayout.kind == "uniform-remainder"``).
"""

from __future__ import annotations

import math
import warnings
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import TokcalError, TokcalWarning
from ...table import TokenTable
from ..align import align_labels
from ._identity import Vocabulary

SENTINEL = -9999.0


class Skip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A well-formed response without log-probs (``"logprobs": null``, a refusal, a failed batch
    request): skipped with one warning unless ``strict``."""


def as_list(x: Any) -> list:
    """``x`` when it is a list, else ``[]`` (format detection must not trip over a mistyped field)."""
    return x if isinstance(x, list) else []


def num(x: Any, where: str) -> float:
    """A log-probability: a number <= 0 (a tiny positive rounding error is tolerated)."""
    if x is None:
        raise TokcalError(f"{where}: logprob is null")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TokcalError(f"{where}: logprob must be a number, got {x!r}")
    if math.isnan(x) or x > 1e-6:
        raise TokcalError(f"{where}: logprob {x!r} is not a log-probability (NaN or above 0)")
    return float(x)


def prob_to_logprob(x: Any, where: str) -> float:
    """A probability in [0, 1] (llama.cpp ``post_sampling_probs``) as a log-probability."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) or not -1e-9 <= x <= 1 + 1e-6:
        raise TokcalError(f"{where}: prob must be a number in [0, 1], got {x!r}")
    return math.log(x) if x > 0 else -math.inf


def get(obj: Any, key: str, where: str, typ: type | tuple[type, ...]) -> Any:
    """``obj[key]`` of the given type, or a :class:`TokcalError` naming where and what."""
    if not isinstance(obj, dict) or key not in obj:
        raise TokcalError(f"{where}: missing '{key}'")
    val = obj[key]
    if not isinstance(val, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise TokcalError(f"{where}.{key}: expected {names}, got {type(val).__name__}")
    return val


class SequenceBuilder:
    """The positions of one sequence (a choice, a prompt), flushed to the collector when done."""

    __slots__ = ("c", "line", "kind", "own", "own_lp", "ntop", "cids", "clps", "counts", "index")

    def __init__(self, c: Collector, line: int, kind: str) -> None:
        self.c, self.line, self.kind = c, line, kind
        self.own: list[int] = []
        self.own_lp: list[float] = []
        self.ntop: list[int] = []
        self.index: list[int] = []
        self.cids: list[int] = []
        self.clps: list[float] = []
        self.counts: list[int] = []

    def add(self, own: int, own_lp: float | None, ids: Sequence[int], lps: Sequence[float],
            ranks: Sequence[int | None] | None = None, index: int | None = None, ordered: bool = True) -> None:
        """One position: its own token (local id) and log-prob, alternatives in server order
        (``ordered=False``: an unordered mapping, the true top-n in any order)."""
        n = len(ids)
        if len(set(ids)) != n:  # one id listed twice (two keys mapped to one id): keep the best
            best: dict[int, float] = {}
            for i, v in zip(ids, lps, strict=True):
                best[i] = max(best.get(i, -math.inf), v)
            ids, lps, ranks = list(best), list(best.values()), None
            n = len(ids)
        if ranks is not None and all(isinstance(r, int) for r in ranks):
            have = sorted(ranks)
            run = 0
            while run < n and have[run] == run + 1:
                run += 1
            ntop = run
        elif not ordered or lps == sorted(lps, reverse=True):
            ntop = n
        else:
            self.c.resorted += 1
            ntop = n - 1 if own in ids and lps[ids.index(own)] <= min(lps) else n
        self.ntop.append(ntop)
        self.own.append(own)
        self.own_lp.append(math.nan if own_lp is None else own_lp)
        self.index.append(len(self.index) if index is None else index)
        self.cids.extend(ids)
        self.clps.extend(lps)
        cnt = n
        if own not in ids and own_lp is not None:
            self.cids.append(own)
            self.clps.append(own_lp)
            cnt += 1
        self.counts.append(cnt)

    def __len__(self) -> int:
        return len(self.own)

    def close(self, reference: list[int] | None, tokens_are_reference: bool) -> None:
        """Labels (own tokens, an aligned reference, or unknown) and flush to the collector."""
        if not self.own:
            return
        if self.kind == "prompt" or tokens_are_reference:
            labels, kind = self.own, "teacher-forced"
        elif reference is not None:
            labels, kind = [int(x) for x in align_labels(self.own, reference).labels], "aligned"
        else:
            labels, kind = [-1] * len(self.own), "none"
        self.c.flush(self, labels, kind)


class Collector:
    """Every position of a file in compact arrays; :meth:`table` builds the TokenTable."""

    _CHUNK = 1 << 18  # candidates per chunk: Python lists up to here, then numpy
    _ROWS = 1 << 16  # rows per dense block when the table is built

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._rows: dict[str, list] = {k: [] for k in ("seq", "pos", "label", "ntop", "count")}
        self._cands: dict[str, list] = {"cids": [], "clps": []}
        self._chunks: dict[str, list[np.ndarray]] = {k: [] for k in (*self._rows, *self._cands)}
        self.seq_line = array("q")
        self.label_kinds: set[str] = set()
        self.resorted = 0
        self.skipped: list[tuple[int, str]] = []
        self.n_skipped = 0
        self.notes: list[str] = []

    def sequence(self, line: int, kind: str) -> SequenceBuilder:
        return SequenceBuilder(self, line, kind)

    def flush(self, s: SequenceBuilder, labels: list[int], kind: str) -> None:
        sid = len(self.seq_line)
        self.seq_line.append(s.line)
        r, c = self._rows, self._cands
        r["seq"] += [sid] * len(s.own)
        r["pos"] += s.index
        r["label"] += labels
        r["ntop"] += s.ntop
        r["count"] += s.counts
        c["cids"] += s.cids
        c["clps"] += s.clps
        self.label_kinds.add(kind)
        if len(c["cids"]) >= self._CHUNK:
            self._spill()

    def _spill(self) -> None:
        for name, vals in (*self._rows.items(), *self._cands.items()):
            if vals:
                self._chunks[name].append(np.array(vals, np.float32 if name == "clps" else np.int32))
                vals.clear()

    def _column(self, name: str) -> np.ndarray:
        parts = self._chunks[name]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32 if name == "clps" else np.int32)

    def skip(self, line: int, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < 3:
            self.skipped.append((line, reason))

    def table(self, path: str, meta: dict[str, Any], vocab_size: int | None, strict: bool) -> TokenTable:
        if self.n_skipped:
            first = "; ".join(f"line {ln}: {why}" for ln, why in self.skipped)
            msg = f"{path}: {self.n_skipped} response(s) without usable log-probs ({first})"
            if strict:
                raise TokcalError(msg + "; strict mode reads all or nothing")
            warnings.warn(msg + "; skipped", TokcalWarning, stacklevel=3)
        self._spill()
        seq = self._column("seq")
        n = len(seq)
        if n == 0:
            notes = "".join(f"; {x}" for x in self.notes)
            raise TokcalError(f"{path}: no positions with log-probs" + (
                f" ({self.n_skipped} response(s) skipped, first: line {self.skipped[0][0]}: {self.skipped[0][1]})"
                if self.n_skipped else "") + notes)
        remap, V, vocabulary = self.vocab.finish(vocab_size)
        if vocab_size is not None:
            v_from = "given"
        elif self.vocab.reference is not None:
            v_from = "tokenizer"
        else:
            v_from = "largest server id + 1" if self.vocab.server_ids else "distinct tokens seen"
            warnings.warn(f"{path}: no tokenizer and no vocab_size, so the vocabulary size is taken from the file: "
                          f"{V} ids ({v_from}); the uniform tail, imputed log-probs and Brier scores assume it. "
                          "Pass the model's vocab_size (CLI: --vocab-size) or its tokenizer (--vocab)",
                          TokcalWarning, stacklevel=3)
        ntop = self._column("ntop")
        k = int(ntop.min())
        pos = self._column("pos")
        if k < 1:
            r = int(np.argmin(ntop))
            raise TokcalError(f"{path}: line {self.seq_line[seq[r]]} position {pos[r]} has no alternatives "
                              "(top-n log-probs); request them: " + meta.get("hint", "top_logprobs >= 1"))
        count = self._column("count")
        cids = self._column("cids")
        clps = self._column("clps")
        label = self._column("label")
        if remap is not None:
            cids = remap[cids]
            label[label >= 0] = remap[label[label >= 0]]
        dedupe = remap is not None and len(np.unique(remap)) < len(remap)
        ends = np.cumsum(count)
        kcap = k  # merging tokens named twice can only lower k
        top_ids = np.empty((n, kcap), np.int64)
        top_lp = np.empty((n, kcap))
        label_lp = np.full(n, np.nan)
        for r0 in range(0, n, self._ROWS):  # dense [rows, m] blocks: bounded temporaries
            r1 = min(n, r0 + self._ROWS)
            c0 = int(ends[r0 - 1]) if r0 else 0
            cnt = count[r0:r1]
            m = int(cnt.max())
            row = np.repeat(np.arange(r1 - r0), cnt)
            col = np.arange(int(ends[r1 - 1]) - c0) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            ids = np.full((r1 - r0, m), -1, np.int64)
            lps = np.full((r1 - r0, m), -np.inf)
            ids[row, col] = cids[c0:ends[r1 - 1]]
            lps[row, col] = clps[c0:ends[r1 - 1]]
            order = np.argsort(-lps, axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, 1)
            lps = np.take_along_axis(lps, order, 1)
            if dedupe:  # a text token and a server id named the same token in one position: keep the better
                dup = np.zeros(ids.shape, bool)
                for j in range(1, m):
                    dup[:, j] = (ids[:, j:j + 1] == ids[:, :j]).any(axis=1) & (ids[:, j] >= 0)
                if dup.any():
                    ntop[r0:r1] = np.maximum(ntop[r0:r1] - dup.sum(axis=1), 0)
                    ids[dup], lps[dup] = -1, -np.inf
                    order = np.argsort(-lps, axis=1, kind="stable")
                    ids = np.take_along_axis(ids, order, 1)
                    lps = np.take_along_axis(lps, order, 1)
            top_ids[r0:r1] = ids[:, :kcap]
            top_lp[r0:r1] = np.maximum(lps[:, :kcap], -1e4)
            lab = label[r0:r1]
            hit = (ids == lab[:, None]) & (lab >= 0)[:, None]
            known = hit.any(axis=1)
            label_lp[r0:r1][known] = np.where(hit, lps, -np.inf).max(axis=1)[known]
        k = int(ntop.min())
        if k < 1:
            r = int(np.argmin(ntop))
            raise TokcalError(f"{path}: line {self.seq_line[seq[r]]} position {pos[r]} has no alternatives "
                              "once tokens named twice are merged")
        top_ids, top_lp = top_ids[:, :k], top_lp[:, :k]
        bad = np.flatnonzero((top_ids >= V).any(axis=1) | (label >= V))
        if len(bad):
            r = int(bad[0])
            raise TokcalError(f"line {self.seq_line[seq[r]]}: position {pos[r]} has a token id >= vocab size {V}")
        has = label >= 0
        need = has & (~np.isfinite(label_lp) | (label_lp <= SENTINEL))
        in_top = (top_ids == label[:, None]).any(axis=1)
        imputed = int((need & ~in_top).sum())
        if need.any():
            rest = V - k
            mass = 1.0 - np.exp(top_lp).sum(axis=1)
            est = np.log(np.maximum(mass, 1e-12) / rest) if rest > 0 else np.full(n, -1e4)
            top_val = np.where(top_ids == label[:, None], top_lp, -np.inf).max(axis=1)
            label_lp = np.where(need, np.where(in_top, top_val, est), label_lp)
        if self.resorted:
            self.notes.append(f"{self.resorted} position(s) listed the sampled token before better alternatives "
                              "(vLLM); re-sorted")
        if k == 1 and meta.get("format") in ("openai-chat", "vllm"):
            warnings.warn(f"{path}: k = 1: a server that lists the sampled token first (vLLM) gives, with "
                          "top_logprobs=1, only the sampled token, which is the true top-1 only under greedy "
                          "decoding; request top_logprobs >= 2", TokcalWarning, stacklevel=3)
        if self.vocab.ambiguous:
            warnings.warn(f"{path}: {self.vocab.ambiguous} token(s) shown as U+FFFD came without bytes or ids and "
                          "got an id each (they never match a label); pass --vocab, or request token ids",
                          TokcalWarning, stacklevel=3)
        for note in self.notes:
            warnings.warn(f"{path}: {note}", TokcalWarning, stacklevel=3)
        kinds = sorted(self.label_kinds)
        source = {**{k_: v for k_, v in meta.items() if k_ != "hint"}, "task": "api-logprobs", "top_k": k,
                  "tail": "unknown (uniform remainder)",
                  "labels": kinds[0] if len(kinds) == 1 else "mixed: " + ",".join(kinds),
                  "label_logprob_imputed": imputed, "vocab": self.vocab.name, "vocab_size": V,
                  "vocab_size_from": v_from,
                  "skipped_responses": self.n_skipped, "resorted_positions": self.resorted}
        return TokenTable.from_logprobs(
            top_ids, top_lp, label, label_lp, vocab_size=V, sequence_ids=seq, positions=pos,
            vocab=vocabulary, source=source,
        )
