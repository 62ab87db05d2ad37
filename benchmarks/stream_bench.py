"""Out-of-core evaluate: tokens/s of the streamed ``tokcal evaluate`` (bootstrap and default slices) on a
dataset directory, as a ratio to a bare pyarrow scan of the columns it reads -- of the same data written in
the previous table format (schema 2: zstd level 1, vector columns as lists, dictionaries everywhere: the
files the target was set on) and in today's (packed vectors, LZ4), each also verifying the page checksums as
tokcal's reader does; and the peak RSS of the streamed and the in-memory path. Timings alternate (scans,
evaluate, scans, ...) ``--repeat`` times and the fastest of each is kept, so a shared machine's load shifts
all alike. ``--formats``: the same for copies of the dataset in other layouts and compressions (the table
format question).

    python benchmarks/stream_bench.py [--tokens 2000000] [--top-k 32] [--repeat 3] [--formats] [--split] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokcal.distributed.stats import evaluate_stream
from tokcal.synthetic import make_table
from tokcal.table import TokenTable

COLUMNS = ["sequence_id", "position", "label", "top_ids", "top_logits", "label_logit", "log_normalizer",
           "tail_logz", "tail_mean"]
PEAK = textwrap.dedent("""
    import sys
    from tokcal.cli import app
    try:
        app(sys.argv[1:], standalone_mode=False)
    finally:
        print("PEAK_KB", [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1], file=sys.stderr)
""")


def scan(d: Path, batch: int, verify: bool = False) -> float:
    t0 = time.perf_counter()
    for f in sorted(d.glob("*.parquet")):
        for b in pq.ParquetFile(f, page_checksum_verification=verify).iter_batches(batch_size=batch, columns=COLUMNS):
            ids = b.column(3)  # as numpy, as a reader would: a list's values, or a packed column's buffer
            ids.values.to_numpy(zero_copy_only=False) if pa.types.is_fixed_size_list(ids.type) else \
                np.frombuffer(ids.buffers()[1], np.int32)
    return time.perf_counter() - t0


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(d: Path, repeat: int, reference: Path | None = None) -> dict[str, float]:
    """Fastest of ``repeat`` alternating runs: bare scan, scan verifying page checksums, streamed evaluate
    (and the two scans of ``reference``, the same data in another format: ``ref_scan``, ``ref_scan_crc``)."""
    runs: dict[str, list[float]] = {}
    scans = [("", d)] + ([("ref_", reference)] if reference is not None else [])
    for _, where in scans:
        scan(where, 65536)  # the files in the page cache, for every run alike
    for _ in range(repeat):
        for prefix, where in scans:
            runs.setdefault(prefix + "scan", []).append(scan(where, 65536))
            runs.setdefault(prefix + "scan_crc", []).append(scan(where, 65536, verify=True))
        runs.setdefault("evaluate", []).append(timed(lambda: evaluate_stream(d, bootstrap=200)))
    return {k: min(v) for k, v in runs.items()}


def split(d: Path, repeat: int) -> None:
    """Where the time of the streamed evaluate goes: each step alone (fastest of ``repeat``), wall and CPU
    seconds of this process (all threads)."""
    import hashlib

    from tokcal._threads import numba_threads
    from tokcal.distributed.stats import EvaluationSums
    from tokcal.distributed.summary import summarize
    from tokcal.table import TokenTable

    def best(fn: Any) -> tuple[float, float]:
        out = []
        for _ in range(repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0, time.process_time() - c0))
        return min(out)

    summary, first = summarize(d)
    tables = list(TokenTable.iter_parquet(d, batch_rows=65536))

    def compute() -> EvaluationSums:
        acc = EvaluationSums(summary, first, bootstrap=200)
        with numba_threads(1):
            for t in tables:
                acc.update(t)
        return acc

    acc = compute()
    steps = (("bare scan", lambda: scan(d, 65536)), ("scan verifying checksums", lambda: scan(d, 65536, True)),
             ("pass 1 (summary and fingerprint)", lambda: summarize(d, hasher=hashlib.sha256())),
             ("reading TokenTables", lambda: sum(len(t) for t in TokenTable.iter_parquet(d, batch_rows=65536))),
             ("computing on tables already read", compute), ("the result", acc.result),
             ("streamed evaluate (all of it)", lambda: evaluate_stream(d, bootstrap=200)))
    print("split (each step alone, fastest of the runs): wall s, CPU s")
    for name, fn in steps:
        wall, cpu = best(fn)
        print(f"  {name:34s} {wall:6.3f}  {cpu:6.3f}")


def rewrite(src: Path, dst: Path, packed: bool, **options: Any) -> Path:
    """The parts of ``src`` written again with vector columns ``packed`` or as lists and other Parquet
    ``options`` (metadata and checksums kept; ``use_dictionary`` None: tokcal's choice of columns)."""
    from tokcal.table import dictionary_columns

    dst.mkdir()
    for f in sorted(src.glob("*.parquet")):
        t = TokenTable.read_parquet(f).to_arrow(packed=packed)
        if options.get("use_dictionary", ()) is None:
            options = {**options, "use_dictionary": dictionary_columns(t.schema)}
        pq.write_table(t, dst / f.name, write_page_checksum=True, **options)
    return dst


#: the table format the target was set on: tokcal's files up to table schema 2
SCHEMA_2 = {"packed": False, "compression": "zstd", "compression_level": 1}


def peak(args: list[str], script: Path) -> int:
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return int(r.stderr.split("PEAK_KB")[-1].split()[0]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--part-rows", type=int, default=131072)
    ap.add_argument("--repeat", type=int, default=3, help="alternating timing runs (the fastest is kept)")
    ap.add_argument("--formats", action="store_true", help="also copies in other layouts and compressions")
    ap.add_argument("--split", action="store_true", help="also each step of the evaluation alone (CPU and wall)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    a = ap.parse_args()
    n = 60_000 if a.quick else a.tokens
    tmp = Path(tempfile.mkdtemp())
    d = tmp / "ds"
    d.mkdir()
    rows = min(a.part_rows, n)
    chunk = 20_000  # make_table draws full logits: chunk x vocab floats
    for i, s in enumerate(range(0, n, chunk)):  # built in chunks: the generator holds one chunk only
        t = make_table(min(chunk, n - s), a.vocab, domains={"a": 0.8, "b": 1.3}, seq_len=200, top_k=a.top_k, seed=i)
        t = t.select(np.arange(len(t)))
        t.sequence_id = t.sequence_id + s
        t.source = {**t.source, "seed": "the chunk's index"}  # one source for all parts, as in a collected dataset
        for j, r in enumerate(range(0, len(t), rows)):
            t.select(np.arange(r, min(len(t), r + rows))).write_parquet(d / f"part-{i:04d}-{j:03d}.parquet")
    size = sum(f.stat().st_size for f in d.glob("*.parquet"))
    ev = evaluate_stream(d, bootstrap=200)  # compiles the kernels; and the ECE to print
    old = rewrite(d, tmp / "schema2", **SCHEMA_2)
    m = measure(d, 1 if a.quick else a.repeat, reference=old)
    old_size = sum(f.stat().st_size for f in old.glob("*.parquet"))
    print(f"tokens {n:,}, top-k {a.top_k}, vocab {a.vocab}, parquet {size / n:.0f} B/token (packed vectors, LZ4: "
          f"tokcal's format), {old_size / n:.0f} B/token in the schema-2 format (zstd-1 lists)")
    print(f"bare pyarrow scan ({len(COLUMNS)} columns), schema-2 files: {n / m['ref_scan']:12,.0f} rows/s "
          f"(verifying page checksums {n / m['ref_scan_crc']:,.0f})")
    print(f"bare pyarrow scan ({len(COLUMNS)} columns), tokcal's files:  {n / m['scan']:12,.0f} rows/s "
          f"(verifying page checksums {n / m['scan_crc']:,.0f})")
    print(f"streamed evaluate (bootstrap 200, default slices): {n / m['evaluate']:12,.0f} tokens/s   "
          f"ratio to the bare scan of schema-2 files {m['evaluate'] / m['ref_scan']:.2f}x (verifying "
          f"{m['evaluate'] / m['ref_scan_crc']:.2f}x), to the bare scan of its own files "
          f"{m['evaluate'] / m['scan']:.2f}x   (ece {ev.overall['ece']:.4f})")
    if a.split:
        split(d, 1 if a.quick else a.repeat)
    if a.formats:
        base = m["ref_scan"]
        print("format (scan and evaluate as ratios to the bare scan of schema-2 files): B/token, scan, evaluate")
        formats = (("schema 2: zstd-1 lists", SCHEMA_2),
                   ("lists, LZ4", {"packed": False, "compression": "lz4", "use_dictionary": None}),
                   ("packed, LZ4 (default)", {"packed": True, "compression": "lz4", "use_dictionary": None}),
                   ("packed, zstd-1", {"packed": True, "compression": "zstd", "compression_level": 1,
                                       "use_dictionary": None}),
                   ("packed, uncompressed", {"packed": True, "compression": "none", "use_dictionary": None}))
        for i, (name, options) in enumerate(formats):
            other = rewrite(d, tmp / f"format{i}", **options)
            mm = measure(other, 1 if a.quick else a.repeat)
            b = sum(f.stat().st_size for f in other.glob("*.parquet")) / n
            print(f"  {name:24s} {b:5.0f}   scan {mm['scan'] / base:.2f}x   evaluate {mm['evaluate'] / base:.2f}x   "
                  f"(evaluate / its own scan {mm['evaluate'] / mm['scan']:.2f}x)")
    if not a.quick:
        script = tmp / "peak.py"
        script.write_text(PEAK)
        for mode in ("--stream", "--in-memory"):
            mib = peak(["evaluate", str(d), mode, "--bootstrap", "200", "--json", str(tmp / "e.json")], script)
            print(f"peak RSS evaluate {mode}: {mib} MiB")


if __name__ == "__main__":
    main()
