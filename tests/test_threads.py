"""tokcal's parallel numba kernels leave torch's thread count alone (tokcal._threads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import torch  # first, as in a user's decoding script: numba's OpenMP layer then binds to its libgomp
    import numpy as np
    torch.set_num_threads(1)
    torch.randn(256, 512) @ torch.randn(512, 512)  # torch's OpenMP runtime in use
    from tokcal.sketch import sketch_logits
    from tokcal.calibrators import Temperature
    from tokcal.metrics import ece
    assert torch.get_num_threads() == 1
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (3000, 512)).astype(np.float32)
    y = rng.integers(0, 512, 3000)
    sketch_logits(z, y, top_k=16)                      # sketch kernel
    assert torch.get_num_threads() == 1, "after sketch_logits"
    Temperature().fit_logits(z, y)                     # temperature statistics kernel
    assert torch.get_num_threads() == 1, "after fit_logits"
    ece(rng.random(2_000_000), rng.random(2_000_000) < 0.5)  # parallel binned statistics
    print(torch.get_num_threads())
""")


def test_kernels_keep_torch_single_threaded():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"


def test_streamed_passes_run_numba_on_one_thread_of_the_caller_only(tmp_path, monkeypatch):
    import threading

    import numba

    from tokcal._threads import numba_threads
    from tokcal.distributed import stats
    from tokcal.synthetic import make_table

    before = numba.get_num_threads()
    seen: dict[str, int] = {}
    with numba_threads(1):
        seen["inside"] = numba.get_num_threads()
        other = threading.Thread(target=lambda: seen.update(other=numba.get_num_threads()))
        other.start()
        other.join()
    assert seen["inside"] == 1 and seen["other"] == before and numba.get_num_threads() == before
    make_table(3000, 300, seq_len=50, seed=0).write_parquet(tmp_path / "t.parquet")
    calls = []
    update = stats.EvaluationSums.update

    def recording(self, table):
        calls.append(numba.get_num_threads())
        return update(self, table)

    monkeypatch.setattr(stats.EvaluationSums, "update", recording)  # records, then runs the real update
    stats.evaluate_stream(tmp_path / "t.parquet", bootstrap=10, batch_rows=1000)
    assert calls == [1, 1, 1] and numba.get_num_threads() == before
