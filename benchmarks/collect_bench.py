"""Collection overhead over the bare model forward, and bytes stored per token (tokcal.sources.hf).

A small GPT-2 (4 layers, 256 dim, vocab 4096, context 256) on CPU scores random word documents
(one word = one token, so every window is full and batches are identical on both sides). The bare
forward is ``model(input_ids, attention_mask).logits`` on the same windows and batch size; the
collection is ``collect_causal`` end to end (tokenizing, body + head, on-device sketch, table
build). Targets: overhead <= 15 %, <= 512 bytes per token at top_k = 32 (tokcal's Parquet columns;
the id -> string vocabulary is stored once per file, in its metadata).

    .venv/bin/python benchmarks/collect_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tokcal import TokenTable
from tokcal.sketch import sketch_logits
from tokcal.sources.hf import collect_causal

V, CTX = 4096, 256
#: name -> (n_layer, n_embd, vocab): a tiny GPT-2, a wider one, and GPT-2 small's own shape (124 M parameters)
CONFIGS = {"small": (4, 256, 4096), "medium": (6, 512, 16384), "gpt2-small": (12, 768, 50257)}


def setup(n_docs: int, doc_tokens: int, seed: int = 0, n_layer: int = 4, n_embd: int = 256, vocab: int = V):
    words = [f"w{i}" for i in range(vocab - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", model_max_length=CTX)
    rng = np.random.default_rng(seed)
    zipf = np.minimum(rng.zipf(1.2, (n_docs, doc_tokens)), vocab - 1)  # word frequencies roughly like text
    texts = [" ".join(words[j - 1] for j in row) for row in zipf]
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=CTX, n_embd=n_embd, n_layer=n_layer, n_head=n_embd // 64)
    return GPT2LMHeadModel(cfg).eval(), tokenizer, texts


def bare_forward(model, tokenizer, texts, batch_size: int) -> float:
    ids = torch.tensor(tokenizer(texts)["input_ids"])
    mask = torch.ones_like(ids)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, len(ids), batch_size):
            _ = model(input_ids=ids[a:a + batch_size], attention_mask=mask[a:a + batch_size], use_cache=False).logits
    return time.perf_counter() - t0


def sketch_alone(model, tokenizer, texts, batch_size: int, repeats: int) -> float:
    """Best time of ``sketch_logits`` (top_k=32) on the same predictions' full logits, kept in memory."""
    ids = torch.tensor(tokenizer(texts)["input_ids"])
    with torch.inference_mode():
        z = torch.cat([model(input_ids=ids[a:a + batch_size], use_cache=False).logits[:, :-1].reshape(
            -1, model.config.vocab_size) for a in range(0, len(ids), batch_size)]).numpy()
    labels = ids[:, 1:].reshape(-1).numpy()
    sketch_logits(z[:64], labels[:64], top_k=32)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sketch_logits(z, labels, top_k=32, chunk_rows=len(z))
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, n_docs: int, bs: int, repeats: int) -> None:
    n_layer, n_embd, vocab = CONFIGS[name]
    model, tokenizer, texts = setup(n_docs, CTX, n_layer=n_layer, n_embd=n_embd, vocab=vocab)
    collect_causal(model, tokenizer, texts[:bs], max_length=CTX, batch_size=bs)  # warm-up
    bare_forward(model, tokenizer, texts[:bs], bs)
    fwd, col = [], []
    for _ in range(repeats):
        fwd.append(bare_forward(model, tokenizer, texts, bs))
        t0 = time.perf_counter()
        table = collect_causal(model, tokenizer, texts, top_k=32, max_length=CTX, batch_size=bs)
        col.append(time.perf_counter() - t0)
    f, c = min(fwd), min(col)
    paired = float(np.median(np.array(col) / np.array(fwd))) - 1.0
    sk = sketch_alone(model, tokenizer, texts, bs, repeats)
    with tempfile.TemporaryDirectory() as d:
        path = table.write_parquet(Path(d) / "t.parquet")
        size = path.stat().st_size
        meta = pq.ParquetFile(path).metadata
        columns = sum(meta.row_group(g).column(c).total_compressed_size
                      for g in range(meta.num_row_groups) for c in range(meta.num_columns))
        assert len(TokenTable.read_parquet(path)) == len(table)
    n = len(table)
    params = sum(p.numel() for p in model.parameters())
    print(f"== {name} GPT-2: {n_layer} layers, {n_embd} dim, vocab {vocab}, {params / 1e6:.1f} M parameters")
    print(f"tokens predicted: {n:,} ({n_docs} docs x {CTX} tokens, batch {bs}, torch threads "
          f"{torch.get_num_threads()}, best of {repeats})")
    print(f"bare forward     : {f:.3f} s  ({n / f:,.0f} tok/s)")
    print(f"collect_causal   : {c:.3f} s  ({n / c:,.0f} tok/s)")
    print(f"overhead         : {100 * (c - f) / f:+.1f} %  (target <= 15 %; median of the {repeats} paired runs "
          f"{100 * paired:+.1f} %)")
    print(f"runs (s)         : bare {' '.join(f'{x:.2f}' for x in fwd)} | collect {' '.join(f'{x:.2f}' for x in col)}")
    print(f"sketch alone     : {sk:.3f} s  ({1e9 * sk / (n * vocab):.2f} ns/logit, "
          f"{100 * sk / f:.1f} % of the bare forward)")
    print(f"bytes per token  : {columns / n:.0f} B at top_k=32 in the columns (target <= 512); whole file "
          f"{size / n:.0f} B/token with the {vocab:,}-string vocabulary stored once in its metadata")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        measure("small", 16, 8, 1)
        return
    measure("small", 96, 8, args.repeats)
    measure("medium", 32, 8, args.repeats)
    measure("gpt2-small", 16, 8, args.repeats)


if __name__ == "__main__":
    main()
