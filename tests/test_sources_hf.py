"""tokcal.sources.hf against brute force on the full logits of tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_fixtures import PARAGRAPHS, TAGS, bpe_tokenizer, tiny_bart, tiny_bert_tagger, tiny_gpt2

from tokcal.errors import TokcalError
from tokcal.sources.hf import collect_causal, collect_seq2seq, collect_token_classification, sliding_windows
from tokcal.sources.readers import Document

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    return tiny_gpt2(len(tok), n_positions=128)


def expected_rows(logits: torch.Tensor, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Brute force on full logits [n, V] (float64): every TokenTable column at T = 1."""
    z = logits.double().numpy()
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(z, order, 1)
    mask = np.ones_like(z, bool)
    np.put_along_axis(mask, order, False, 1)
    tail = np.log(np.where(mask, np.exp(z - z.max(1, keepdims=True)), 0).sum(1)) + z.max(1)
    return {"top_ids": order, "top_logits": top, "label_logit": z[np.arange(len(z)), labels],
            "log_normalizer": np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1), "tail1": tail}


def check_against(table, rows: np.ndarray, exp: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(table.top_ids[rows], exp["top_ids"])
    np.testing.assert_allclose(table.top_logits[rows], exp["top_logits"], **TOL)
    np.testing.assert_allclose(table.label_logit[rows], exp["label_logit"], **TOL)
    np.testing.assert_allclose(table.log_normalizer[rows], exp["log_normalizer"], **TOL)
    beta1 = table.layout.betas.index(1.0)
    np.testing.assert_allclose(table.tail[rows, beta1, 0], exp["tail1"], **TOL)


def test_causal_columns_equal_brute_force(tok, gpt2):
    docs = [Document(f"d{i}", p, {"domain": "bible" if i < 2 else "other"}) for i, p in enumerate(PARAGRAPHS)]
    t = collect_causal(gpt2, tok, docs, top_k=8, max_length=128, batch_size=3)
    assert t.source["task"] == "causal-lm" and t.source["top_k"] == 8 and t.source["labels"] == "teacher-forced"
    assert t.vocab_size == len(tok) and len(t.vocab) == len(tok)
    assert t.vocab[tok.convert_tokens_to_ids("Ġthe")] == " the"
    for s, text in enumerate(PARAGRAPHS):
        ids = tok(text)["input_ids"]
        assert len(ids) <= 128
        with torch.no_grad():
            z = gpt2(torch.tensor([ids])).logits[0, :-1]
        rows = np.flatnonzero(t.sequence_id == s)
        np.testing.assert_array_equal(t.position[rows], np.arange(1, len(ids)))
        np.testing.assert_array_equal(t.label[rows], ids[1:])
        check_against(t, rows, expected_rows(z, np.array(ids[1:]), 8))
        assert set(t.group("domain").values()[rows]) == {"bible" if s < 2 else "other"}
    # temperature-1 quantities of the table are the exact softmax
    from tokcal.probs import token_probs

    p = token_probs(t)
    ids = tok(PARAGRAPHS[0])["input_ids"]
    with torch.no_grad():
        full = torch.log_softmax(gpt2(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()
    rows = np.flatnonzero(t.sequence_id == 0)
    np.testing.assert_allclose(np.log(p.label_prob[rows]), full[np.arange(len(rows)), ids[1:]], atol=1e-5)


def test_sliding_windows_predict_each_token_once_with_hf_guide_context(tok, gpt2):
    text = " ".join(PARAGRAPHS)
    ids = tok(text)["input_ids"]
    L, S = 16, 5
    t = collect_causal(gpt2, tok, [text], top_k=4, max_length=L, stride=S, batch_size=4)
    np.testing.assert_array_equal(t.position, np.arange(1, len(ids)))  # exactly once, in order
    # independent re-derivation of the HF perplexity guide loop
    prev_end, done = 0, 0
    for begin in range(0, len(ids), S):
        end = min(begin + L, len(ids))
        trg = end - prev_end
        with torch.no_grad():
            z = gpt2(torch.tensor([ids[begin:end]])).logits[0, :-1]
        keep = np.arange(begin + 1, end) >= end - trg
        targets = np.arange(begin + 1, end)[keep]
        rows = targets - 1
        check_against(t, rows, expected_rows(z[torch.from_numpy(keep)], np.array(ids)[targets], 4))
        done += len(targets)
        prev_end = end
        if end == len(ids):
            break
    assert done == len(ids) - 1
    with pytest.raises(TokcalError, match="stride"):
        sliding_windows(100, 16, 16)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_size_and_padding_side_do_not_change_the_table(gpt2, side):
    tk = bpe_tokenizer(padding_side=side)
    texts = [PARAGRAPHS[i % 5][: 20 + 37 * i] for i in range(9)]
    one = collect_causal(gpt2, tk, texts, top_k=8, max_length=24, stride=10, batch_size=1)
    eight = collect_causal(gpt2, tk, texts, top_k=8, max_length=24, stride=10, batch_size=8)
    for col in ("sequence_id", "position", "label", "top_ids"):
        np.testing.assert_array_equal(getattr(one, col), getattr(eight, col), err_msg=col)
    for col in ("top_logits", "label_logit", "log_normalizer", "tail"):
        np.testing.assert_allclose(getattr(one, col), getattr(eight, col), rtol=1e-5, atol=1e-5, err_msg=col)


def test_chunked_head_and_sketch_give_the_same_table(gpt2, monkeypatch):
    """Chunks of 3 rows (the head applied and sketched chunk by chunk) == one chunk per batch."""
    from tokcal.sources import _hf_common

    tk = bpe_tokenizer()
    texts = [PARAGRAPHS[i % 5][: 40 + 29 * i] for i in range(6)]
    whole = collect_causal(gpt2, tk, texts, top_k=8, max_length=24, stride=10, batch_size=4)
    vocab = gpt2.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(_hf_common, "_CHUNK_ELEMS_CPU", 3 * vocab)
    chunked = collect_causal(gpt2, tk, texts, top_k=8, max_length=24, stride=10, batch_size=4)
    for col in ("sequence_id", "position", "label", "top_ids"):
        np.testing.assert_array_equal(getattr(whole, col), getattr(chunked, col), err_msg=col)
    for col in ("top_logits", "label_logit", "log_normalizer", "tail"):  # matmul blocking: float32 rounding
        np.testing.assert_allclose(getattr(whole, col), getattr(chunked, col), rtol=1e-5, atol=1e-5, err_msg=col)


def test_bos_policy_eos_is_a_target_other_specials_are_not(tok, gpt2):
    text = "In the beginning<|endoftext|> God<pad> created"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert eos in ids and pad in ids
    plain = collect_causal(gpt2, tok, [text], max_length=64)
    assert eos in plain.label and pad not in plain.label
    assert plain.position[0] == 1 and plain.source["bos"] == "tokenizer"
    np.testing.assert_array_equal(plain.label, [i for i in ids[1:] if i != pad])
    with_bos = collect_causal(gpt2, tok, [text], max_length=64, prepend_bos=True, append_eos=True)
    assert with_bos.source["bos"] == "prepend" and with_bos.source["append_eos"]
    expected = [i for i in ids if i != pad] + [eos]  # first text token predicted, and the end of the document
    np.testing.assert_array_equal(with_bos.label, expected)
    np.testing.assert_array_equal(with_bos.position, [j + 1 for j, i in enumerate([*ids, eos]) if i != pad])
    with torch.no_grad():
        z = gpt2(torch.tensor([[tok.bos_token_id, *ids, eos]])).logits[0]
    np.testing.assert_allclose(with_bos.label_logit[0], z[0, ids[0]].item(), **TOL)
    np.testing.assert_allclose(with_bos.label_logit[-1], z[-2, eos].item(), **TOL)
    with pytest.raises(TokcalError, match="no tokens to predict"):
        collect_causal(gpt2, tok, ["<pad>", ""], max_length=64)


def test_seq2seq_decoder_rows_equal_brute_force(tok):
    model = tiny_bart(len(tok))
    pairs = [(PARAGRAPHS[i][:60], PARAGRAPHS[(i + 1) % 5][:50 + 10 * i]) for i in range(5)]
    t = collect_seq2seq(model, tok, pairs, top_k=6, batch_size=2, groups={"split": "dev"})
    assert t.source["task"] == "seq2seq" and set(t.group("split").categories) == {"dev"}
    special = set(tok.all_special_ids) - {tok.eos_token_id}  # EOS is a target
    for s, (src, tgt) in enumerate(pairs):
        x = tok(src)["input_ids"]
        y = tok(text_target=tgt)["input_ids"]
        dec = [model.config.decoder_start_token_id, *y[:-1]]
        with torch.no_grad():
            z = model(input_ids=torch.tensor([x]), decoder_input_ids=torch.tensor([dec])).logits[0]
        keep = np.array([i not in special for i in y])
        rows = np.flatnonzero(t.sequence_id == s)
        np.testing.assert_array_equal(t.position[rows], np.flatnonzero(keep))
        np.testing.assert_array_equal(t.label[rows], np.array(y)[keep])
        check_against(t, rows, expected_rows(z[torch.from_numpy(keep)], np.array(y)[keep], 6))


def test_token_classification_first_subtoken_and_label2id(tok):
    model = tiny_bert_tagger(len(tok))
    words = [["In", "the", "beginning", "Jerusalem"], ["Ünïcödé", "emoji", "🙂"], ["God", "said"]]
    tags = [["O", "O", "O", "B-LOC"], ["O", "O", "O"], ["B-PER", "O"]]
    t = collect_token_classification(model, tok, words, tags, top_k=32, batch_size=2)
    assert t.k == len(TAGS) and t.vocab == TAGS and t.source["task"] == "token-classification"
    for s, ws in enumerate(words):
        enc = tok(ws, is_split_into_words=True)
        wid = enc.word_ids()
        first = [wid.index(w) for w in range(len(ws))]
        with torch.no_grad():
            z = model(torch.tensor([enc["input_ids"]])).logits[0, first]
        rows = np.flatnonzero(t.sequence_id == s)
        np.testing.assert_array_equal(t.position[rows], np.arange(len(ws)))
        y = np.array([TAGS.index(g) for g in tags[s]])
        np.testing.assert_array_equal(t.label[rows], y)
        check_against(t, rows, expected_rows(z, y, len(TAGS)))
    with pytest.raises(TokcalError, match="B-ORG"):
        collect_token_classification(model, tok, [["x"]], [["B-ORG"]])
    unknown = collect_token_classification(model, tok, [["x", "y"]], None)
    assert (unknown.label == -1).all()
