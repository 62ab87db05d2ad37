"""Time ``tokcal.evaluate`` with 6 slices and 200 cluster-bootstrap resamples on 1 M tokens.

The table: a 100k-token synthetic table (two domains, vocab 1000, sequences of 50) repeated 10x
with fresh sequence ids (20k sequences). Run: ``.venv/bin/python benchmarks/evaluate_bench.py [N] [--quick]``
(``--quick``: 100k tokens unless N is given).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tokcal
from tokcal.synthetic import make_table


def main(n_tokens: int = 1_000_000) -> None:
    base = make_table(100_000, 1000, domains={"news": 0.8, "code": 1.3}, seq_len=50, seed=0)
    reps = max(1, n_tokens // len(base))
    parts = []
    for r in range(reps):
        t = base.select(np.arange(len(base)))
        t.sequence_id = t.sequence_id + r * (int(base.sequence_id.max()) + 1)
        parts.append(t)
    table = tokcal.TokenTable.concat(parts)
    slices = ["freq", "freq:predicted", "type", "type:predicted", "position", "group:domain"]
    tokcal.evaluate(table.select(np.arange(5000)), slices=slices, bootstrap=10)  # warm the numba caches
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        tokcal.evaluate(table, slices=slices, bootstrap=200, seed=0)
        best.append(time.perf_counter() - t0)
    print(f"evaluate: {len(table)} tokens, {table.n_sequences} sequences, 6 slices, 200 resamples: "
          f"best {min(best):.2f} s (runs {', '.join(f'{b:.2f}' for b in best)})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n_tokens", nargs="?", type=int, default=None, help="tokens to evaluate (default 1 M)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 100k tokens unless N is given")
    args = ap.parse_args()
    main(args.n_tokens or (100_000 if args.quick else 1_000_000))
