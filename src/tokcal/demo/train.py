"""Train the embedded demo model: a byte-level BPE tokenizer and a ~1 M-parameter GPT-2 on the KJV.

Retrain the shipped weights (CPU only, deterministic for a given seed, thread count and torch build)::

    python -m tokcal.demo.train --out src/tokcal/demo/assets --steps 2400 --threads 2

This takes about 30 min on 2 free cores (2400 steps of 16 x 256 tokens at ~0.5-0.7 s each: ~10 M tokens,
~10 passes over the 0.92 M training tokens), up to an hour on a busy machine.
The shipped assets were trained with ``--steps 900 --threads 1`` (3.7 M tokens, 28 min on one core of a
busy shared machine; train loss 3.83, validation loss 4.33 = perplexity 76.0); ``training.json`` next to the
weights records the exact settings, losses, validation perplexity and wall time.

What it does:

1. tokenizer: byte-level BPE (``tokenizers``), vocabulary 4096 including the special token
   ``<|endoftext|>`` (also used as BOS, EOS, PAD and UNK), trained on the training books only
   (:mod:`tokcal.demo.data`: whole books held out for validation and test);
2. data: every training book as one document (chapters on separate lines) followed by ``<|endoftext|>``,
   concatenated into one token stream; batches are windows of ``n_positions`` tokens at offsets drawn
   by a seeded generator;
3. model: ``GPT2LMHeadModel`` with n_layer 4, n_embd 112, n_head 4, n_positions 256, tied input/output
   embedding, no dropout, GPT-2's tanh GELU in its fused form (``gelu_pytorch_tanh``; same function as
   ``gelu_new`` to 5e-7, 8x faster on CPU): 1.10 M parameters (the 4096 x 112 embedding is 0.46 M);
4. optimiser: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), peak lr 3e-3, linear warm-up
   over the first 5 % of steps then cosine decay to 10 % of the peak, gradient clipping at 1.0;
5. output: ``model.safetensors`` + ``config.json`` (``save_pretrained(safe_serialization=True)``),
   ``tokenizer.json`` + ``tokenizer_config.json`` (loadable with ``AutoTokenizer.from_pretrained(out)``),
   ``token_counts.json`` (count of each token id in the training stream, for frequency slices) and
   ``training.json`` (settings, loss history, validation perplexity, wall time).

Determinism: ``torch.manual_seed``, ``torch.use_deterministic_algorithms(True)``, a fixed thread count,
and a seeded generator for batch offsets. The same command gives the same weights on the same machine
and torch build (floating-point reductions may differ across thread counts and CPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokcalError
from . import data

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EOS = "<|endoftext|>"
MODEL_SHAPE = {"n_layer": 4, "n_embd": 112, "n_head": 4, "n_positions": 256}


def train_tokenizer(texts: list[str], vocab_size: int = 4096):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=MODEL_SHAPE["n_positions"])


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All ``texts`` tokenized, each followed by ``<|endoftext|>``, as one int64 array."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def build_model(vocab_size: int, eos_id: int, **shape: int):
    """The demo GPT-2 (``MODEL_SHAPE`` unless overridden), randomly initialised from the torch seed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                        pad_token_id=eos_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_pytorch_tanh", tie_word_embeddings=True,
                        **{**MODEL_SHAPE, **shape})
    return GPT2LMHeadModel(config)


def lr_at(step: int, steps: int, peak: float, warmup_frac: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup_frac`` of the steps, then cosine decay to ``floor*peak``."""
    warmup = max(1, int(round(warmup_frac * steps)))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def mean_loss(model, stream: np.ndarray, seq_len: int, max_windows: int = 64, batch_size: int = 16) -> float:
    """Mean next-token NLL (nats) over up to ``max_windows`` non-overlapping windows of ``stream``."""
    import torch

    n_windows = min(max_windows, (len(stream) - 1) // seq_len)
    if n_windows < 1:
        raise TokcalError(f"evaluation stream of {len(stream)} tokens is shorter than one window")
    windows = torch.from_numpy(stream[: n_windows * seq_len].reshape(n_windows, seq_len))
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n_windows, batch_size):
            batch = windows[start:start + batch_size]
            loss = model(input_ids=batch, labels=batch).loss
            n = batch.shape[0] * (seq_len - 1)
            total += float(loss) * n
            count += n
    model.train()
    return total / count


def train(out: Path | str = ASSETS_DIR, steps: int = 2400, seed: int = 0, batch_size: int = 16,
          lr: float = 3e-3, threads: int = 2, vocab_size: int = 4096, max_train_books: int | None = None,
          eval_every: int = 100, progress: bool = True, **shape: int) -> dict[str, Any]:
    """Train tokenizer and model, write them to ``out``; return the summary also saved as training.json."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if steps < 1:
        raise TokcalError(f"steps must be at least 1, got {steps}")
    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    train_docs = data.kjv_documents("train")[:max_train_books]
    tokenizer = train_tokenizer(train_docs, vocab_size)
    train_ids = token_stream(tokenizer, train_docs)
    val_ids = token_stream(tokenizer, data.kjv_documents("validation"))
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    model = build_model(len(tokenizer), eos_id, **shape)
    seq_len = model.config.n_positions
    if len(train_ids) <= seq_len + 1:
        raise TokcalError(f"training stream of {len(train_ids)} tokens is shorter than one window")
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    stream = torch.from_numpy(train_ids)
    offsets_arange = torch.arange(seq_len)
    history: list[dict[str, float]] = []
    losses: list[float] = []

    columns = [TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        for step in range(steps):
            for group in optim.param_groups:
                group["lr"] = lr_at(step, steps, lr)
            starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
            batch = stream[starts[:, None] + offsets_arange]
            loss = model(input_ids=batch, labels=batch).loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                val = mean_loss(model, val_ids, seq_len)
                history.append({"step": step + 1, "train_loss": float(np.mean(losses[-eval_every:])),
                                "val_loss": val, "seconds": round(time.perf_counter() - started, 1)})
                if progress:
                    bar.console.print(f"step {step + 1}: train loss {history[-1]['train_loss']:.3f}, "
                                      f"val loss {val:.3f} (ppl {math.exp(val):.1f})")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    counts = np.bincount(train_ids, minlength=len(tokenizer)).tolist()
    (out / "token_counts.json").write_text(json.dumps({"what": "gold-token counts of the training stream",
                                                       "counts": counts}) + "\n")
    summary = {
        "steps": steps, "seed": seed, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
        "threads": threads, "vocab_size": len(tokenizer), "n_params": n_params,
        "train_books": len(train_docs), "train_tokens": int(len(train_ids)),
        "validation_tokens": int(len(val_ids)), "tokens_seen": steps * batch_size * seq_len,
        "first_loss": losses[0], "final_train_loss": float(np.mean(losses[-min(20, steps):])),
        "final_val_loss": history[-1]["val_loss"], "val_perplexity": math.exp(history[-1]["val_loss"]),
        "history": history, "wall_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__, "validation_books": list(data.KJV_VALIDATION_BOOKS),
        "test_books": list(data.KJV_TEST_BOOKS),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tokcal.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR, help="output directory (default: assets)")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args(argv)
    summary = train(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                    threads=args.threads, eval_every=args.eval_every)
    print(f"wrote {args.out}: {summary['n_params']:,} parameters, val perplexity "
          f"{summary['val_perplexity']:.2f}, {summary['wall_seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
