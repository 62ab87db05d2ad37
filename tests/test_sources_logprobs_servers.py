"""Log-prob imports of every server family, on fixtures taken from each server's public source and
tests (tests/fixtures/logprobs/README.md names the server and commit of each); the expected
numbers are worked out by hand from the fixture values."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import bpe_tokenizer
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.errors import TokcalError
from tokcal.sketch import label_logprob, top_logprobs
from tokcal.sources.logprobs import read_logprobs, tiktoken_encoding

FIX = Path(__file__).parent / "fixtures" / "logprobs"


def quiet(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = read_logprobs(*args, **kwargs)
    return t, [str(w.message) for w in caught]


# -- vLLM: the silently-wrong cases ------------------------------------------------------------

def test_vllm_chat_prompt_logprobs_at_the_top_level_are_teacher_forced():
    t, _ = quiet(FIX / "vllm-ec3b890c_chat_prompt_logprobs.jsonl", vocab_size=50)
    assert t.source["format"] == "vllm" and t.k == 2 and len(t) == 4
    np.testing.assert_array_equal(t.sequence_id, [0, 0, 0, 1])  # the prompt, then the generated choice
    np.testing.assert_array_equal(t.label, [17, 9, 3, -1])
    np.testing.assert_array_equal(t.top_ids[:3], [[17, 4], [11, 12], [8, 3]])
    np.testing.assert_allclose(label_logprob(t.sketch)[:3], [-0.5, -6.0, -0.9], atol=1e-5)
    # the generated token has no id: a new one above the largest server id, its text kept
    assert t.vocab[t.top_ids[3, 0]] == " created" and t.top_ids[3, 0] > 17
    assert t.correct[:3].tolist() == [True, False, False]


def test_vllm_completions_echo_reads_the_prompt_once():
    t, _ = quiet(FIX / "vllm-ec3b890c_completions_echo.jsonl", vocab_size=50)
    # 3 prompt positions (from prompt_logprobs, ids) + 1 generated; the echoed copy is not read again
    assert len(t) == 4 and t.k == 2
    np.testing.assert_array_equal(t.label, [17, 9, 3, -1])
    np.testing.assert_array_equal(t.position, [1, 2, 3, 4])
    assert t.token_strings(t.top_ids[3]) == [" created", " said"]
    np.testing.assert_allclose(top_logprobs(t.sketch)[3], [-0.3, -2.4], atol=1e-5)


def test_vllm_token_ids_and_sampled_token_first_is_resorted():
    t, msgs = quiet(FIX / "vllm-ec3b890c_token_ids.jsonl", vocab_size=100)
    # position 1 lists the sampled token_id:30 (-1.9) before 31 (-0.4) and 32 (-1.2): after the
    # re-sort the sampled token is last, so only 31, 32 are certainly the best two -> k = 2
    assert t.k == 2 and t.source["resorted_positions"] == 1
    np.testing.assert_array_equal(t.top_ids, [[21, 22], [31, 32]])
    np.testing.assert_allclose(top_logprobs(t.sketch)[1], [-0.4, -1.2], atol=1e-5)
    assert any("re-sorted" in m for m in msgs)
    t2, _ = quiet(FIX / "vllm-ec3b890c_token_ids.jsonl", tokenizer=bpe_tokenizer(vocab_size=600),
                  tokens_are_reference=True)
    np.testing.assert_array_equal(t2.top_ids, t.top_ids)  # token_id:N is the id N, also with a tokenizer
    np.testing.assert_array_equal(t2.label, [21, 30])
    np.testing.assert_allclose(label_logprob(t2.sketch), [-0.3, -1.9], atol=1e-5)  # 30 is known though outside


def test_partial_utf8_pieces_never_merge_and_never_guess():
    t, msgs = quiet(FIX / "vllm-ec3b890c_fffd.jsonl")
    assert t.k == 3  # two different "\ufffd" alternatives stay two (merging them made k = 2)
    assert len(set(t.top_ids[0].tolist())) == 3
    assert any("U+FFFD" in m for m in msgs)
    with pytest.raises(TokcalError, match=r"fffd\.jsonl:1: .*partial UTF-8 piece .*return_tokens_as_token_ids"):
        read_logprobs(FIX / "vllm-ec3b890c_fffd.jsonl", tokenizer=bpe_tokenizer(vocab_size=600))


def test_token_identity_by_bytes(tmp_path):
    tok = bpe_tokenizer(vocab_size=600)
    # two pieces shown as "\ufffd" whose real bytes differ (OpenAI sends them): two ids, the right ones
    e = {"token": "\ufffd", "logprob": -0.5, "bytes": [240], "top_logprobs": [
        {"token": "\ufffd", "logprob": -0.5, "bytes": [240]}, {"token": "\ufffd", "logprob": -1.5, "bytes": [226]}]}
    f = tmp_path / "b.jsonl"
    f.write_text(json.dumps({"choices": [{"index": 0, "message": {}, "logprobs": {"content": [e]}}]}) + "\n")
    t = read_logprobs(f, tokenizer=tok)
    assert t.top_ids[0].tolist() == [tok.convert_tokens_to_ids("ð"), tok.convert_tokens_to_ids("â")]
    t = read_logprobs(f)
    assert t.k == 2 and len(set(t.top_ids[0].tolist())) == 2


# -- TGI ---------------------------------------------------------------------------------------

def test_tgi_generate_with_top_tokens(tmp_path):
    lines = (FIX / "tgi-v3.3.7_generate.jsonl").read_text().splitlines()
    f = tmp_path / "tgi.jsonl"
    f.write_text(lines[1] + "\n")
    t, msgs = quiet(f, vocab_size=250880, tokens_are_reference=True)
    assert t.source["format"] == "tgi" and t.k == 3 and len(t) == 3
    np.testing.assert_array_equal(t.top_ids, [[578, 447, 15], [11580, 5608, 3913], [1669, 578, 447]])
    np.testing.assert_array_equal(t.label, [578, 5608, 7735])
    # " fond" (-2.4199219) is outside the top 3 but its log-prob is known: not imputed
    np.testing.assert_allclose(label_logprob(t.sketch), [-1.7822266, -2.4882812, -2.4199219], atol=1e-5)
    assert t.correct.tolist() == [True, False, False] and t.source["label_logprob_imputed"] == 0
    assert t.token_strings([5608]) == [" faire"]
    assert any("10 TGI prefill position(s)" in m for m in msgs)  # reported, not silently dropped


def test_tgi_without_top_tokens_and_v1_completions_are_clear_errors():
    with pytest.raises(TokcalError, match=r"no alternatives.*top_n_tokens"):
        quiet(FIX / "tgi-v3.3.7_generate.jsonl")
    with pytest.raises(TokcalError, match=r"v1_completions\.jsonl:1: choices\[0\]\.logprobs: a list of numbers"):
        read_logprobs(FIX / "tgi-v3.3.7_v1_completions.jsonl")


# -- llama.cpp ---------------------------------------------------------------------------------

def test_llamacpp_n_probs():
    t = read_logprobs(FIX / "llamacpp-f3beb22b_n_probs.jsonl", vocab_size=32000, tokens_are_reference=True)
    assert t.source["format"] == "llama.cpp" and t.k == 3 and t.source["probabilities"] == "model"
    np.testing.assert_array_equal(t.top_ids, [[278, 263, 445], [18356, 8437, 3186]])
    np.testing.assert_array_equal(t.label, [278, 8437])
    np.testing.assert_allclose(label_logprob(t.sketch), [-0.11, -1.4], atol=1e-5)
    assert t.correct.tolist() == [True, False]


def test_llamacpp_post_sampling_probs():
    t, msgs = quiet(FIX / "llamacpp-f3beb22b_post_sampling.jsonl", vocab_size=32000)
    assert t.k == 2 and t.source["probabilities"] == "post-sampling"  # top_probs may be shorter than n_probs
    np.testing.assert_allclose(top_logprobs(t.sketch), np.log([[0.875, 0.125], [0.6, 0.3]]), atol=1e-5)
    assert any("after the sampler chain" in m for m in msgs)


# -- Ollama ------------------------------------------------------------------------------------

def test_ollama_generate_and_streamed_chat():
    t = read_logprobs(FIX / "ollama-v0.33.0-rc2_generate_and_chat_stream.jsonl", tokens_are_reference=True)
    assert t.source["format"] == "ollama" and t.k == 2 and len(t) == 4
    np.testing.assert_array_equal(t.sequence_id, [0, 0, 1, 1])  # the chunks of the chat stream are one answer
    assert t.token_strings(t.label) == ["Hello", "!", "Hi", " there"]
    assert t.token_strings(t.top_ids[2]) == ["Hello", "Hi"]
    assert t.correct.tolist() == [True, True, False, True]
    np.testing.assert_allclose(label_logprob(t.sketch), [-0.05, -0.3, -1.0, -0.2], atol=1e-5)


def test_ollama_without_top_logprobs_asks_for_them():
    with pytest.raises(TokcalError, match=r"no alternatives.*Ollama: logprobs=true with top_logprobs >= 1"):
        read_logprobs(FIX / "ollama-v0.33.0-rc2_no_top_logprobs.jsonl")


# -- OpenAI wrappers and layouts ---------------------------------------------------------------

def test_openai_streamed_chunks_accumulate_by_id_and_index():
    t = read_logprobs(FIX / "openai-python-e43b4224_stream_top2.jsonl", tokens_are_reference=True)
    assert len(t) == 4 and t.k == 2  # two interleaved streams; the second ends without finish_reason
    np.testing.assert_array_equal(t.sequence_id, [0, 0, 1, 1])
    assert t.token_strings(t.label) == ["Foo", "!", "Foo", "!"]
    np.testing.assert_allclose(label_logprob(t.sketch), [-0.0025094282, -0.26638845] * 2, atol=1e-6)
    # the verbatim server-sent events of the openai-python test asked for no top_logprobs
    with pytest.raises(TokcalError, match=r"no alternatives.*top_logprobs >= 1"):
        read_logprobs(FIX / "openai-python-e43b4224_stream_no_top.sse")


def test_batch_output_pretty_document_and_array_match_jsonl():
    ref = read_logprobs(FIX / "openai_chat.jsonl")
    for name in ("openai_chat_array.json",):
        t = read_logprobs(FIX / name)
        np.testing.assert_array_equal(t.top_ids, ref.top_ids)
        np.testing.assert_allclose(top_logprobs(t.sketch), top_logprobs(ref.sketch))
    t = read_logprobs(FIX / "openai_chat_pretty.json")
    np.testing.assert_array_equal(t.top_ids, ref.top_ids[:2])
    t, msgs = quiet(FIX / "openai_batch_output.jsonl")
    np.testing.assert_array_equal(t.top_ids, ref.top_ids)
    assert t.source["skipped_responses"] == 2
    assert any("2 response(s) without usable log-probs" in m and "line 2: batch request 'request-2' failed" in m
               and "line 3: logprobs is null" in m for m in msgs)
    with pytest.raises(TokcalError, match=r"batch_output\.jsonl:2: batch request 'request-2' failed"):
        read_logprobs(FIX / "openai_batch_output.jsonl", strict=True)


def test_mixed_log_skips_with_one_warning_or_strict_error():
    t, msgs = quiet(FIX / "openai_chat_mixed.jsonl")
    assert len(t) == 5 and t.source["skipped_responses"] == 2
    assert [m for m in msgs if "without usable" in m] == [
        f"{FIX / 'openai_chat_mixed.jsonl'}: 2 response(s) without usable log-probs (line 2: logprobs is null; "
        "line 3: refusal); skipped"]
    with pytest.raises(TokcalError, match=r"mixed\.jsonl:2: logprobs is null \(strict"):
        read_logprobs(FIX / "openai_chat_mixed.jsonl", strict=True)


def test_auto_format_names_every_format_it_tried(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"hello": 1}\n')
    with pytest.raises(TokcalError) as e:
        read_logprobs(f)
    for name in ("vllm", "tgi", "llama.cpp", "ollama", "openai-chat", "openai-completions"):
        assert name in str(e.value)


@pytest.mark.parametrize("name, fmt", [
    ("vllm-ec3b890c_chat_prompt_logprobs.jsonl", "vllm"), ("llamacpp-f3beb22b_n_probs.jsonl", "llama.cpp"),
    ("ollama-v0.33.0-rc2_generate_and_chat_stream.jsonl", "ollama"), ("openai_batch_output.jsonl", "openai-chat"),
    ("openai_completions.jsonl", "openai-completions"),
])
def test_auto_format_picks_the_server(name, fmt):
    t, _ = quiet(FIX / name, vocab_size=32000)
    assert t.source["format"] == fmt


# -- tiktoken ----------------------------------------------------------------------------------

def test_tiktoken_cl100k_base_maps_bytes_to_real_ids(tmp_path):
    enc = tiktoken_encoding("cl100k_base")
    t = read_logprobs(FIX / "openai_chat.jsonl", tokenizer=enc)
    assert t.vocab_size == enc.n_vocab == 100277 and t.source["vocab"].startswith("tiktoken:cl100k_base")
    assert t.top_ids[1].tolist() == [enc.encode_single_token(b" the"), enc.encode_single_token(b" God"),
                                     enc.encode_single_token(b" and")]
    assert t.token_strings(t.top_ids[0]) == ["In", "And", "The"]
    # a reference text is tokenised by the encoding itself
    f = tmp_path / "r.jsonl"
    obj = json.loads((FIX / "openai_chat.jsonl").read_text().splitlines()[1])
    del obj["reference_tokens"]
    obj["reference"] = "And God said"
    f.write_text(json.dumps(obj) + "\n")
    t = read_logprobs(f, tokenizer=enc)
    assert t.label.tolist() == enc.encode_ordinary("And God said")
    with pytest.raises(TokcalError, match=r"no encoding 'nosuch_base'; known: .*cl100k_base"):
        tiktoken_encoding("nosuch_base")


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_import_logprobs_formats_strict_and_tiktoken(tmp_path):
    r = CliRunner().invoke(app, ["import-logprobs", str(FIX / "openai_chat_mixed.jsonl"), "-o", str(tmp_path / "a"),
                                 "--vocab", "cl100k_base"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "warning:" in out and "2 response(s) without usable log-probs" in out and "format: openai-chat" in out
    t = TokenTable.read_parquet(tmp_path / "a")
    assert t.vocab_size == 100277 and len(t) == 5
    r = CliRunner().invoke(app, ["import-logprobs", str(FIX / "openai_chat_mixed.jsonl"), "-o", str(tmp_path / "b"),
                                 "--strict"])
    assert r.exit_code == 2 and "error:" in r.output and "strict" in r.output
    r = CliRunner().invoke(app, ["import-logprobs", str(FIX / "tgi-v3.3.7_v1_completions.jsonl"),
                                 "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "top_n_tokens" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["import-logprobs", str(FIX / "llamacpp-f3beb22b_n_probs.jsonl"), "-o",
                                 str(tmp_path / "d"), "--format", "llama.cpp", "--vocab-size", "32000"])
    assert r.exit_code == 0, r.output
    assert TokenTable.read_parquet(tmp_path / "d").top_ids[:, 0].tolist() == [278, 18356]


def test_vllm_text_tokens_take_the_server_id_of_the_same_text(tmp_path):
    # the generated " a" has no id, but the prompt names id 4 " a": one token, not two
    obj = json.loads((FIX / "vllm-ec3b890c_chat_prompt_logprobs.jsonl").read_text())
    content = obj["choices"][0]["logprobs"]["content"][0]
    content["top_logprobs"].append({"token": " a", "logprob": -3.0, "bytes": list(b" a")})
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps(obj) + "\n")
    t, _ = quiet(f, vocab_size=50)
    assert t.k == 2 and t.top_ids[3].tolist() == [18, 19]  # new ids above the largest server id
    obj["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [
        {"token": " a", "logprob": -0.1, "bytes": list(b" a")}, {"token": " said", "logprob": -0.2}]
    f.write_text(json.dumps(obj) + "\n")
    t, _ = quiet(f, vocab_size=50)
    assert t.top_ids[3].tolist() == [4, 19]
    obj["prompt_logprobs"][3]["8"]["decoded_token"] = " a"  # two ids with that text: no guess
    f.write_text(json.dumps(obj) + "\n")
    with pytest.raises(TokcalError, match=r"token ' a' comes without an id .* ids \[4, 8\] all have that text"):
        read_logprobs(f, vocab_size=50)


def test_one_token_named_by_id_and_by_text_in_one_position_is_one_alternative(tmp_path):
    # vLLM legacy logprobs with token_ids: the own token by id (21), an alternative by its text
    obj = {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [{
        "index": 0, "text": " created", "prompt_logprobs": [None, {"21": {"logprob": -0.5, "rank": 1,
                                                                        "decoded_token": " created"},
                                                                 "7": {"logprob": -1.0, "rank": 2}}],
        "prompt_token_ids": [5, 21],
        "logprobs": {"tokens": ["In", " created", " said"], "token_logprobs": [None, -0.5, -0.3],
                     "token_ids": [5, 21, 22],
                     "top_logprobs": [None, {" created": -0.5}, {" said": -0.3, " created": -1.5, " was": -2.0}]}}]}
    f = tmp_path / "dup.jsonl"
    f.write_text(json.dumps(obj) + "\n")
    t, _ = quiet(f, vocab_size=50)
    assert len(t) == 2 and t.k == 2  # prompt position 1; generated " said" (the echo is not read twice)
    assert t.top_ids[1].tolist() == [22, 21]  # " said" by id and by text is one alternative, " created" is 21
    np.testing.assert_allclose(top_logprobs(t.sketch)[1], [-0.3, -1.5], atol=1e-5)


def test_tgi_generate_stream_events_are_one_sequence():
    t = read_logprobs(FIX / "tgi-v3.3.7_generate_stream.sse", vocab_size=250880, tokens_are_reference=True)
    assert t.source["format"] == "tgi" and t.k == 3 and t.n_sequences == 1
    np.testing.assert_array_equal(t.top_ids, [[578, 447, 15], [11580, 5608, 3913], [1669, 578, 447]])
    np.testing.assert_allclose(label_logprob(t.sketch), [-1.7822266, -2.4882812, -2.4199219], atol=1e-5)


def test_openai_completions_stream_chunks_are_one_sequence(tmp_path):
    # the legacy stream: one text_completion chunk per token, the same id, finish_reason on the last
    lines = []
    for i, (tok, lp, top) in enumerate([(" God", -1.1, {" God": -1.1, " the": -0.6}),
                                        (" said", -0.3, {" said": -0.3, " was": -1.7})]):
        lines.append(json.dumps({"id": "cmpl-s", "object": "text_completion", "created": 1, "model": "davinci-002",
                                 "choices": [{"text": tok, "index": 0, "logprobs": {
                                     "tokens": [tok], "token_logprobs": [lp], "top_logprobs": [top],
                                     "text_offset": [i]}, "finish_reason": None if i == 0 else "length"}]}))
    f = tmp_path / "s.jsonl"
    f.write_text("data: " + "\n\ndata: ".join(lines) + "\n\ndata: [DONE]\n")
    t, _ = quiet(f, vocab_size=100, tokens_are_reference=True)
    assert t.n_sequences == 1 and t.position.tolist() == [0, 1]
    assert t.token_strings(t.label) == [" God", " said"] and t.correct.tolist() == [False, True]
