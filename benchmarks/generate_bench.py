"""Per-step overhead of ``CalibratedLogitsProcessor`` over plain ``model.generate``.

Model: the embedded demo GPT-2 when its assets exist (``src/tokcal/demo/assets``), else a randomly
initialised GPT-2 of the same shape built from config (``tokcal.demo.train.build_model``: 4 layers,
n_embd 112, vocab 4096). Decoding: sampling with top-p 0.9 (the processor runs before the warper), a
16-token prompt, ``max_new_tokens`` new tokens, EOS disabled so every run has the same length.

Two measurements per (batch size, calibrator):

* end to end: plain and calibrated ``generate`` runs interleaved, best-of-R per-step time of each, and
  overhead = calibrated / plain - 1 (noisy on a loaded machine: the two arms see the same noise);
* isolated: the processor alone on a [B, V] logits tensor (median of many calls), as a share of the
  plain per-step time — the cost the processor adds when nothing else competes.

Run: ``.venv/bin/python benchmarks/generate_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessorList


def load_model():
    """(model, vocab_size, description): the demo model if shipped, else one of its shape from config."""
    assets = Path(__file__).resolve().parents[1] / "src" / "tokcal" / "demo" / "assets"
    if (assets / "model.safetensors").exists() or (assets / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(assets, local_files_only=True, use_safetensors=True)
        desc = "embedded demo model"
    else:
        from tokcal.demo.train import build_model

        torch.manual_seed(0)
        model = build_model(4096, 0)
        desc = "demo-shaped GPT-2 from config (random weights)"
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    n_params = sum(p.numel() for p in model.parameters())
    return model, model.config.vocab_size, f"{desc}, {n_params / 1e6:.2f} M parameters"


def adaptive_for(model, vocab: int):
    """An AdaptiveTemperature fitted on the model's own logits over random token streams."""
    import tokcal
    from tokcal.calibrators.adaptive import AdaptiveTemperature

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (8, 64), generator=g)
    with torch.no_grad():
        z = model(input_ids=ids).logits[:, :-1].reshape(-1, vocab)
    table = tokcal.TokenTable.from_logits(z.numpy(), ids[:, 1:].reshape(-1).numpy(),
                                          positions=np.tile(np.arange(1, 64), 8))
    return AdaptiveTemperature().fit(table)


def per_step(model, inputs, new_tokens: int, procs) -> float:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=None, do_sample=True, top_p=0.9,
                       top_k=0, logits_processor=procs)
    return (time.perf_counter() - t0) / new_tokens


def isolated(proc, batch: int, vocab: int, calls: int) -> float:
    ids = torch.zeros(batch, 20, dtype=torch.long)
    z = torch.randn(batch, vocab) * 3
    for _ in range(5):
        proc(ids, z)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        proc(ids, z)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from tokcal.calibrators import Temperature
    from tokcal.integrations.hf_generate import CalibratedLogitsProcessor

    model, vocab, desc = load_model()
    new_tokens, reps, calls = (16, 2, 50) if args.quick else (64, 5, 300)
    batches = (1,) if args.quick else (1, 8)
    cals = {"temperature": Temperature(temperature=1.3), "adaptive": adaptive_for(model, vocab)}
    print(f"model: {desc}; vocab {vocab}; {new_tokens} new tokens, prompt 16, top-p 0.9, 1 thread, best of {reps}")
    print("| calibrator | batch | plain ms/step | calibrated ms/step | end-to-end overhead | processor alone "
          "ms | processor / plain step |")
    print("|---|---|---|---|---|---|---|")
    for b in batches:
        inputs = {"input_ids": torch.randint(1, vocab, (b, 16), generator=torch.Generator().manual_seed(b)),
                  "attention_mask": torch.ones(b, 16, dtype=torch.long)}
        per_step(model, inputs, 4, None)  # warm-up
        for name, cal in cals.items():
            proc = CalibratedLogitsProcessor(cal, input_kind="logits")
            procs = LogitsProcessorList([proc])
            per_step(model, inputs, 4, procs)
            plain, calibrated = [], []
            for _ in range(reps):
                plain.append(per_step(model, inputs, new_tokens, None))
                calibrated.append(per_step(model, inputs, new_tokens, procs))
            p, c = min(plain), min(calibrated)
            alone = isolated(proc, b, vocab, calls)
            print(f"| {name} | {b} | {p * 1e3:.3f} | {c * 1e3:.3f} | {100 * (c / p - 1):+.1f} % | "
                  f"{alone * 1e3:.4f} | {100 * alone / p:.1f} % |")


if __name__ == "__main__":
    main()
