"""tokcal.integrations.trainer with a real tiny GPT-2 and the real transformers Trainer on CPU.

Independent references: the model's own forward (F.cross_entropy NLL and argmax accuracy of the
evaluation set), ``tokcal evaluate`` (the CLI) on the table the callback saved, and the gradient of
one large batch against the same batch split into accumulated micro-batches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate")
from trainer_fixtures import Rows, V, one_step, tiny_model  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from tokcal import losses as L  # noqa: E402
from tokcal.integrations.trainer import LossAdapter, TokenCalibration  # noqa: E402


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, per_device_eval_batch_size=5,
                learning_rate=5e-3, max_steps=2, report_to=[], use_cpu=True, save_strategy="no",
                logging_strategy="no", seed=0, dataloader_num_workers=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def trainer_for(tc, tmp_path, model=None, train=None, evals=None, **kw):
    return Trainer(model=model or tiny_model(), args=args(tmp_path, **kw), train_dataset=train or Rows(16, 1),
                   eval_dataset=evals or Rows(11, 2), preprocess_logits_for_metrics=tc.preprocess_logits_for_metrics,
                   compute_metrics=tc.compute_metrics, compute_loss_func=tc.compute_loss_func, callbacks=[tc.callback])


def direct_nll_accuracy(model, ds):
    """Mean next-token NLL and accuracy straight from the model (no tokcal)."""
    model.eval()
    nll, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for it in ds.items:
            z = model(input_ids=it["input_ids"][None], attention_mask=it["attention_mask"][None]).logits[0, :-1]
            y = it["labels"][1:]
            m = y != -100
            nll += float(F.cross_entropy(z[m].double(), y[m], reduction="sum"))
            correct += int((z[m].argmax(1) == y[m]).sum())
            n += int(m.sum())
    return nll / n, correct / n, n


def test_metrics_equal_model_and_tokcal_evaluate(tmp_path):
    from typer.testing import CliRunner

    from tokcal.cli import app

    tc = TokenCalibration(top_k=8, out_dir=tmp_path / "calib", slices=["position"], vocab=[f"t{i}" for i in range(V)])
    tr = trainer_for(tc, tmp_path)
    m = tr.evaluate()
    evals = tr.eval_dataset
    nll, acc, n = direct_nll_accuracy(tr.model, evals)
    assert m["eval_token_n"] == n
    assert m["eval_token_nll"] == pytest.approx(nll, rel=1e-5)
    assert m["eval_token_accuracy"] == pytest.approx(acc, abs=1e-12)
    saved = tmp_path / "calib" / "step-0"
    out = CliRunner().invoke(app, ["evaluate", str(saved / "tokens.parquet"), "--json", str(tmp_path / "cli.json"),
                                   "--bootstrap", "0", "--slice", "position"])
    assert out.exit_code == 0, out.output
    cli = json.loads((tmp_path / "cli.json").read_text())["overall"]
    for k in ("ece", "smooth_ece", "nll", "brier", "accuracy", "confidence"):
        assert m[f"eval_token_{k}"] == pytest.approx(cli[k], rel=1e-9, abs=1e-12), k
    assert json.loads((saved / "evaluation.json").read_text())["overall"]["ece"] == pytest.approx(cli["ece"])
    assert any(k.startswith("eval_token_ece[position=") for k in m)
    from tokcal import TokenTable

    assert TokenTable.read_parquet(saved / "tokens.parquet").vocab[5] == "t5"
    assert tc.last_evaluation.to_dict()["worst_tokens"][0]["token"].startswith("t")
    # batch_eval_metrics: per-batch calls, same result
    tc2 = TokenCalibration(top_k=8, slices=["position"])
    m2 = trainer_for(tc2, tmp_path, model=tr.model, batch_eval_metrics=True).evaluate()
    for k, v in m.items():
        if k.startswith("eval_token"):
            assert m2[k] == pytest.approx(v, rel=1e-12), k


@pytest.mark.parametrize("loss,kw", [("focal", {"gamma": 2.0}), ("label_smoothing", {"epsilon": 0.1})])
def test_gradient_accumulation_equals_one_batch(tmp_path, loss, kw):
    start = torch.cat([p.detach().reshape(-1) for p in tiny_model(3).parameters()])
    full = one_step(tmp_path / "full", loss, kw, 4, 1)
    accum = one_step(tmp_path / "accum", loss, kw, 1, 4)
    assert (full - start).abs().max() > 1e-3  # the step moved the weights
    torch.testing.assert_close(accum, full, rtol=1e-4, atol=1e-6)


def test_loss_adapter_values():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, 50, generator=g)
    y = torch.randint(0, 50, (2, 6), generator=g)
    y[1, 4:] = -100
    shifted = torch.cat([y[:, 1:], torch.full((2, 1), -100)], dim=1)
    n = int((shifted != -100).sum())
    ad = LossAdapter("focal", {"gamma": 2.0})
    torch.testing.assert_close(ad({"logits": z}, y, num_items_in_batch=torch.tensor(n)),
                               L.focal(z, shifted, 2.0))
    torch.testing.assert_close(ad({"logits": z}, y, num_items_in_batch=2 * n), L.focal(z, shifted, 2.0) / 2)
    mm = LossAdapter("mmce", {"lam": 0.5})(  # CE + lam * n * term, over n
        {"logits": z}, y, num_items_in_batch=n)
    torch.testing.assert_close(mm, F.cross_entropy(z.reshape(-1, 50), shifted.reshape(-1))
                               + 0.5 * L.mmce(z, shifted))


def test_adafocal_gammas_follow_evaluations_and_regression_stops(tmp_path):
    tc = TokenCalibration(top_k=8, loss="adafocal", max_ece=0.0)
    tr = trainer_for(tc, tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2)
    before = tc.adafocal.gammas.copy()
    tr.train()
    # max_ece = 0 fails at the first evaluation: training stops at step 2, gammas updated once
    assert tr.state.global_step == 2
    assert len(tc.history) == 1 and len(tc.stop_reasons) == 1
    step, outcome = tc.stop_reasons[0]
    assert step == 2 and not outcome.ok and outcome.limit == 0.0
    assert outcome.value == pytest.approx(tc.history[0]["token_ece"])
    assert len(tc.adafocal.history) == 1 and not np.allclose(tc.adafocal.gammas, before)
    # the update is the rule applied to equal-mass bins of the evaluated table
    from tokcal.metrics import reliability_bins
    from tokcal.probs import token_probs

    p = token_probs(tc.last_table)
    rb = reliability_bins(p.confidence, p.correct, bins=15, binning="mass")
    expected = L.AdaFocal().update(rb).gammas
    np.testing.assert_allclose(tc.adafocal.gammas, expected)


def test_regression_against_first_evaluation(tmp_path):
    tc = TokenCalibration(top_k=8, max_regression=10.0)
    tr = trainer_for(tc, tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2)
    tr.train()
    assert tr.state.global_step == 4 and not tc.stop_reasons and len(tc.history) == 2
    assert tc.baseline is not None and tc.baseline["overall"]["ece"] == pytest.approx(tc.history[0]["token_ece"])
