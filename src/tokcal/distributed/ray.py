"""Ray (extra ``ray``): collection as a Ray Data pipeline, and evaluate / temperature fits of a dataset
directory or a ``ray.data.Dataset`` through mergeable sums. Logits stay on the actor that computed
them; tables are written by the actor into the shared dataset directory; evaluation and fitting move
only sums.

``from tokcal.distributed import ray as tokcal_ray``. The functions use the Ray cluster this process
is connected to: ``ray.init()`` starts a local one; ``ray.init(address="auto")`` joins the cluster of
this machine (``ray start --head``), ``ray.init(address="ray://HEAD:10001")`` or ``RAY_ADDRESS`` a
remote one. The dataset directory must be on storage every worker reads and writes (a shared file
system) -- the code is the same on one laptop and on a cluster.

* :func:`collect` -- ``ray.data.from_items`` of the document indices, ``map_batches`` with an actor pool
  (one model per actor, ``num_gpus`` per actor when the cluster has GPUs); each call of an actor writes
  one part of the dataset as its own writer (:mod:`tokcal.sources.dataset`), and the driver merges the
  manifest at the end. A rerun skips the documents already listed. CPU accounting: :func:`pool_size`.
* :func:`evaluate` -- pass 1 (:class:`~tokcal.distributed.summary.DatasetSummary`) and pass 2
  (:class:`~tokcal.distributed.stats.EvaluationSums`) as one Ray task per shard, merged in storage
  order: the result equals :func:`tokcal.evaluate` of the whole table (see :mod:`tokcal.distributed.stats`).
* :func:`fit` -- :class:`~tokcal.calibrators.Temperature` or :class:`~tokcal.calibrators.GroupTemperature`
  by Newton passes, each a Ray task per shard (:mod:`tokcal.distributed.fit`).

A shard is a part file of a Parquet file or dataset directory (read anew by every pass), or a block of
a ``ray.data.Dataset`` of TokenTable rows (``read_parquet`` of tokcal files, ``from_arrow`` of
:meth:`~tokcal.TokenTable.to_arrow`, ``from_pandas`` with ``meta=``, or any pipeline yielding those
columns): the Dataset is materialized once in its order (its blocks stay in the object store, spilled
to disk beyond its memory), so every pass sees the same blocks; each shard's task gets the last rows
of the one before (worst-token contexts across shard boundaries, as in one pass).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ..errors import SchemaError, TokcalError
from ..evaluation import FINGERPRINT_PREFIX, fingerprint_rows
from ..table import _LISTS, _META_KEY, _REQUIRED, TokenTable, parquet_files
from .fit import Batches, fit_stream
from .quantiles import PassCounts, mass_edges_by
from .reading import pick_rows
from .stats import _CONTEXT, EvaluationSums, confidences
from .summary import DatasetSummary, OrderedMerge, fingerprint, summarize

_TASKS = ("causal", "seq2seq", "token-classification")


# -- collection ------------------------------------------------------------------------------------------


class _Collector:
    """One actor of the pool: a model, and one dataset part per batch of documents."""

    def __init__(self, model_dir: str, task: str, items: Any, out_dir: str, options: dict[str, Any],
                 device: str) -> None:
        from ..sources import hf

        self.hf = hf
        self.model, self.tokenizer = hf.load_model(model_dir, task)
        self.task, self.out_dir, self.options, self.device = task, out_dir, options, device
        self.items = ray.get(items) if isinstance(items, ray.ObjectRef) else items
        self.writer = f"ray{uuid.uuid4().hex[:12]}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = [int(i) for i in batch["index"]]
        docs = [self.items[i] for i in idx]
        fn = {"causal": self.hf.collect_causal, "seq2seq": self.hf.collect_seq2seq,
              "token-classification": self.hf.collect_token_classification}[self.task]
        fn(self.model, self.tokenizer, docs, out_dir=self.out_dir, device=self.device, writer=self.writer,
           sequence_ids=idx, doc_ids=[_doc_id(self.items[i], i) for i in idx], **self.options)
        return {"index": np.asarray(idx, np.int64)}


def _doc_id(item: Any, index: int) -> str:
    """The manifest id of ``items[index]``: its own ``id``, else ``#index`` (the collectors' default for
    a whole list, so ids stay unique across the parts)."""
    return getattr(item, "id", None) or f"#{index}"


def pool_size(resources: dict[str, float], actors: int | None, gpus_per_actor: float | None
              ) -> tuple[int, float, float]:
    """``(actors, CPUs per actor, GPUs per actor)`` of the collection pool on a cluster with ``resources``.

    Default size: one actor per GPU, else CPUs - 1. The pool's CPUs never exceed CPUs - 1 (half the CPUs
    on a one-CPU cluster): Ray Data's own tasks (splitting, reading the inputs) need a free CPU, and a
    pool that holds them all starves those tasks and hangs. More actors than that share their CPUs
    (fractional ``num_cpus``)."""
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    per_gpu = (1.0 if gpus else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
    budget = cpus - 1 if cpus >= 2 else cpus / 2
    n = int(actors) if actors else max(1, int(gpus // per_gpu) if per_gpu else int(budget))
    return n, min(1.0, budget / n), per_gpu


def collect(model_dir: str | Path, items: Sequence[Any], out_dir: str | Path, *, task: str = "causal",
            docs_per_part: int = 64, actors: int | None = None, gpus_per_actor: float | None = None,
            **options: Any) -> Path:
    """Collect ``items`` (what the ``task``'s collector of :mod:`tokcal.sources.hf` takes: texts or
    :class:`~tokcal.sources.readers.Document`, pairs, tagged sentences; their index is the sequence id)
    with the model in the local folder ``model_dir`` into the dataset directory ``out_dir``.

    ``docs_per_part``: documents per ``map_batches`` call (one part each). ``actors``: pool size
    (default: the cluster's GPUs, else its CPUs - 1, at least 1; CPU accounting: :func:`pool_size`).
    ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0. ``options``: the collector's
    settings (``top_k``, ``max_length``, ``stride``, ``batch_size``, ...). Returns ``out_dir``; equal
    row for row to a single-process collection of ``items`` (after sorting by sequence and position;
    bitwise with ``batch_size=1``, else to the float32 rounding of differently padded batches).
    """
    from ..sources.dataset import merge_manifest, read_manifest

    if task not in _TASKS:
        raise TokcalError(f"task must be one of {_TASKS}, got {task!r}")
    if docs_per_part < 1:
        raise TokcalError(f"docs_per_part must be >= 1, got {docs_per_part}")
    items = list(items)
    m = read_manifest(out_dir) if Path(out_dir).exists() else None
    done = {d["id"] for p in m["parts"] for d in p["documents"]} if m else set()
    ids = [_doc_id(x, i) for i, x in enumerate(items)]
    todo = [i for i, d in enumerate(ids) if d not in done]  # a changed document is refused by its writer
    if todo:
        n, cpus, per = pool_size(ray.cluster_resources(), actors, gpus_per_actor)
        kw = {k: v for k, v in options.items() if k not in ("device", "doc_ids", "sequence_ids")}
        ds = ray.data.from_items([{"index": i} for i in todo])
        out = ds.map_batches(
            _Collector, batch_size=docs_per_part, concurrency=n, num_gpus=per, num_cpus=cpus, batch_format="numpy",
            fn_constructor_kwargs={"model_dir": str(model_dir), "task": task, "items": ray.put(items),
                                   "out_dir": str(out_dir), "options": kw, "device": "cuda" if per else "cpu"})
        finished = sum(len(b["index"]) for b in out.iter_batches(batch_format="numpy"))
        assert finished == len(todo), (finished, len(todo))
    merge_manifest(out_dir)
    return Path(out_dir)


# -- evaluation and fitting: shards (part files, or the blocks of a ray.data.Dataset) -------------------


_WINDOW = 8  #: shard results in flight per pass, at least (bounds the object store and the driver)


class _Shards:
    """What a pass runs over, in storage order: the part files of a Parquet file or dataset directory, or
    the blocks of a ``ray.data.Dataset`` materialized once (so every pass sees the same blocks in the same
    order) with the tokcal metadata their rows share. ``head``: a first row (the metadata carrier)."""

    def __init__(self, source: Any, meta: Any = None) -> None:
        from ray.data import Dataset

        if isinstance(source, Dataset):
            self.source, self.raw = None, None
            mat = _ordered_materialize(source)
            names = mat.schema().names if mat.schema() is not None else []
            missing = [c for c in _REQUIRED if c not in names]
            if missing:
                raise SchemaError(f"ray Dataset: missing column(s) {missing} of a TokenTable (it has {names})")
            self.raw = _metadata(source, mat, meta)
            self.items = [r for b in mat.iter_internal_ref_bundles()
                          for r, m in zip(b.block_refs, b.metadata, strict=True) if m.num_rows != 0]
            if not self.items:
                raise TokcalError("ray Dataset: it has no rows")
            self.head = _get(_head.remote(self.items[0], self.raw, self.where(0)))
        else:
            if meta is not None:
                raise TokcalError("meta= is for a ray.data.Dataset; a Parquet file or directory carries its own")
            self.source, self.raw = source, None
            self.items = [str(f) for f in parquet_files(source)]
            self.head = next(TokenTable.iter_parquet(source, batch_rows=1))

    def where(self, i: int) -> str:
        return self.items[i] if self.source is not None else f"ray Dataset block {i}"

    def run(self, task: Any, *args: Any, per_shard: list[Any] | None = None) -> Iterator[Any]:
        """``task.remote(shard, raw, where, *args[, per_shard[i]])`` for every shard; results in storage order,
        at most ``max(_WINDOW, 2 x CPUs)`` pending."""
        window = max(_WINDOW, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: deque[Any] = deque()
        for i, item in enumerate(self.items):
            extra = () if per_shard is None else (per_shard[i],)
            pending.append(task.remote(item, self.raw, self.where(i), *args, *extra))
            if len(pending) >= window:
                yield _get(pending.popleft())
        while pending:
            yield _get(pending.popleft())

    def fingerprint(self) -> str:
        """:func:`tokcal.evaluation.table_fingerprint` of every labelled token (one sweep, shards in order)."""
        if self.source is not None:
            return fingerprint(self.source)
        h = hashlib.sha256()
        for rows in self.run(_fingerprint_rows):
            h.update(rows)
        return FINGERPRINT_PREFIX + h.hexdigest()


def _get(ref: Any) -> Any:
    """``ray.get``; a tokcal error raised in the task is raised here as itself (its message, not Ray's
    wrapper with the remote traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, TokcalError):
            raise e.cause from None
        raise


def _ordered_materialize(ds: Any) -> Any:
    """``ds.materialize()`` in the Dataset's order (Ray Data may reorder blocks unless asked not to)."""
    opts = ds.context.execution_options
    old = opts.preserve_order
    opts.preserve_order = True
    try:
        return ds.materialize()
    finally:
        opts.preserve_order = old


def _metadata(ds: Any, mat: Any, meta: Any) -> dict[bytes, bytes]:
    """The tokcal metadata of a Dataset's rows: of ``meta`` (a TokenTable, Parquet file or dataset
    directory) when given, else of the Dataset's schema (``read_parquet`` of tokcal files, ``from_arrow``
    of :meth:`TokenTable.to_arrow` keep it)."""
    if meta is not None:
        head = meta if isinstance(meta, TokenTable) else next(TokenTable.iter_parquet(meta, batch_rows=1))
        return dict(head.select(np.arange(min(1, len(head)))).to_arrow().schema.metadata)
    for schema in (mat.schema(fetch_if_missing=False), ds.schema(fetch_if_missing=False)):
        raw = getattr(getattr(schema, "base_schema", None), "metadata", None)
        if raw and _META_KEY in raw:
            return dict(raw)
    raise SchemaError("ray Dataset: its schema carries no tokcal metadata (vocabulary, source, k; "
                      "ray.data.from_pandas and most maps drop it): pass meta= a TokenTable, Parquet file or "
                      "dataset directory of the same collection")


def _fixed_lists(col: Any, name: str, where: str) -> Any:
    """A list column as ``fixed_size_list`` (what :meth:`TokenTable.from_arrow` reads): Ray's tensor
    columns (``from_pandas`` of arrays) and variable lists of equal lengths are converted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks, offset = [], 0
    for c in col.chunks:
        if isinstance(c, pa.ExtensionArray):
            c = c.storage
        if pa.types.is_list(c.type) or pa.types.is_large_list(c.type):
            if c.null_count:
                row = offset + int(np.argmax(c.is_null().to_numpy(zero_copy_only=False)))
                raise SchemaError(f"{where}: column {name!r}: row {row} is null")
            lens = pc.list_value_length(c).to_numpy()
            bad = np.flatnonzero(lens != lens[0]) if lens.size else lens
            if bad.size:
                raise SchemaError(f"{where}: column {name!r}: row {offset + int(bad[0])} has {lens[bad[0]]} "
                                  f"values, row {offset} has {lens[0]}")
            c = pa.FixedSizeListArray.from_arrays(c.flatten(), int(lens[0]) if lens.size else 0)
        chunks.append(c)
        offset += len(c)
    if len({c.type for c in chunks}) > 1:
        raise SchemaError(f"{where}: column {name!r}: its chunks have types {sorted({str(c.type) for c in chunks})}")
    return pa.chunked_array(chunks, chunks[0].type) if chunks else col


def _block_tables(block: Any, raw: dict[bytes, bytes], where: str, batch_rows: int) -> Iterator[TokenTable]:
    """The TokenTables of one Dataset block (any block format), ``batch_rows`` rows at a time, read by
    :meth:`TokenTable.from_arrow` (its types, nulls and values checked there)."""
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    tbl = BlockAccessor.for_block(block).to_arrow()
    cols = {}
    for name in tbl.column_names:
        col = tbl.column(name)
        if name in _LISTS:
            col = _fixed_lists(col, name, where)
        elif name.startswith("group:") and pa.types.is_dictionary(col.type) and col.num_chunks > 1:
            col = col.cast(pa.string())  # chunks with different dictionaries
        elif name not in _REQUIRED and not name.startswith("group:"):
            continue
        cols[name] = col
    tbl = pa.table(cols).replace_schema_metadata(raw)
    for start in range(0, tbl.num_rows, batch_rows):
        yield TokenTable.from_arrow(tbl.slice(start, batch_rows), f"{where}, rows {start}-")


def _tables(item: Any, raw: dict[bytes, bytes] | None, where: str, batch_rows: int) -> Iterator[TokenTable]:
    """The batches of one shard: a part file (a path) or a Dataset block (resolved from its reference)."""
    if raw is None:
        return TokenTable.iter_parquet(item, batch_rows=batch_rows)
    return _block_tables(item, raw, where, batch_rows)


@ray.remote(num_cpus=1)
def _head(item: Any, raw: dict[bytes, bytes], where: str) -> TokenTable:
    return next(_block_tables(item, raw, where, 1))


@ray.remote(num_cpus=1)
def _fingerprint_rows(item: Any, raw: dict[bytes, bytes] | None, where: str) -> bytes:
    return b"".join(fingerprint_rows(t.sequence_id, t.position, t.label) for t in _tables(item, raw, where, 1 << 20))


@ray.remote(num_cpus=1)
def _summary(item: Any, raw: dict[bytes, bytes] | None, where: str, vocab_size: int,
             block_length: int) -> tuple[DatasetSummary, tuple[np.ndarray, np.ndarray]]:
    """Pass 1 of a shard, and its last rows' (sequence_id, label): the next shard's context carry."""
    total = OrderedMerge()
    tail = (np.zeros(0, np.int64), np.zeros(0, np.int32))
    for t in _tables(item, raw, where, 1 << 20):
        total.add(DatasetSummary.of_table(t, block_length))
        tail = _last_rows(tail, (t.sequence_id, t.label))
    return total.result(DatasetSummary(vocab_size, block_length)), tail


def _last_rows(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.concatenate([x, y])[-_CONTEXT:] for x, y in zip(a, b, strict=True))


@ray.remote(num_cpus=1)
def _sums(item: Any, raw: dict[bytes, bytes] | None, where: str, summary: DatasetSummary, meta: TokenTable,
          kwargs: dict[str, Any], weights: np.ndarray, batch_rows: int,
          carry: tuple[np.ndarray, np.ndarray] | None) -> EvaluationSums:
    acc = EvaluationSums(summary, meta, weights=weights, **kwargs)
    acc._carry = carry  # the rows before this shard: worst-token contexts as in one pass
    for t in _tables(item, raw, where, batch_rows):
        acc.update(t)
    acc.weights = None  # the driver has them; send back only the sums
    return acc


@ray.remote(num_cpus=1)
def _mass_counts(item: Any, raw: dict[bytes, bytes] | None, where: str, layout: tuple[Any, ...], calibrator: Any,
                 batch_rows: int) -> PassCounts:
    counts = PassCounts(*layout)
    for t in _tables(item, raw, where, batch_rows):
        counts.update(confidences(t, calibrator))
    return counts


def _mass_edges(shards: _Shards, calibrator: Any, bins: int, batch_rows: int) -> tuple[np.ndarray, int]:
    """The exact equal-mass edges (:func:`~tokcal.distributed.stats.stream_mass_edges`), each pass of
    counts a Ray task per shard (the counts travel, never the confidences)."""
    def count(empty: PassCounts) -> PassCounts:
        layout = (empty.lo, empty.hi, empty.shift, empty.digits)
        for part in shards.run(_mass_counts, layout, calibrator, batch_rows):
            empty = empty.merge(part)
        return empty

    return mass_edges_by(count, bins)


def evaluate(source: Any, calibrator: Any = None, *, slices: Any = None, bins: int = 15, binning: str = "width",
             bootstrap: int = 200, seed: int = 0, worst: int = 20, classwise_top: int = 100, unit: str = "auto",
             block_length: int | None = None, freq_ref: Any = None, batch_rows: int = 65536,
             meta: Any = None) -> Any:
    """:func:`tokcal.evaluate` of a Parquet file, a dataset directory (one Ray task per part file and pass)
    or a ``ray.data.Dataset`` of TokenTable rows (materialized once, one task per block and pass); what
    is exact: :mod:`tokcal.distributed.stats` (``binning="mass"``: the exact edges first, by passes of
    counts). ``meta``: for a Dataset whose schema lost the tokcal metadata (``from_pandas``), a
    TokenTable, Parquet file or dataset directory that has it. Returns an :class:`~tokcal.evaluation.Evaluation`."""
    from ..bootstrap import block_length_of, replicate_weights
    from ..validation import EvaluateParams, check_params

    a = check_params("evaluate", EvaluateParams, bins=bins, binning=binning, bootstrap=bootstrap, seed=seed,
                     worst=worst, classwise_top=classwise_top, unit=unit, block_length=block_length)
    bins, bootstrap, seed, unit, block_length = a.bins, a.bootstrap, a.seed, a.unit, a.block_length
    shards = _Shards(source, meta)
    head = shards.head
    b = block_length_of(head.source) if block_length is None else int(block_length)
    merged = OrderedMerge()
    carries, tail = [], (np.zeros(0, np.int64), np.zeros(0, np.int32))
    for s, last in shards.run(_summary, head.vocab_size, b):
        carries.append(tail if tail[0].size else None)
        merged.add(s)
        tail = _last_rows(tail, last)
    summary = merged.result(DatasetSummary(head.vocab_size, b))
    edges, passes = _mass_edges(shards, calibrator, bins, batch_rows) if a.binning == "mass" else (None, 0)
    kwargs = {"calibrator": calibrator, "slices": slices, "bins": bins, "bootstrap": bootstrap, "seed": seed,
              "worst": a.worst, "classwise_top": a.classwise_top, "unit": unit, "freq_ref": freq_ref, "edges": edges}
    n_units = summary.units(unit).info.n_units
    weights = replicate_weights(n_units, bootstrap, seed) if bootstrap and n_units >= 2 else None
    total = None
    for part in shards.run(_sums, summary, head, kwargs, ray.put(weights), batch_rows, per_shard=carries):
        total = part if total is None else total.merge(part)
    total.edge_passes = passes
    total.fingerprint = shards.fingerprint()
    return total.result()


def _picked(item: Any, raw: dict[bytes, bytes] | None, where: str, batch_rows: int, rows: Any,
            select: Any) -> Iterator[TokenTable]:
    """The batches of a shard as :class:`~tokcal.distributed.fit.Batches` yields them (rows kept by
    ``rows`` then ``select``; batches left without rows skipped)."""
    for t in _tables(item, raw, where, batch_rows):
        part = pick_rows(t, rows, select)
        if part is not None and len(part):
            yield part


@ray.remote(num_cpus=1)
def _map_shard(item: Any, raw: dict[bytes, bytes] | None, where: str, fn: Callable[..., Any], batch_rows: int,
               rows: Any, select: Any, args: list[Any] | None = None) -> list[Any]:
    batches = _picked(item, raw, where, batch_rows, rows, select)
    return [fn(t) for t in batches] if args is None else [fn(t, a) for t, a in zip(batches, args, strict=True)]


class RayBatches(Batches):
    """:class:`~tokcal.distributed.fit.Batches` whose passes run as one Ray task per shard (part file or
    Dataset block, :class:`_Shards`); outputs in storage order."""

    def __init__(self, shards: _Shards, batch_rows: int = 65536, rows: Callable[[TokenTable], np.ndarray] | None = None,
                 *, select: Callable[[TokenTable], TokenTable | None] | None = None) -> None:
        super().__init__(shards.source, batch_rows, rows, select=select)
        self.shards = shards
        self._per_shard: list[int] | None = None  # batches of each shard (known after a first pass)

    def __iter__(self) -> Iterator[TokenTable]:
        for i, item in enumerate(self.shards.items):
            data = item if self.shards.raw is None else ray.get(item)
            yield from _picked(data, self.shards.raw, self.shards.where(i), self.batch_rows, self.rows, self.select)

    def first(self) -> TokenTable:
        return self.shards.head

    def map(self, fn: Callable[[TokenTable], Any]) -> list[Any]:
        out: list[Any] = []
        parts = list(self.shards.run(_map_shard, ray.put(fn), self.batch_rows, self.rows, self.select))
        self._per_shard = [len(p) for p in parts]
        for part in parts:
            out += part
        return out

    def map_with(self, fn: Callable[[TokenTable, Any], Any], args: list[Any]) -> list[Any]:
        if self._per_shard is None:
            self.map(lambda t: None)
        ends = np.cumsum(self._per_shard)
        per = [args[e - n:e] for e, n in zip(ends, self._per_shard, strict=True)]
        out: list[Any] = []
        for part in self.shards.run(_map_shard, ray.put(fn), self.batch_rows, self.rows, self.select, per_shard=per):
            out += part
        return out


def fit(source: Any, calibrator: Any, *, batch_rows: int = 65536, meta: Any = None,
        freq_reference: Any = None) -> Any:
    """Fit ``calibrator`` (:class:`~tokcal.calibrators.Temperature` or
    :class:`~tokcal.calibrators.GroupTemperature`) on a Parquet file, a dataset directory or a
    ``ray.data.Dataset`` of TokenTable rows (``meta`` as in :func:`evaluate`) by Ray passes; equal to its
    in-memory ``fit`` (the same Newton iterates and warm-start sample: T to ~1e-12). ``freq_reference``:
    as in :func:`~tokcal.distributed.fit.fit_stream` (``GroupTemperature(by="freq")``)."""
    return fit_stream(calibrator, RayBatches(_Shards(source, meta), batch_rows=batch_rows),
                      freq_reference=freq_reference)


def summary(source: str | Path) -> DatasetSummary:
    """Pass 1 of :func:`evaluate`, locally (for inspection)."""
    return summarize(source)[0]
