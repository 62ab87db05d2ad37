"""tokcal.annotate on a tiny real GPT-2: spans tile the text, probabilities match brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_generate_lm import CORPUS, teacher_forced_table, tiny_gpt2, tiny_tokenizer

import tokcal
from tokcal.calibrators import Temperature
from tokcal.calibrators.conformal import ConformalTokenSets
from tokcal.integrations.abstain import Abstainer
from tokcal.integrations.annotate import spans_from_offsets

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokens, naïve café 東京 🙂 and  double  spaces\n\tand a trailing space ",
    " leading space",
    "x",
    "🙂🙂🙂",
]


@pytest.fixture(scope="module")
def lm():
    return tiny_gpt2(seed=1), tiny_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_spans_reconstruct_the_text_exactly(lm, text):
    model, tok = lm
    ann = tokcal.annotate(model, tok, text, Temperature(temperature=1.3))
    assert "".join(ann.token_text(i) for i in range(len(ann))) == text
    assert len(ann) == len(tok(text, add_special_tokens=False)["input_ids"])
    assert (ann.spans[1:, 0] == ann.spans[:-1, 1]).all() and ann.spans[0, 0] == 0 and ann.spans[-1, 1] == len(text)


def test_spans_from_overlapping_offsets():
    # byte-level tokens of one multi-byte character share an offset; trimmed whitespace is kept
    spans = spans_from_offsets([(0, 1), (1, 3), (2, 3), (4, 6)], 8)
    assert spans.tolist() == [[0, 1], [1, 3], [3, 3], [3, 8]]


def test_probabilities_match_brute_force(lm):
    model, tok = lm
    text, t = TEXTS[1], 0.7
    ann = tokcal.annotate(model, tok, text, Temperature(temperature=t))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        z = model(input_ids=torch.tensor([[tok.bos_token_id, *ids]])).logits[0, :-1].double()
    p_raw, p_cal = torch.softmax(z, -1).numpy(), torch.softmax(z / t, -1).numpy()
    rows = np.arange(len(ids))
    np.testing.assert_allclose(ann.raw_prob, p_raw[rows, ids], rtol=1e-4)
    np.testing.assert_allclose(ann.prob, p_cal[rows, ids], rtol=1e-4)
    np.testing.assert_allclose(ann.confidence, p_cal.max(1), rtol=1e-4)
    assert (ann.top_id == p_cal.argmax(1)).all()
    ent = -(p_cal * np.log(p_cal)).sum(1)
    np.testing.assert_allclose(ann.entropy, ent, rtol=1e-4)
    assert ann.position.tolist() == list(range(1, len(ids) + 1))


def test_generation_is_annotated_from_raw_logits(lm):
    model, tok = lm
    t = 0.8
    torch.manual_seed(2)
    gen = tokcal.generate(model, tok, ["The quick", "A"], Temperature(temperature=t), max_new_tokens=8,
                          do_sample=True, temperature=0.6, top_k=20, return_dict_in_generate=True,
                          output_logits=True, output_scores=True)
    anns = tokcal.annotate(model, tok, gen, Temperature(temperature=t))
    assert len(anns) == 2
    prompt_len = gen.sequences.shape[1] - len(gen.logits)
    for r, ann in enumerate(anns):
        new = gen.sequences[r, prompt_len:prompt_len + len(ann)]
        assert ann.text == tok.decode(new, skip_special_tokens=False)
        assert "".join(ann.token_text(i) for i in range(len(ann))) == ann.text
        # brute force: teacher-force the whole generated row again (prompt without padding)
        mask = torch.ones(gen.sequences.shape[1], dtype=torch.bool)
        mask[: prompt_len] = gen.sequences[r, :prompt_len] != tok.pad_token_id
        row = gen.sequences[r][mask]
        n_prompt = int(mask[:prompt_len].sum())
        with torch.no_grad():
            z = model(input_ids=row[None]).logits[0].double()
        steps = torch.arange(len(ann)) + n_prompt - 1
        p = torch.softmax(z[steps] / t, -1)
        np.testing.assert_allclose(ann.prob, p[torch.arange(len(ann)), new].numpy(), rtol=1e-3)
        np.testing.assert_allclose(ann.raw_prob, torch.softmax(z[steps], -1)[torch.arange(len(ann)), new].numpy(),
                                   rtol=1e-3)
        assert ann.position.tolist() == list(range(n_prompt, n_prompt + len(ann)))
        # the processed scores (calibration + temperature 0.6 + top-20) would give other numbers
        processed = torch.softmax(gen.scores[0][r].double(), -1)[new[0]].item()
        assert abs(processed - ann.prob[0]) > 1e-4


def test_abstainer_flags_and_review_spans(lm):
    model, tok = lm
    text = TEXTS[0]
    ann0 = tokcal.annotate(model, tok, text, Temperature(temperature=1.0))
    thr = float(np.median(ann0.confidence))
    ann = tokcal.annotate(model, tok, text, Temperature(temperature=1.0), abstainer=Abstainer(thr))
    assert (ann.flagged == (ann.confidence < thr)).all() and ann.flagged.any() and not ann.flagged.all()
    covered = np.zeros(len(text), bool)
    for s, e in ann.review_spans:
        covered[s:e] = True
    for i in range(len(ann)):
        s, e = ann.spans[i]
        assert covered[s:e].all() == bool(ann.flagged[i]) or s == e
    d = ann.to_dict()
    assert d["tokens"][0]["text"] == ann.token_text(0) and "flagged" in d["tokens"][0]


def test_review_spans_merge_adjacent_flags():
    spans = [[0, 2], [2, 5], [5, 6], [6, 9], [9, 12]]
    flags = [True, True, False, True, False]
    assert Abstainer.review_spans(flags, spans) == [(0, 5), (6, 9)]
    assert Abstainer.review_spans(flags, spans, max_gap=2) == [(0, 9)]


def test_conformal_set_sizes_match_brute_force(lm):
    model, tok = lm
    table = teacher_forced_table(model, tok, CORPUS[:5])
    conf = ConformalTokenSets(alpha=0.5).fit(table)
    text = TEXTS[0]
    ann = tokcal.annotate(model, tok, text, Temperature(temperature=1.0), conformal=conf)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = torch.softmax(model(input_ids=torch.tensor([[tok.bos_token_id, *ids]])).logits[0, :-1].double(), -1)
    # LAC sets: tokens with 1 - p_j <= threshold, listed among the table's top-k ids
    brute = np.minimum(((1.0 - p.numpy()) <= conf.threshold).sum(1), table.k)
    assert (ann.set_size == brute).all() and ann.set_size.max() > 1
    assert ann.tokens[0]["set_size"] == int(brute[0])
