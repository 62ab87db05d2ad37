"""Out-of-core evaluate: tokens/s of the streamed ``tokcal evaluate`` (bootstrap and default slices) on a
dataset directory, as a ratio to a bare pyarrow scan of the columns it reads; and the peak RSS of the
streamed and the in-memory path at 1x and 4x the data.

    python benchmarks/stream_bench.py [--tokens 2000000] [--top-k 32] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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


def scan(d: Path, batch: int) -> float:
    t0 = time.perf_counter()
    for f in sorted(d.glob("*.parquet")):
        for b in pq.ParquetFile(f).iter_batches(batch_size=batch, columns=COLUMNS):
            b.column(3).values.to_numpy(zero_copy_only=False)  # decode, as a reader would
    return time.perf_counter() - t0


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
        for j, r in enumerate(range(0, len(t), rows)):
            t.select(np.arange(r, min(len(t), r + rows))).write_parquet(d / f"part-{i:04d}-{j:03d}.parquet")
    size = sum(f.stat().st_size for f in d.glob("*.parquet"))
    s_scan = min(scan(d, 65536) for _ in range(2))
    t0 = time.perf_counter()
    ev = evaluate_stream(d, bootstrap=200)
    s_eval = time.perf_counter() - t0
    print(f"tokens {n:,}, parquet {size / n:.0f} B/token, top-k {a.top_k}, vocab {a.vocab}")
    print(f"bare pyarrow scan ({len(COLUMNS)} columns):  {n / s_scan:12,.0f} rows/s")
    print(f"streamed evaluate (bootstrap 200, default slices): {n / s_eval:12,.0f} tokens/s   "
          f"ratio to the scan {s_eval / s_scan:.2f}x   (ece {ev.overall['ece']:.4f})")
    if not a.quick:
        script = tmp / "peak.py"
        script.write_text(PEAK)
        for mode in ("--stream", "--in-memory"):
            mib = peak(["evaluate", str(d), mode, "--bootstrap", "200", "--json", str(tmp / "e.json")], script)
            print(f"peak RSS evaluate {mode}: {mib} MiB")


if __name__ == "__main__":
    main()
