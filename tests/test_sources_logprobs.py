"""API log-prob imports (fixtures follow the public OpenAI and vLLM response shapes), alignment, readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import bpe_tokenizer
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.errors import TokcalError
from tokcal.sketch import label_logprob, top_logprobs
from tokcal.sources import align_labels, read_conll, read_jsonl, read_pairs_jsonl, read_text
from tokcal.sources.logprobs import read_logprobs

FIX = Path(__file__).parent / "fixtures" / "logprobs"


def strings(t: TokenTable, row: int) -> list[str]:
    return t.token_strings(t.top_ids[row])


def test_openai_chat_with_tokenizer_vocabulary_and_aligned_reference():
    tok = bpe_tokenizer(vocab_size=600)  # big enough to hold every fixture token as one piece
    t = read_logprobs(FIX / "openai_chat.jsonl", tokenizer=tok)
    assert t.source["format"] == "openai-chat" and t.layout.kind == "uniform-remainder"
    assert t.vocab_size == len(tok) and t.k == 3 and len(t) == 5
    np.testing.assert_array_equal(t.sequence_id, [0, 0, 1, 1, 1])
    assert strings(t, 0) == ["In", "And", "The"] and strings(t, 1) == [" the", " God", " and"]
    assert t.top_ids[1, 0] == tok.convert_tokens_to_ids("Ġthe")  # bytes -> byte-level BPE id
    # the given log-probs come back at T = 1 (-9999 read as ~zero probability)
    np.testing.assert_allclose(top_logprobs(t.sketch)[0], [-0.31, -1.6, -3.2], atol=1e-5)
    np.testing.assert_allclose(top_logprobs(t.sketch)[1, :2], [-0.05, -3.4], atol=1e-5)
    assert (t.label[:2] == -1).all()  # generated, no reference: no gold label
    # line 2: hypothesis "And the said" vs reference "And God said" -> substitution in the middle
    ids = [tok.convert_tokens_to_ids(x) for x in ("And", "ĠGod", "Ġsaid")]
    np.testing.assert_array_equal(t.label[2:], ids)
    np.testing.assert_array_equal(t.correct[2:], [True, False, True])
    np.testing.assert_allclose(label_logprob(t.sketch)[2:], [-0.7, -2.0, -0.2], atol=1e-5)
    assert t.source["labels"] == "mixed: aligned,none"


def test_openai_completions_sentinels_and_teacher_forcing():
    t = read_logprobs(FIX / "openai_completions.jsonl", tokens_are_reference=True, vocab_size=1000)
    assert t.source["format"] == "openai-completions" and t.vocab_size == 1000
    assert len(t) == 4 and t.k == 2  # echoed first token skipped; k = fewest alternatives returned
    np.testing.assert_array_equal(t.position, [1, 2, 0, 1])
    assert t.token_strings(t.label) == [" the", " beginning", " God", " said"]
    assert strings(t, 1) == [" earth", " light"] and strings(t, 2) == [" the", " God"]  # re-sorted
    lp = label_logprob(t.sketch)
    np.testing.assert_allclose(lp[:3], [-0.4, -2.5, -1.1], atol=1e-5)
    # " said" came back as -inf: uniform-remainder estimate log(r / (V - k))
    r = 1 - np.exp(-0.3) - np.exp(-1.7)
    np.testing.assert_allclose(lp[3], np.log(r / (1000 - 2)), atol=1e-4)
    assert t.source["label_logprob_imputed"] == 1  # only " said"; " beginning" (outside the top-2) is known
    assert t.correct.tolist() == [True, False, False, False]


def test_vllm_prompt_logprobs_are_teacher_forced_with_ranks():
    t = read_logprobs(FIX / "vllm.jsonl", vocab_size=50)
    assert t.source["format"] == "vllm" and t.k == 2 and t.vocab_size == 50
    # line 1: prompt positions 1..3 (labels = prompt tokens), then the generated output; line 2: server shape
    np.testing.assert_array_equal(t.sequence_id, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(t.label, [17, 9, 3, -1, 8])
    np.testing.assert_array_equal(t.top_ids[:3], [[17, 4], [11, 12], [8, 3]])
    np.testing.assert_allclose(label_logprob(t.sketch)[[0, 1, 2, 4]], [-0.5, -6.0, -0.9, -3.25], atol=1e-5)
    assert t.vocab[11] == " earth" and t.vocab[21] == " created"
    assert t.correct.tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("line, message", [
    ('{"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -1, "top_logprobs": [{"token": "a"}]}]}}]}',
     r"bad\.jsonl:2: choices\[0\]\.logprobs\.content\[0\]\.top_logprobs\[0\]: missing 'logprob'"),
    ('{"choices": [{"logprobs": {"content": [{"token": "a", "logprob": 0.5, "top_logprobs": []}]}}]}',
     r"bad\.jsonl:2: .*content\[0\]: logprob 0\.5 is not a log-probability"),
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
])
def test_malformed_entries_are_reported_by_line(tmp_path, line, message):
    good = (FIX / "openai_chat.jsonl").read_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + line + "\n")
    with pytest.raises(TokcalError, match=message):
        read_logprobs(bad, format="openai-chat")


def test_malformed_vllm_and_unknown_tokens(tmp_path):
    bad = tmp_path / "v.jsonl"
    bad.write_text('{"prompt_token_ids": [1, 2], "prompt_logprobs": [null, {"x": {"logprob": -1}}]}\n')
    with pytest.raises(TokcalError, match=r"v\.jsonl:1: prompt_logprobs\[1\]: key 'x' is not a token id"):
        read_logprobs(bad)
    bad.write_text('{"choices": [{"logprobs": {"tokens": ["zzqx"], "token_logprobs": [-1], '
                   '"top_logprobs": [{"zzqx": -1}]}}]}\n')
    with pytest.raises(TokcalError, match=r"v\.jsonl:1: .*'zzqx' is not in the vocabulary"):
        read_logprobs(bad, tokenizer=bpe_tokenizer())
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(TokcalError, match=r"v\.jsonl:1: cannot tell the log-prob format"):
        read_logprobs(bad)


def test_cli_import_logprobs(tmp_path):
    out = tmp_path / "ds"
    r = CliRunner().invoke(app, ["import-logprobs", str(FIX / "vllm.jsonl"), "-o", str(out), "--vocab-size", "64"])
    assert r.exit_code == 0, r.output
    t = TokenTable.read_parquet(out)
    assert len(t) == 5 and t.vocab_size == 64 and t.layout.kind == "uniform-remainder"
    r = CliRunner().invoke(app, ["import-logprobs", str(FIX / "vllm.jsonl"), "-o", str(out)])
    assert r.exit_code == 2 and "already holds" in " ".join(r.output.split())


@pytest.mark.parametrize("hyp, ref, labels, ops, deleted", [
    ("abc", "abc", "abc", ["match"] * 3, []),
    ("abxc", "abc", ["a", "b", -1, "c"], ["match", "match", "ins", "match"], []),  # insertion
    ("ac", "abc", "ac", ["match", "match"], [1]),  # deletion of b
    ("axc", "abc", "abc", ["match", "sub", "match"], []),  # substitution
    ("xaby", "abcz", [-1, "a", "b", "z"], ["ins", "match", "match", "sub"], [2]),  # 3 edits beat 4 subs
    ("", "ab", [], [], [0, 1]),
    ("ab", "", [-1, -1], ["ins", "ins"], []),
])
def test_align_labels_hand_made_cases(hyp, ref, labels, ops, deleted):
    a = align_labels(list(hyp), list(ref))
    assert list(a.labels) == list(labels) and list(a.ops) == ops and a.deleted.tolist() == deleted
    assert a.correct.tolist() == [o == "match" for o in ops]
    assert a.distance == sum(o != "match" for o in ops) + len(deleted)


def test_align_labels_on_ids_and_edit_distance_is_minimal():
    a = align_labels([5, 6, 7, 8, 9], [5, 7, 8, 10, 9])
    assert a.labels.tolist() == [5, -1, 7, 8, 9] or a.labels.tolist() == [5, 7, 8, 10, 9]
    assert a.distance == 2  # delete 6, insert 10
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, r = rng.integers(0, 3, rng.integers(0, 8)).tolist(), rng.integers(0, 3, rng.integers(0, 8)).tolist()
        d = np.arange(len(r) + 1)  # textbook Levenshtein, one row at a time
        for i, x in enumerate(h, 1):
            prev, d = d, np.empty_like(d)
            d[0] = i
            for j, y in enumerate(r, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
        assert align_labels(h, r).distance == d[-1]


def test_readers_and_bad_lines(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first para\nline two\n\n\n second\n")
    assert [d.text for d in read_text(txt, split="paragraph")] == ["first para\nline two", " second"]
    assert len(read_text(txt)) == 1 and read_text(txt)[0].id == f"{txt}#0"
    js = tmp_path / "d.jsonl"
    js.write_text(json.dumps({"text": "hi", "domain": "bible"}) + "\n\n" + json.dumps({"text": 3}) + "\n")
    with pytest.raises(TokcalError, match=r"d\.jsonl:3: field 'text' must be a string"):
        read_jsonl(js, group_fields=["domain"])
    js.write_text(json.dumps({"text": "hi", "domain": "bible"}) + "\n" + json.dumps({"text": "yo"}) + "\n")
    with pytest.raises(TokcalError, match=r"d\.jsonl:2: missing group field 'domain'"):
        read_jsonl(js, group_fields=["domain"])
    assert read_jsonl(js)[1].text == "yo"
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n[1]\n")
    with pytest.raises(TokcalError, match=r"p\.jsonl:2: expected a JSON object"):
        read_pairs_jsonl(pairs, source_field="src", target_field="tgt")
    conll = tmp_path / "c.conll"
    conll.write_text("-DOCSTART- O\n\nGod NNP B-PER\nsaid VBD O\n\nJerusalem NNP B-LOC\n")
    s = read_conll(conll)
    assert [x.words for x in s] == [("God", "said"), ("Jerusalem",)] and s[0].tags == ("B-PER", "O")
    conll.write_text("God NNP B-PER\nsaid O\n")
    with pytest.raises(TokcalError, match=r"c\.conll:2: expected 3 columns"):
        read_conll(conll)


def test_vocab_size_from_tokens_seen_warns_and_is_recorded():
    """Without a tokenizer or vocab_size, V is the number of distinct tokens seen: said, and kept."""
    from tokcal.errors import TokcalWarning

    with pytest.warns(TokcalWarning, match=r"vllm\.jsonl: no tokenizer and no vocab_size.*: 23 ids"):
        t = read_logprobs(FIX / "vllm.jsonl")
    assert t.vocab_size == 23 and t.source["vocab_size_from"] == "largest server id + 1"
    with pytest.warns(TokcalWarning, match=r"chat\.jsonl: no tokenizer and no vocab_size.*: 9 ids"):
        t = read_logprobs(FIX / "openai_chat.jsonl")
    assert t.vocab_size == 9 and t.source["vocab_size_from"] == "distinct tokens seen"
    assert read_logprobs(FIX / "vllm.jsonl", vocab_size=50).source["vocab_size_from"] == "given"
    tok = bpe_tokenizer(vocab_size=600)
    t = read_logprobs(FIX / "openai_chat.jsonl", tokenizer=tok)
    assert t.source["vocab_size_from"] == "tokenizer"
    assert t.vocabulary.convention == "byte-level" and t.vocabulary.pieces[t.top_ids[1, 0]] == "Ġthe"
