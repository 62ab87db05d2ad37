"""Ray (extra ``ray``): collection as a Ray Data pipeline, and evaluate / temperature fits of a dataset
directory through mergeable sums. Logits stay on the actor that computed them; tables are written by
the actor into the shared dataset directory; evaluation and fitting move only sums.

``from tokcal.distributed import ray as tokcal_ray``. The functions use the Ray cluster this process
is connected to: ``ray.init()`` starts a local one; ``ray.init(address="auto")`` joins the cluster of
this machine (``ray start --head``), ``ray.init(address="ray://HEAD:10001")`` or ``RAY_ADDRESS`` a
remote one. The dataset directory must be on storage every worker reads and writes (a shared file
system) -- the code is the same on one laptop and on a cluster.

* :func:`collect` -- ``ray.data.from_items`` of the document indices, ``map_batches`` with an actor pool
  (one model per actor, ``num_gpus`` per actor when the cluster has GPUs); each call of an actor writes
  one part of the dataset as its own writer (:mod:`tokcal.sources.dataset`), and the driver merges the
  manifest at the end. A rerun skips the documents already listed. CPU accounting: the pool takes at
  most ``CPUs - 1`` CPUs (at least one is left for Ray Data's read and split tasks; a pool as large as
  the CPU count starves them and hangs).
* :func:`evaluate` -- pass 1 (:class:`~tokcal.distributed.stats.DatasetSummary`) and pass 2
  (:class:`~tokcal.distributed.stats.EvaluationSums`) as one Ray task per part file, merged in file
  order: the result equals :func:`tokcal.evaluate` of the whole table (see :mod:`tokcal.distributed.stats`).
* :func:`fit` -- :class:`~tokcal.calibrators.Temperature` or :class:`~tokcal.calibrators.GroupTemperature`
  by Newton passes, each a Ray task per part file (:mod:`tokcal.distributed.fit`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ..errors import TokcalError
from ..table import TokenTable, parquet_files
from .fit import Batches, fit_stream
from .stats import DatasetSummary, EvaluationSums, fingerprint, summarize

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
           sequence_ids=idx, **self.options)
        return {"index": np.asarray(idx, np.int64)}


def collect(model_dir: str | Path, items: Sequence[Any], out_dir: str | Path, *, task: str = "causal",
            docs_per_part: int = 64, actors: int | None = None, gpus_per_actor: float | None = None,
            **options: Any) -> Path:
    """Collect ``items`` (what the ``task``'s collector of :mod:`tokcal.sources.hf` takes: texts or
    :class:`~tokcal.sources.readers.Document`, pairs, tagged sentences; their index is the sequence id)
    with the model in the local folder ``model_dir`` into the dataset directory ``out_dir``.

    ``docs_per_part``: documents per ``map_batches`` call (one part each). ``actors``: pool size
    (default: the cluster's GPUs, else its CPUs - 1, at least 1). ``gpus_per_actor``: default 1 when the
    cluster has GPUs, else 0. ``options``: the collector's settings (``top_k``, ``max_length``,
    ``stride``, ``batch_size``, ...). Returns ``out_dir``; equal row for row to a single-process
    collection of ``items`` (after sorting by sequence and position).
    """
    from ..sources.dataset import merge_manifest, read_manifest

    if task not in _TASKS:
        raise TokcalError(f"task must be one of {_TASKS}, got {task!r}")
    if docs_per_part < 1:
        raise TokcalError(f"docs_per_part must be >= 1, got {docs_per_part}")
    items = list(items)
    m = read_manifest(out_dir) if Path(out_dir).exists() else None
    done = {d["id"] for p in m["parts"] for d in p["documents"]} if m else set()
    ids = [getattr(x, "id", None) or f"#{i}" for i, x in enumerate(items)]
    todo = [i for i, d in enumerate(ids) if d not in done]  # a changed document is refused by its writer
    if todo:
        res = ray.cluster_resources()
        gpus = float(res.get("GPU", 0))
        per = (1.0 if gpus else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
        n = actors or max(1, int(gpus // per) if per else int(res.get("CPU", 2)) - 1)
        kw = {k: v for k, v in options.items() if k != "device"}
        ds = ray.data.from_items([{"index": i} for i in todo])
        out = ds.map_batches(
            _Collector, batch_size=docs_per_part, concurrency=n, num_gpus=per, num_cpus=1, batch_format="numpy",
            fn_constructor_kwargs={"model_dir": str(model_dir), "task": task, "items": ray.put(items),
                                   "out_dir": str(out_dir), "options": kw, "device": "cuda" if per else "cpu"})
        finished = sum(len(b["index"]) for b in out.iter_batches(batch_format="numpy"))
        assert finished == len(todo), (finished, len(todo))
    merge_manifest(out_dir)
    return Path(out_dir)


# -- evaluation and fitting ---------------------------------------------------------------------------


@ray.remote(num_cpus=1)
def _summary(file: str, vocab_size: int, block_length: int) -> DatasetSummary:
    total = DatasetSummary(vocab_size, block_length)
    for t in TokenTable.iter_parquet(file, batch_rows=1 << 20):
        total = total.merge(DatasetSummary.of_table(t, block_length))
    return total


@ray.remote(num_cpus=1)
def _sums(file: str, summary: DatasetSummary, meta: TokenTable, kwargs: dict[str, Any], weights: np.ndarray,
          batch_rows: int) -> EvaluationSums:
    acc = EvaluationSums(summary, meta, weights=weights, **kwargs)
    for t in TokenTable.iter_parquet(file, batch_rows=batch_rows):
        acc.update(t)
    acc.weights = None  # the driver has them; send back only the sums
    return acc


def evaluate(source: str | Path, calibrator: Any = None, *, slices: Any = None, bins: int = 15, bootstrap: int = 200,
             seed: int = 0, worst: int = 20, classwise_top: int = 100, unit: str = "auto",
             block_length: int | None = None, freq_ref: Any = None, batch_rows: int = 65536) -> Any:
    """:func:`tokcal.evaluate` of a Parquet file or dataset directory, one Ray task per part file (width
    bins; what is exact: :mod:`tokcal.distributed.stats`). Returns an :class:`~tokcal.evaluation.Evaluation`."""
    from ..bootstrap import block_length_of, replicate_weights

    files = [str(f) for f in parquet_files(source)]
    meta = next(TokenTable.iter_parquet(source, batch_rows=1))
    b = block_length_of(meta.source) if block_length is None else int(block_length)
    summary = DatasetSummary(meta.vocab_size, b)
    for s in ray.get([_summary.remote(f, meta.vocab_size, b) for f in files]):
        summary = summary.merge(s)
    kwargs = {"calibrator": calibrator, "slices": slices, "bins": bins, "bootstrap": bootstrap, "seed": seed,
              "worst": worst, "classwise_top": classwise_top, "unit": unit, "freq_ref": freq_ref}
    n_units = summary.units(unit).info.n_units
    weights = replicate_weights(n_units, bootstrap, seed) if bootstrap and n_units >= 2 else None
    wref = ray.put(weights)
    parts = ray.get([_sums.remote(f, summary, meta, kwargs, wref, batch_rows) for f in files])
    total = parts[0]
    for p in parts[1:]:
        total.merge(p)
    total.fingerprint = fingerprint(source)
    return total.result()


@ray.remote(num_cpus=1)
def _map_file(file: str, fn: Callable[[TokenTable], Any], batch_rows: int,
              rows: Callable[[TokenTable], np.ndarray] | None) -> list[Any]:
    return [fn(t if rows is None else t.select(rows(t))) for t in TokenTable.iter_parquet(file, batch_rows=batch_rows)]


class RayBatches(Batches):
    """:class:`~tokcal.distributed.fit.Batches` whose passes run as one Ray task per part file."""

    def map(self, fn: Callable[[TokenTable], Any]) -> list[Any]:
        files = [str(f) for f in parquet_files(self.source)]
        fref = ray.put(fn)
        out: list[Any] = []
        for part in ray.get([_map_file.remote(f, fref, self.batch_rows, self.rows) for f in files]):
            out += part
        return out


def fit(source: str | Path, calibrator: Any, *, batch_rows: int = 65536) -> Any:
    """Fit ``calibrator`` (:class:`~tokcal.calibrators.Temperature` or
    :class:`~tokcal.calibrators.GroupTemperature`) on a Parquet file or dataset directory by Ray passes;
    equal to its in-memory ``fit`` (T to ~1e-12)."""
    return fit_stream(calibrator, RayBatches(source, batch_rows=batch_rows))


def summary(source: str | Path) -> DatasetSummary:
    """Pass 1 of :func:`evaluate`, locally (for inspection)."""
    return summarize(source)[0]
