"""The model's context length: a longer max_length is clamped with a warning, never a crash or a
half-made dataset; transformers' "longer than the maximum" warning is silenced while tokcal windows."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, bpe_tokenizer, tiny_bart, tiny_gpt2
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.errors import TokcalWarning
from tokcal.sources.hf import collect_causal, collect_seq2seq

BOOK = " ".join(PARAGRAPHS * 3)  # ~ 450 tokens: many windows of 64


@pytest.fixture(scope="module")
def gpt2():
    tok = bpe_tokenizer()
    return tiny_gpt2(len(tok), n_positions=64), tok


def same_table(a: TokenTable, b: TokenTable) -> None:
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "log_normalizer"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))


def test_longer_max_length_is_clamped_with_a_warning(gpt2):
    model, tok = gpt2
    with pytest.warns(TokcalWarning, match=r"max_length=1024 is longer than the model's context of 64 positions "
                                           r"\(config\.n_positions\); using max_length=64"):
        t = collect_causal(model, tok, [BOOK], top_k=4, max_length=1024, stride=512)
    same_table(t, collect_causal(model, tok, [BOOK], top_k=4, max_length=64, stride=32))  # same overlap share
    assert t.source["max_length"] == 64 and t.source["max_length_asked"] == 1024 and t.source["stride"] == 32
    assert len(t) == len(tok(BOOK)["input_ids"]) - 1  # every token but the first, once
    with pytest.warns(TokcalWarning):
        d = collect_causal(model, tok, [BOOK], top_k=4, max_length=1000)
    assert d.source["stride"] == 32


def test_transformers_length_warning_is_silenced(gpt2, caplog):
    model, _ = gpt2
    with caplog.at_level(logging.WARNING, logger="transformers"):
        tok = bpe_tokenizer()  # fresh: transformers warns once per tokenizer
        assert len(tok(BOOK)["input_ids"]) > tok.model_max_length
        assert "longer than the specified maximum" in caplog.text  # what a plain call says
        caplog.clear()
        collect_causal(model, bpe_tokenizer(), [BOOK], top_k=4)
    assert "longer than the specified maximum" not in caplog.text


def test_seq2seq_lengths_are_clamped():
    tok = bpe_tokenizer()
    model = tiny_bart(len(tok))  # 64 positions
    pairs = [(BOOK, PARAGRAPHS[0] * 3)]
    with pytest.warns(TokcalWarning, match="max_length=500 is longer"):
        t = collect_seq2seq(model, tok, pairs, top_k=4, max_length=500)
    assert t.source["max_length"] == 64 and t.source["max_target_length"] == 64
    assert t.position.max() < 64


def test_cli_clamps_and_an_interrupted_first_block_leaves_nothing(tmp_path, gpt2):
    model, tok = gpt2
    d = tmp_path / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    book = tmp_path / "book.txt"
    book.write_text(BOOK)
    out = tmp_path / "ds"
    r = CliRunner().invoke(app, ["collect", str(d), str(book), "-o", str(out), "--max-length", "1024",
                                 "--top-k", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and TokenTable.read_parquet(out).source["max_length"] == 64
    # a text corpus as frequency reference, tokenized with the table's own (local) tokenizer
    ev = tmp_path / "ev.json"
    r = CliRunner().invoke(app, ["evaluate", str(out), "--freq-ref", str(book), "--bootstrap", "0", "--json", str(ev)])
    assert r.exit_code == 0, r.output
    ref = json.loads(ev.read_text())["settings"]["slices"]["freq"]["reference"]
    assert ref["kind"] == "text" and ref["name"] == "book.txt" and ref["n_tokens"] == len(tok(BOOK)["input_ids"])

    def stop(*args) -> None:  # Ctrl-C inside the first forward pass: no document finished
        raise KeyboardInterrupt

    fresh = tmp_path / "interrupted"
    hook = model.register_forward_pre_hook(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            collect_causal(model, tok, [BOOK], top_k=4, out_dir=fresh)
    finally:
        hook.remove()
    assert not fresh.exists()
    # Ctrl-C after a finished block (progress runs after it): that block is kept, to resume from
    with pytest.raises(KeyboardInterrupt):
        collect_causal(model, tok, [BOOK, BOOK], top_k=4, out_dir=fresh, block_tokens=1, progress=stop)
    assert TokenTable.read_parquet(fresh).n_sequences == 1
