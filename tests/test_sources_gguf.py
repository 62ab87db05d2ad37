"""GGUF models: a tiny GPT-2 written to GGUF here with the ``gguf`` package, loaded back through
transformers (``gguf_file=``), and the collected table checked against a brute-force forward of the
original weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_fixtures import bpe_tokenizer, tiny_gpt2
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.errors import TokcalError
from tokcal.sketch import label_logprob, top_logprobs
from tokcal.sources import hf

gguf = pytest.importorskip("gguf")

TEXT = "In the beginning God created the heaven and the earth. And God said, Let there be light."
# GGUF stores these GPT-2 matrices as [out, in]; Hugging Face's Conv1D keeps [in, out]
# (llama.cpp's convert_hf_to_gguf.py transposes them, transformers' GPT2TensorProcessor undoes it).
_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def write_gguf(model, tokenizer, path: Path, q8: bool = False) -> dict[str, np.ndarray]:
    """The GGUF file llama.cpp's converter would write for a GPT-2: ``gpt2.*`` hyper-parameters,
    ``tokenizer.ggml.*`` (byte-level pieces, merges, token types, BOS/EOS) and tensors under the
    names of ``gguf.get_tensor_name_map`` (the map transformers reads back): F32, or with ``q8``
    the matrices quantised to Q8_0 as ``llama-quantize`` does (1-D tensors stay F32). Returns the
    Hugging Face state dict those tensors stand for (dequantised with ``gguf.quants``)."""
    cfg = model.config
    arch = gguf.MODEL_ARCH.GPT2
    names = gguf.get_tensor_name_map(arch, cfg.n_layer)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    pieces = [None] * len(tokenizer)
    for piece, i in tokenizer.get_vocab().items():
        pieces[i] = piece
    w.add_token_list(pieces)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    special = set(tokenizer.all_special_tokens)
    w.add_token_types([gguf.TokenType.CONTROL if p in special else gguf.TokenType.NORMAL for p in pieces])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    stands_for = {}
    for name, t in model.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers; the head is tied to the embedding
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        a = t.detach().numpy().astype(np.float32)
        g = np.ascontiguousarray(a.T) if new.endswith(_TRANSPOSED) else a
        if q8 and g.ndim == 2:
            qt = gguf.GGMLQuantizationType.Q8_0
            data = gguf.quants.quantize(g, qt)
            w.add_tensor(new, data, raw_shape=data.shape, raw_dtype=qt)
            g = gguf.quants.dequantize(data, qt)
        else:
            w.add_tensor(new, g)
        stands_for[name] = np.ascontiguousarray(g.T) if new.endswith(_TRANSPOSED) else g
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stands_for


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    tok = bpe_tokenizer(vocab_size=400)
    model = tiny_gpt2(len(tok), n_positions=1024, seed=3).eval()  # llama.cpp's GPT-2 reader wants n_ctx
    d = tmp_path_factory.mktemp("gguf")
    write_gguf(model, tok, d / "tiny-f32.gguf")
    return d, model, tok


def test_load_model_reads_gguf_weights_and_tokenizer(gguf_dir):
    d, model, tok = gguf_dir
    m2, t2 = hf.load_model(d, "causal", gguf_file="tiny-f32.gguf")
    assert t2(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(m2(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    with pytest.raises(TokcalError, match=r"nope\.gguf: no such GGUF file"):
        hf.load_model(d, "causal", gguf_file="nope.gguf")
    with pytest.raises(TokcalError, match=r"cannot load a causal model with safetensors weights"):
        hf.load_model(d, "causal")  # a folder with only a GGUF file has no safetensors


def test_collect_gguf_matches_brute_force_forward(gguf_dir, tmp_path):
    d, model, tok = gguf_dir
    docs = tmp_path / "docs.txt"
    docs.write_text(TEXT)
    out = tmp_path / "ds"
    r = CliRunner().invoke(app, ["collect", str(d), str(docs), "-o", str(out), "--gguf-file", "tiny-f32.gguf",
                                 "--device", "cpu", "--top-k", "8"])
    assert r.exit_code == 0, r.output
    t = TokenTable.read_parquet(out)
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1).numpy()  # predicts tokens 1..n-1
    gold = ids[0, 1:].numpy()
    assert len(t) == len(gold)
    np.testing.assert_array_equal(t.label, gold)
    np.testing.assert_allclose(label_logprob(t.sketch), lp[np.arange(len(gold)), gold], atol=2e-5)
    ref_top = np.argsort(-lp, axis=1, kind="stable")[:, :8]
    np.testing.assert_allclose(top_logprobs(t.sketch), np.take_along_axis(lp, ref_top, 1), atol=2e-5)
    np.testing.assert_array_equal(np.sort(t.top_ids[:, 0]), np.sort(ref_top[:, 0]))


def test_annotate_and_generate_read_gguf(gguf_dir, tmp_path):
    from tokcal.calibrators import Temperature

    d, _, _ = gguf_dir
    cal = Temperature(temperature=1.2).save(tmp_path / "cal.json")
    r = CliRunner().invoke(app, ["annotate", str(d), "-c", str(cal), "--text", "In the beginning",
                                 "--gguf-file", "tiny-f32.gguf"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["generate", str(d), "-c", str(cal), "-p", "And God", "--max-new-tokens", "3",
                                 "--greedy", "--gguf-file", "tiny-f32.gguf"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["generate", str(d), "-c", str(cal), "-p", "And", "--gguf-file", "missing.gguf"])
    assert r.exit_code == 2 and "no such GGUF file" in r.output


def test_q8_0_gguf_is_dequantised_and_collected_exactly(tmp_path):
    tok = bpe_tokenizer(vocab_size=400)
    model = tiny_gpt2(len(tok), n_positions=1024, seed=5).eval()
    weights = write_gguf(model, tok, tmp_path / "tiny-q8_0.gguf", q8=True)
    deq = tiny_gpt2(len(tok), n_positions=1024, seed=5).eval()  # the same model with the dequantised weights
    deq.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    deq.tie_weights()
    assert not torch.equal(deq.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)
    m2, _ = hf.load_model(tmp_path, "causal", gguf_file="tiny-q8_0.gguf")
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    t = hf.collect_causal(m2, tok, [TEXT], top_k=8, device="cpu")
    with torch.no_grad():
        lp = torch.log_softmax(deq(ids).logits[0, :-1].double(), -1).numpy()
        lp_f32 = torch.log_softmax(model(ids).logits[0, :-1].double(), -1).numpy()
    gold = ids[0, 1:].numpy()
    got = label_logprob(t.sketch)
    np.testing.assert_allclose(got, lp[np.arange(len(gold)), gold], atol=2e-5)
    assert np.abs(got - lp_f32[np.arange(len(gold)), gold]).max() > 1e-3  # quantisation shows: not the F32 model
