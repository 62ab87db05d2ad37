"""The Trainer's evaluation under ``torchrun --nproc-per-node 2`` (gloo, CPU) with tokcal's
``preprocess_logits_for_metrics`` / ``compute_metrics``: the Trainer pads the sketches of batches of
different lengths across processes, gathers them and drops the duplicate that evens out the last
step. The metrics of both ranks must equal one process's evaluation of the same data, whole and with
``batch_eval_metrics=True``, and ``tokcal evaluate`` on the table the callback saved. One training
step under DDP with ``compute_loss_func`` equals one process's step on the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")
from trainer_fixtures import N_EVAL, Rows, evaluate, one_step, tiny_model  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tokcal import TokenTable  # noqa: E402
from tokcal.cli import app  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
HERE = Path(__file__).resolve().parent


def test_two_process_evaluation_equals_one_process(tmp_path):
    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(HERE / "trainer_fixtures.py"),
                        str(multi)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    n_tokens = sum(int((Rows(N_EVAL, 2)[i]["labels"] != -100).sum()) - 1 for i in range(N_EVAL))
    for name, batched in (("whole", False), ("batched", True)):
        one = evaluate(tmp_path / f"one-{name}", batched, save=tmp_path / f"one-{name}-calib")
        assert one["eval_token_n"] == n_tokens  # each sequence once: labels shifted, the last one dropped
        assert 0.05 < one["eval_token_confidence"] < 0.95 and one["eval_token_ece"] > 0.01
        assert any(k.startswith("eval_token_ece[position=") for k in one)
        for rank in (0, 1):
            m = json.loads((multi / f"{name}-rank{rank}.json").read_text())
            assert set(m) == set(one), (name, rank)
            for k, v in one.items():
                assert m[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (name, rank, k)
        # the gathered table (saved by rank 0) is the single-process one, row for row
        a = TokenTable.read_parquet(multi / f"calib-{name}" / "step-0" / "tokens.parquet")
        b = TokenTable.read_parquet(tmp_path / f"one-{name}-calib" / "step-0" / "tokens.parquet")
        assert len(a) == len(b) == n_tokens
        for col in ("sequence_id", "position", "label", "top_ids"):
            np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
        for col in ("top_logits", "label_logit", "log_normalizer"):
            np.testing.assert_allclose(getattr(a, col), getattr(b, col), rtol=1e-5, atol=1e-5, err_msg=col)
        out = CliRunner().invoke(app, ["evaluate", str(multi / f"calib-{name}" / "step-0" / "tokens.parquet"),
                                       "--json", str(tmp_path / f"cli-{name}.json"), "--bootstrap", "0"])
        assert out.exit_code == 0, out.output
        cli = json.loads((tmp_path / f"cli-{name}.json").read_text())["overall"]
        m0 = json.loads((multi / f"{name}-rank0.json").read_text())
        for k in ("ece", "smooth_ece", "nll", "brier", "accuracy", "confidence"):
            assert m0[f"eval_token_{k}"] == pytest.approx(cli[k], rel=1e-9, abs=1e-12), (name, k)
    # one DDP step (2 + 2 sequences) equals one process's step on the 4
    start = torch.cat([p.detach().reshape(-1) for p in tiny_model(3).parameters()])
    ddp = torch.from_numpy(np.load(multi / "step-params.npy"))
    one = one_step(tmp_path / "one-train", "focal", {"gamma": 2.0}, batch_size=4)
    assert (one - start).abs().max() > 1e-3  # the step moved the weights
    torch.testing.assert_close(ddp, one, rtol=1e-4, atol=1e-6)
