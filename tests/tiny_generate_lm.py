"""Tiny real Hugging Face causal LMs for the integration tests, built offline.

A byte-level BPE tokenizer is trained in memory on a few sentences with ``tokenizers``; the model is a
2-layer GPT-2 (n_embd 32) with random weights (seeded). Nothing is downloaded.
"""

from __future__ import annotations

import functools

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A calibrated model knows what it does not know.",
    "Tokens, tokens everywhere: naïve café, déjà vu, 東京 and emoji 🙂.",
    "In the beginning was the word, and the word was with the model.",
    "Confidence should match accuracy, token by token.",
] * 4


@functools.cache
def tiny_tokenizer(vocab_size: int = 320):
    """A fast GPT-2-style tokenizer (byte-level BPE) with ``<|endoftext|>`` as bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", clean_up_tokenization_spaces=False,
    )


def tiny_gpt2(seed: int = 0, vocab_size: int | None = None, initializer_range: float = 0.2):
    """A 2-layer, 32-wide GPT-2 in eval mode. A wide init gives peaked, non-uniform next-token laws."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    cfg = GPT2Config(
        vocab_size=vocab_size or len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        initializer_range=initializer_range, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_tiny(directory, seed: int = 0):
    """Write a tiny model + tokenizer as a local model dir (safetensors); returns the path."""
    model = tiny_gpt2(seed)
    model.save_pretrained(directory, safe_serialization=True)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def teacher_forced_table(model, tok, texts):
    """A TokenTable of the model's own next-token logits on ``texts`` (BOS prepended, position = index)."""
    import numpy as np
    import torch

    import tokcal

    rows, labels, pos = [], [], []
    for t in texts:
        ids = [tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            z = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        rows.append(z)
        labels += ids[1:]
        pos += list(range(1, len(ids)))
    return tokcal.TokenTable.from_logits(torch.cat(rows).numpy(), np.asarray(labels), positions=np.asarray(pos))
