"""CI runs every benchmark once at a tiny size: the scripts stay runnable and print their
side-by-side tables. No timing is asserted here; the measured numbers live in benchmarks/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = {
    "metrics_bench.py": (["--quick", "--repeat", "1"], ["binned ECE", "torchmetrics", "netcal", "relplot"]),
    "fit_bench.py": (["--quick", "--rows", "300", "--vocab", "2000", "--table-rows", "5000", "--peer-timeout", "120"],
                     ["tokcal", "torch-lbfgs", "probmetrics", "stored TokenTable"]),
    "collect_bench.py": (["--quick"], ["bare forward", "collect_causal", "bytes per token"]),
    "generate_bench.py": (["--quick"], ["temperature", "adaptive"]),
    "evaluate_bench.py": (["--quick", "20000"], ["evaluate:", "6 slices"]),
    "logprobs_bench.py": (["--quick"], ["orjson.loads only", "tokcal read_logprobs", "positions/CPU-s"]),
    "losses_bench.py": (["--quick", "--only", "focal,label_smoothing,CE + mmce"],
                        ["F.cross_entropy", "focal", "label_smoothing", "x reference", "vs CE's peak"]),
    "train_bench.py": (["--quick", "--out", "bench-train"], ["cross_entropy", "adafocal", "ECE after TS"]),
    "stream_bench.py": (["--quick", "--split"], ["bare pyarrow scan", "streamed evaluate",
                                               "ratio to the bare scan of schema-2", "computing on tables"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_reports(script, tmp_path):
    args, expected = CASES[script]
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for word in expected:
        assert word in out.stdout, (word, out.stdout[-3000:])
