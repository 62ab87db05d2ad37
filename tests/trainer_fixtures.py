"""A tiny GPT-2 and token sequences for the Trainer tests; run as a script under torchrun, one
evaluation per mode, each rank's metrics written as JSON (tests/test_integrations_trainer_torchrun.py).

    torchrun --standalone --nproc-per-node 2 tests/trainer_fixtures.py OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

V, T = 211, 24


class Rows(torch.utils.data.Dataset):
    """Token sequences of varying length, right-padded; labels -100 on padding."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            length = int(torch.randint(8, T + 1, (1,), generator=g))
            ids = torch.randint(1, V, (T,), generator=g)
            ids[: length // 2] = (torch.arange(length // 2) * 7 + i) % V  # some learnable structure
            mask = (torch.arange(T) < length).long()
            labels = torch.where(mask.bool(), ids, -100)
            self.items.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_model(seed: int = 0, init_range: float = 0.02) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=init_range)
    return GPT2LMHeadModel(cfg)


def trim_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch cut to its longest sequence: batches (and ranks) differ in length, so the Trainer
    pads logits and labels across processes before gathering."""
    width = max(int(it["attention_mask"].sum()) for it in items)
    return {k: torch.stack([it[k][:width] for it in items]) for k in items[0]}


#: the evaluation set: 11 sequences in batches of 2 per rank, so the last step of 2 ranks holds 3
#: sequences and one duplicate that the Trainer must drop
N_EVAL, EVAL_BATCH = 11, 2


def evaluate(out: Path, batch_eval_metrics: bool, save: Path | None = None) -> dict[str, float]:
    from tokcal.integrations.trainer import TokenCalibration

    tc = TokenCalibration(top_k=8, slices=["position"], out_dir=save)
    args = TrainingArguments(output_dir=str(out / "run"), per_device_eval_batch_size=EVAL_BATCH, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", seed=0,
                             dataloader_num_workers=0, disable_tqdm=True, batch_eval_metrics=batch_eval_metrics)
    tr = Trainer(model=tiny_model(init_range=1.0), args=args, eval_dataset=Rows(N_EVAL, 2), data_collator=trim_collate,
                 preprocess_logits_for_metrics=tc.preprocess_logits_for_metrics, compute_metrics=tc.compute_metrics,
                 callbacks=[tc.callback])
    metrics = tr.evaluate()
    return {k: v for k, v in metrics.items() if k.startswith("eval_token")}


def one_step(out: Path, loss: str, loss_kwargs: dict, batch_size: int, accumulation: int = 1) -> torch.Tensor:
    """The parameters of the tiny model after one SGD step (lr 1) of ``loss`` on 4 training sequences."""
    from tokcal.integrations.trainer import TokenCalibration

    tc = TokenCalibration(loss=loss, loss_kwargs=loss_kwargs)
    args = TrainingArguments(output_dir=str(out / "train"), per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
                             lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", seed=0, dataloader_num_workers=0, disable_tqdm=True)
    tr = Trainer(model=tiny_model(3), args=args, train_dataset=Rows(4, 5), data_collator=trim_collate,
                 compute_loss_func=tc.compute_loss_func)
    tr.train()
    return torch.cat([p.detach().reshape(-1) for p in tr.model.parameters()])


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    for batched in (False, True):
        name = "batched" if batched else "whole"
        m = evaluate(out, batched, save=out / f"calib-{name}")
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(m))
    # one DDP step: 2 sequences per rank, the gradient of the 4 (the Trainer sums the token counts of
    # the ranks into num_items_in_batch and scales the loss by the number of processes)
    params = one_step(out, "focal", {"gamma": 2.0}, batch_size=2).numpy()
    if rank == 0:
        np.save(out / "step-params.npy", params)
    if torch.distributed.is_initialized():  # ranks leaving with the process group alive abort in its teardown
        torch.distributed.barrier()           # ("terminate called without an active exception", seen ~1 run in 2)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
