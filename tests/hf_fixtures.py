"""Tiny randomly initialised HF models and a real byte-level BPE tokenizer trained here (no downloads)."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

torch.set_num_threads(1)  # tiny models: threads only contend on the shared cores

PARAGRAPHS = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: "
    "and God divided the light from the darkness.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! "
    "How vexingly quick daft zebras jump; 1234567890.",
    "Calibration measures whether a model's confidence matches its accuracy, token by token, "
    "across domains such as scripture, fortunes, code and news.",
    "Ünïcödé text — with em dashes, “quotes” and emoji 🙂 — must survive byte-level tokenization.",
]


@functools.cache
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(PARAGRAPHS * 4, trainer)
    return tok.to_str()


def bpe_tokenizer(vocab_size: int = 400, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on PARAGRAPHS; <|endoftext|> is BOS/EOS, <pad> pads."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)), bos_token="<|endoftext|>",
        eos_token="<|endoftext|>", pad_token="<pad>", padding_side=padding_side, model_max_length=64,
    )


def tiny_gpt2(vocab_size: int, n_positions: int = 64, seed: int = 0, n_layer: int = 2, n_embd: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2,
                     bos_token_id=0, eos_token_id=0, initializer_range=0.5)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bart(vocab_size: int, seed: int = 0):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    cfg = BartConfig(vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=0,
                     decoder_start_token_id=0, forced_eos_token_id=None, init_std=0.5)
    return BartForConditionalGeneration(cfg).eval()


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tiny_bert_tagger(vocab_size: int, seed: int = 0):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=len(TAGS),
                     id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)},
                     pad_token_id=1, initializer_range=0.5)
    return BertForTokenClassification(cfg).eval()


def save_tiny_causal(path, n_positions: int = 64):
    """A tiny GPT-2 and the BPE tokenizer saved as a local from_pretrained folder; returns ``path``."""
    tok = bpe_tokenizer()
    tiny_gpt2(len(tok), n_positions=n_positions).save_pretrained(path)
    tok.save_pretrained(path)
    return path
