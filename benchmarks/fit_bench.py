"""Temperature fitting: tokcal (one sketching pass + Newton) vs the peers, each in its own process.

Data: N x V float32 LM-like logits (``tokcal.synthetic.make_logits``), labels drawn from
softmax(0.7 z), so the ML temperature is near 1/0.7. Runners, each a subprocess (own peak RSS):

* ``tokcal``       — ``Temperature().fit_logits(logits, labels)``: sketch (top-32 + tail) then Newton.
* ``torch-lbfgs``  — the widely copied recipe (gpleiss/temperature_scaling): T starts at 1.5,
                     ``optim.LBFGS([T], lr=0.01, max_iter=50)`` on ``CrossEntropyLoss(logits / T)``.
* ``probmetrics``  — ``TemperatureScalingCalibrator().fit_torch(CategoricalLogits(logits), labels)``
                     (bisection on the gradient), when the package is installed.
* ``exact``        — reference: Newton on the exact NLL over the full logits (float64, chunked); also
                     the exact NLL at every runner's T.

Then the stored-table case: the tokcal sketch tiled to ``--table-rows`` rows, written as Parquet,
read back and fitted (timed separately). Times are wall clock of the fit (loading the .npy excluded,
but included in peak RSS: the logits alone are N*V*4 bytes).

    .venv/bin/python benchmarks/fit_bench.py --quick          # 2k x 32k, 100k-row table
    .venv/bin/python benchmarks/fit_bench.py                  # 20k x 32k, 1M-row table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BETA_STAR = 0.7


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def load(data: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(data / "logits.npy"), np.load(data / "labels.npy")


def work_generate(data: Path, rows: int, vocab: int) -> dict:
    from tokcal import synthetic

    z = synthetic.make_logits(rows, vocab, seed=0)
    y = synthetic.sample_labels(z, BETA_STAR, seed=1)
    np.save(data / "logits.npy", z)
    np.save(data / "labels.npy", y)
    return {}


def work_tokcal(data: Path, table_rows: int) -> dict:
    from tokcal import TokenTable
    from tokcal.calibrators import Temperature

    z, y = load(data)
    t0 = time.perf_counter()
    cal = Temperature().fit_logits(z, y)
    elapsed = time.perf_counter() - t0
    # the sketch of the same logits, kept for the stored-table case
    small = TokenTable.from_logits(z, y, sequence_ids=np.arange(len(y)) // 100)
    reps = -(-table_rows // len(small))
    big = TokenTable.concat([small] * reps).select(np.arange(table_rows))
    big.sequence_id[:] = np.arange(table_rows) // 100
    big.write_parquet(data / "table.parquet")
    return {"time_s": elapsed, "T": cal.temperature, "iterations": cal.fit_info["iterations"]}


def work_table(data: Path) -> dict:
    from tokcal import TokenTable
    from tokcal.calibrators import Temperature

    t0 = time.perf_counter()
    table = TokenTable.read_parquet(data / "table.parquet")
    t1 = time.perf_counter()
    cal = Temperature().fit(table)
    t2 = time.perf_counter()
    return {"rows": len(table), "read_s": t1 - t0, "time_s": t2 - t1, "T": cal.temperature}


def work_torch_lbfgs(data: Path) -> dict:
    import torch
    from torch import nn, optim

    z, y = load(data)
    logits, labels = torch.from_numpy(z), torch.from_numpy(y.astype(np.int64))
    t0 = time.perf_counter()
    temperature = nn.Parameter(torch.ones(1) * 1.5)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.LBFGS([temperature], lr=0.01, max_iter=50)

    def closure():
        optimizer.zero_grad()
        loss = criterion(logits / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return {"time_s": time.perf_counter() - t0, "T": float(temperature.item())}


def work_probmetrics(data: Path) -> dict:
    import torch
    from probmetrics.calibrators import TemperatureScalingCalibrator
    from probmetrics.distributions import CategoricalLogits

    z, y = load(data)
    logits, labels = torch.from_numpy(z), torch.from_numpy(y.astype(np.int64))
    t0 = time.perf_counter()
    cal = TemperatureScalingCalibrator().fit_torch(CategoricalLogits(logits), labels)
    return {"time_s": time.perf_counter() - t0, "T": 1.0 / float(cal.invtemp_)}


def exact_sums(z: np.ndarray, y: np.ndarray, beta: float, chunk: int = 1024) -> np.ndarray:
    """Exact mean [NLL, dNLL/dbeta, d2NLL/dbeta2] on full logits (float64, chunked)."""
    out = np.zeros(3)
    for s in range(0, len(y), chunk):
        zz = z[s:s + chunk].astype(np.float64)
        a = beta * zz
        m = a.max(axis=1, keepdims=True)
        e = np.exp(a - m)
        zsum = e.sum(axis=1)
        p = e / zsum[:, None]
        mean = (p * zz).sum(axis=1)
        var = (p * zz * zz).sum(axis=1) - mean**2
        zy = zz[np.arange(len(zz)), y[s:s + chunk]]
        out += ((m[:, 0] + np.log(zsum) - beta * zy).sum(), (mean - zy).sum(), var.sum())
    return out / len(y)


def work_exact(data: Path, temps: list[float]) -> dict:
    z, y = load(data)
    beta = 1.0 / temps[0]
    for _ in range(30):
        _, g, h = exact_sums(z, y, beta)
        step = -g / h
        beta += step
        if abs(step) < 1e-10 * beta:
            break
    return {"T_opt": 1.0 / beta, "nll_opt": exact_sums(z, y, beta)[0],
            "nll": [exact_sums(z, y, 1.0 / t)[0] if np.isfinite(t) and t > 0 else float("nan") for t in temps]}


def spawn(name: str, data: Path, *extra: str, timeout: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data", str(data), *extra]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2k x 32k logits, 100k-row table")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--table-rows", type=int, default=None)
    ap.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds before a peer is stopped")
    ap.add_argument("--skip", default="", help="comma-separated runners to skip (torch-lbfgs, probmetrics)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--temps", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = args.rows or (2000 if args.quick else 20000)
    table_rows = args.table_rows or (100_000 if args.quick else 1_000_000)

    if args.worker:
        data = Path(args.data)
        jobs = {
            "generate": lambda: work_generate(data, rows, args.vocab),
            "tokcal": lambda: work_tokcal(data, table_rows),
            "table": lambda: work_table(data),
            "torch-lbfgs": lambda: work_torch_lbfgs(data),
            "probmetrics": lambda: work_probmetrics(data),
            "exact": lambda: work_exact(data, [float(t) for t in args.temps.split(",")]),
        }
        out = jobs[args.worker]()
        out["peak_rss_gb"] = peak_rss_gb()
        print(json.dumps(out))
        return

    skip = {s for s in args.skip.split(",") if s}
    with tempfile.TemporaryDirectory(prefix="tokcal-fit-bench-") as tmp:
        data = Path(tmp)
        print(f"fit_bench: {rows} tokens x {args.vocab} vocab float32 ({rows * args.vocab * 4 / 1e9:.2f} GB of "
              f"logits), labels ~ softmax({BETA_STAR} z); cores: {os.cpu_count()}", flush=True)
        gen = spawn("generate", data, "--rows", str(rows), "--vocab", str(args.vocab))
        if "error" in gen:
            sys.exit(f"generate failed: {gen['error']}")
        results = {"tokcal": spawn("tokcal", data, "--rows", str(rows), "--table-rows", str(table_rows))}
        for peer in ("torch-lbfgs", "probmetrics"):
            results[peer] = {"error": "skipped (--skip)"} if peer in skip else \
                spawn(peer, data, timeout=args.peer_timeout)
        named = [k for k, v in results.items() if "T" in v]
        ex = spawn("exact", data, "--temps", ",".join(str(results[k]["T"]) for k in named))
        if "error" in ex:
            sys.exit(f"exact reference failed: {ex['error']}")
        print(f"\nexact ML temperature (Newton on full logits): T* = {ex['T_opt']:.6f}, NLL {ex['nll_opt']:.6f}\n")
        print(f"{'runner':<13} {'time s':>9} {'peak RSS GB':>12} {'T':>10} {'rel err T':>10} {'NLL':>10}")
        for k, v in results.items():
            if "T" not in v:
                print(f"{k:<13} {v['error']}")
                continue
            nll = ex["nll"][named.index(k)]
            print(f"{k:<13} {v['time_s']:9.2f} {v['peak_rss_gb']:12.2f} {v['T']:10.6f} "
                  f"{abs(v['T'] / ex['T_opt'] - 1):10.2e} {nll:10.6f}")
        if "T" in results["tokcal"]:
            tk = results["tokcal"]["time_s"]
            for k in named:
                if k != "tokcal":
                    print(f"speed-up of tokcal over {k}: {results[k]['time_s'] / tk:.1f}x")
            tab = spawn("table", data)
            if "error" in tab:
                print(f"stored table: {tab['error']}")
            else:
                print(f"\nstored TokenTable, {tab['rows']} rows: read {tab['read_s']:.2f} s, "
                      f"fit {tab['time_s']:.2f} s, T = {tab['T']:.6f}, peak RSS {tab['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
