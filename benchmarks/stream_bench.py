"""Out-of-core evaluate: tokens/s of the streamed ``tokcal evaluate`` (bootstrap and default slices) on a
dataset directory, as a ratio to a bare pyarrow scan of the columns it reads (and to the same scan verifying
the page checksums, as tokcal's reader does); and the peak RSS of the streamed and the in-memory path.
Timings alternate (scan, evaluate, scan, ...) ``--repeat`` times and the fastest of each is kept, so a
shared machine's load shifts both alike. ``--formats``: the same for copies of the dataset written with
other Parquet compressions (the table format question).

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
import pyarrow.parquet as pq

from tokcal.distributed.stats import evaluate_stream
from tokcal.synthetic import make_table

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
            b.column(3).values.to_numpy(zero_copy_only=False)  # decode, as a reader would
    return time.perf_counter() - t0


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(d: Path, repeat: int) -> dict[str, float]:
    """Fastest of ``repeat`` alternating runs: bare scan, scan verifying page checksums, streamed evaluate."""
    runs: dict[str, list[float]] = {"scan": [], "scan_crc": [], "evaluate": []}
    scan(d, 65536)  # the files in the page cache, for every run alike
    for _ in range(repeat):
        runs["scan"].append(scan(d, 65536))
        runs["scan_crc"].append(scan(d, 65536, verify=True))
        runs["evaluate"].append(timed(lambda: evaluate_stream(d, bootstrap=200)))
    return {k: min(v) for k, v in runs.items()}


def split(d: Path, repeat: int) -> None:
    """Where the time of the streamed evaluate goes: each step alone (fastest of ``repeat``), wall and CPU
    seconds of this process (all threads)."""
    import hashlib

    from tokcal._threads import numba_threads
    from tokcal.distributed.stats import EvaluationSums, summarize
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


def rewrite(src: Path, dst: Path, **options: Any) -> Path:
    """The parts of ``src`` written again with other Parquet ``options`` (metadata and checksums kept)."""
    dst.mkdir()
    for f in sorted(src.glob("*.parquet")):
        pq.write_table(pq.read_table(f), dst / f.name, write_page_checksum=True, **options)
    return dst


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
    ap.add_argument("--formats", action="store_true", help="also zstd level 3, lz4 and uncompressed copies")
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
    m = measure(d, 1 if a.quick else a.repeat)
    print(f"tokens {n:,}, parquet {size / n:.0f} B/token (zstd, tokcal's default), top-k {a.top_k}, vocab {a.vocab}")
    print(f"bare pyarrow scan ({len(COLUMNS)} columns):              {n / m['scan']:12,.0f} rows/s")
    print(f"pyarrow scan verifying page checksums:         {n / m['scan_crc']:12,.0f} rows/s")
    print(f"streamed evaluate (bootstrap 200, default slices): {n / m['evaluate']:12,.0f} tokens/s   "
          f"ratio to the bare scan {m['evaluate'] / m['scan']:.2f}x, to the verifying scan "
          f"{m['evaluate'] / m['scan_crc']:.2f}x   (ece {ev.overall['ece']:.4f})")
    if a.split:
        split(d, 1 if a.quick else a.repeat)
    if a.formats:
        base = m["scan"]
        print("format (scan and evaluate as ratios to the zstd-1 bare scan above): B/token, scan, evaluate")
        formats = (("zstd level 1 (default)", {"compression": "zstd", "compression_level": 1}),
                   ("zstd level 3", {"compression": "zstd", "compression_level": 3}),
                   ("lz4", {"compression": "lz4"}), ("uncompressed", {"compression": "none"}))
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
