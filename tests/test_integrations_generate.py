"""CalibratedLogitsProcessor and tokcal.generate on a tiny real GPT-2 built in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from tiny_generate_lm import teacher_forced_table, tiny_gpt2, tiny_tokenizer
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

import tokcal
from tokcal.calibrators import Temperature
from tokcal.calibrators.adaptive import AdaptiveTemperature
from tokcal.calibrators.selective import Selective
from tokcal.calibrators.toplabel import HistogramBinning
from tokcal.errors import TokcalError
from tokcal.integrations.hf_generate import CalibratedLogitsProcessor, generate
from tokcal.probs import token_probs

PROMPTS = ["The quick brown", "A calibrated model knows", "Tokens"]


@pytest.fixture(scope="module")
def lm():
    return tiny_gpt2(seed=0), tiny_tokenizer()


def _batch(tok, prompts=PROMPTS):
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True)


def _procs(cal, **kw):
    return LogitsProcessorList([CalibratedLogitsProcessor(cal, **kw)])


def test_identity_calibrator_is_bit_identical_greedy(lm):
    model, tok = lm
    enc = _batch(tok)
    plain = model.generate(**enc, max_new_tokens=12, do_sample=False)
    cal = model.generate(**enc, max_new_tokens=12, do_sample=False,
                         logits_processor=_procs(Temperature(temperature=1.0)))
    assert torch.equal(plain, cal)


@pytest.mark.parametrize("warpers", [{}, {"top_p": 0.9, "temperature": 0.8}, {"top_k": 20, "min_p": 0.01}])
def test_identity_calibrator_is_bit_identical_seeded_sampling(lm, warpers):
    model, tok = lm
    enc = _batch(tok)
    torch.manual_seed(7)
    plain = model.generate(**enc, max_new_tokens=12, do_sample=True, num_return_sequences=2, **warpers)
    torch.manual_seed(7)
    cal = model.generate(**enc, max_new_tokens=12, do_sample=True, num_return_sequences=2, **warpers,
                         logits_processor=_procs(Temperature(temperature=1.0)))
    assert torch.equal(plain, cal)


def test_tokcal_generate_identity_matches_plain_generate(lm):
    model, tok = lm
    enc = _batch(tok)
    torch.manual_seed(3)
    plain = model.generate(**enc, max_new_tokens=8, do_sample=True, top_p=0.95)
    torch.manual_seed(3)
    texts = tokcal.generate(model, tok, PROMPTS, Temperature(temperature=1.0), max_new_tokens=8,
                            do_sample=True, top_p=0.95)
    assert texts == tok.batch_decode(plain[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    one = generate(model, tok, PROMPTS[0], Temperature(temperature=1.0), max_new_tokens=4, do_sample=False)
    assert isinstance(one, str)


@pytest.mark.parametrize("t", [0.5, 1.7])
def test_fixed_temperature_scores_equal_transformers_warper(lm, t):
    model, tok = lm
    enc = _batch(tok)
    out = model.generate(**enc, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                         output_scores=True, output_logits=True, logits_processor=_procs(Temperature(temperature=t)))
    warper = TemperatureLogitsWarper(t)
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores, strict=True)):
        ids = out.sequences[:, : enc["input_ids"].shape[1] + step]
        # tokcal subtracts the row maximum before dividing by T: the same scores up to a per-row shift
        torch.testing.assert_close(processed, _shifted(warper(ids, raw.clone())), rtol=1e-6, atol=1e-6)
    # the processor alone, on arbitrary logits
    z = torch.randn(5, 300) * 4
    proc = CalibratedLogitsProcessor(Temperature(temperature=t), input_kind="logits")
    torch.testing.assert_close(proc(torch.zeros(5, 3, dtype=torch.long), z), _shifted(warper(None, z.clone())),
                               rtol=1e-6, atol=1e-6)


def _shifted(scores: torch.Tensor) -> torch.Tensor:
    return scores - scores.amax(dim=-1, keepdim=True)


def _next_token_counts(model, tok, procs, n, **kw):
    enc = tok(["The quick brown"], return_tensors="pt")
    torch.manual_seed(11)
    kw.setdefault("top_k", 0)  # the generation config default (top_k=50) would cut the tail
    out = model.generate(**enc, max_new_tokens=1, do_sample=True, num_return_sequences=n,
                         logits_processor=procs, **kw)
    with torch.no_grad():
        z = model(**enc).logits[0, -1].double()
    return np.bincount(out[:, -1].numpy(), minlength=z.shape[0]), z


def _chi2_p(counts, probs):
    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    obs = np.r_[counts[big], counts[~big].sum()]
    e = np.r_[exp[big], exp[~big].sum()]
    if e[-1] < 5:  # fold a small remainder into the smallest big bin
        obs, e = np.r_[obs[:-2], obs[-2] + obs[-1]], np.r_[e[:-2], e[-2] + e[-1]]
    return chisquare(obs, e * obs.sum() / e.sum()).pvalue


def test_sampling_follows_calibrated_distribution_chi_square(lm):
    model, tok = lm
    t = 0.45
    counts, z = _next_token_counts(model, tok, _procs(Temperature(temperature=t)), 6000)
    calibrated = torch.softmax(z / t, 0).numpy()
    raw = torch.softmax(z, 0).numpy()
    assert _chi2_p(counts, calibrated) > 1e-3
    assert _chi2_p(counts, raw) < 1e-6  # the test has the power to see an uncalibrated sampler


def test_top_p_sees_calibrated_probabilities(lm):
    """Calibration runs before top-p: the kept nucleus is that of softmax(z / T), not of softmax(z)."""
    model, tok = lm
    t, top_p = 0.45, 0.3
    counts, z = _next_token_counts(model, tok, _procs(Temperature(temperature=t)), 6000, top_p=top_p)
    nucleus = TopPLogitsWarper(top_p)(None, (z / t).float()[None])[0]
    expected = torch.softmax(nucleus.double(), 0).numpy()
    assert counts[expected == 0].sum() == 0
    assert _chi2_p(counts, expected) > 1e-3
    wrong = torch.softmax(TopPLogitsWarper(top_p)(None, z.float()[None])[0].double() / t, 0).numpy()
    assert (wrong > 0).sum() != (expected > 0).sum()  # the two orders keep different nuclei here


@pytest.mark.parametrize("kind", ["auto", "logprobs"])
def test_beam_search_scores_stay_normalised(lm, kind):
    model, tok = lm
    enc = _batch(tok)
    out = model.generate(**enc, max_new_tokens=6, num_beams=4, num_return_sequences=2, do_sample=False,
                         return_dict_in_generate=True, output_scores=True,
                         logits_processor=_procs(Temperature(temperature=0.6), input_kind=kind))
    for s in out.scores:
        lse = torch.logsumexp(s, -1)
        assert torch.all(lse.abs() < 1e-4)
    assert torch.isfinite(out.sequences_scores).all()
    assert out.sequences.shape[0] == 2 * len(PROMPTS)
    # with a constraint (min_new_tokens masks EOS) the mass left by the constraint is kept
    con = model.generate(**enc, max_new_tokens=3, min_new_tokens=2, num_beams=3, do_sample=False,
                         return_dict_in_generate=True, output_scores=True, output_logits=True,
                         logits_processor=_procs(Temperature(temperature=0.6), input_kind=kind))
    eos = tok.eos_token_id
    for raw, s in zip(con.logits[:2], con.scores[:2], strict=True):
        kept = torch.log1p(-torch.softmax(raw, -1)[:, eos])
        torch.testing.assert_close(torch.logsumexp(s, -1), kept, rtol=0, atol=1e-5)
    # and the renormalised scores are the calibrated log-probs log_softmax(log_softmax(z) / T)
    z = torch.randn(4, 50)
    lp = torch.log_softmax(z, -1)
    proc = CalibratedLogitsProcessor(Temperature(temperature=0.6), input_kind=kind)
    torch.testing.assert_close(proc(torch.zeros(4, 2, dtype=torch.long), lp), torch.log_softmax(z / 0.6, -1))


def test_tokcal_generate_beam_search(lm):
    model, tok = lm
    out = generate(model, tok, PROMPTS, Temperature(temperature=0.8), max_new_tokens=5, num_beams=3,
                   return_dict_in_generate=True, output_scores=True)
    assert all(torch.logsumexp(s, -1).abs().max() < 1e-4 for s in out.scores)


def test_masked_tokens_stay_masked(lm):
    """Constraint processors (min_new_tokens) run first; their -inf survives calibration."""
    model, tok = lm
    enc = tok(["Tokens"], return_tensors="pt")
    eos = tok.eos_token_id
    out = model.generate(**enc, max_new_tokens=3, min_new_tokens=2, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, output_scores=True,
                         logits_processor=_procs(Temperature(temperature=2.0)))
    first = out.scores[0][0]
    assert torch.isneginf(first[eos]) and torch.isfinite(first[torch.arange(first.numel()) != eos]).all()
    mask = MinNewTokensLengthLogitsProcessor(enc["input_ids"].shape[1], 2, eos)
    ref = _shifted(mask(enc["input_ids"], out.logits[0].clone()) / 2.0)
    torch.testing.assert_close(first, ref[0], rtol=1e-6, atol=1e-6)


def test_refuses_argmax_changing_calibrator_unless_allowed():
    with pytest.raises(TokcalError, match="allow_argmax_change"):
        CalibratedLogitsProcessor(HistogramBinning())
    CalibratedLogitsProcessor(HistogramBinning(), allow_argmax_change=True)
    with pytest.raises(TokcalError, match="allow_argmax_change"):
        CalibratedLogitsProcessor(Selective(HistogramBinning(), 0.5))
    with pytest.raises(TokcalError, match="not a tokcal calibrator"):
        CalibratedLogitsProcessor(object())


def test_context_position_and_groups_follow_prompts():
    proc = CalibratedLogitsProcessor(Temperature(temperature=1.0), groups={"domain": ["a", "b"], "split": "x"},
                                     pad_lengths=[2, 0])
    ids = torch.zeros(4, 7, dtype=torch.long)  # 2 prompts x 2 beams, current length 7
    assert proc._context_value("position", ids).tolist() == [5, 5, 7, 7]
    assert list(proc._context_value("domain", ids)) == ["a", "a", "b", "b"]
    assert list(proc._context_value("split", ids)) == ["x"] * 4
    with pytest.raises(TokcalError, match="pad_lengths"):
        proc._context_value("position", torch.zeros(3, 7, dtype=torch.long))


@pytest.mark.parametrize("kind", ["adaptive", "selective"])
def test_context_aware_calibrators_get_the_right_positions(lm, kind):
    """Processed scores equal the calibrator applied to the raw logits with position = prompt length
    (without left padding) + step, for every row of a padded batch with several return sequences."""
    model, tok = lm
    from tiny_generate_lm import CORPUS

    table = teacher_forced_table(model, tok, CORPUS[:5])
    cal = AdaptiveTemperature().fit(table)
    if kind == "selective":
        median = float(np.median(token_probs(table).confidence))
        cal = Selective(cal, threshold=median).fit(table)  # some rows change, some do not
    torch.manual_seed(5)
    out = generate(model, tok, PROMPTS, cal, max_new_tokens=5, do_sample=True, top_k=0, num_return_sequences=2,
                   return_dict_in_generate=True, output_scores=True, output_logits=True)
    lengths = np.repeat([len(tok(p)["input_ids"]) for p in PROMPTS], 2)
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores, strict=True)):
        ref = cal.transform_logits(raw.clone(), {"position": lengths + step})
        torch.testing.assert_close(processed, ref, rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(s, z) for s, z in zip(out.scores, out.logits, strict=True))


def test_tokcal_generate_pads_with_eos_when_the_tokenizer_has_no_pad_token(lm):
    import copy

    model, tok = lm
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    cal = Temperature(temperature=1.0)
    got = generate(model, no_pad, PROMPTS, cal, max_new_tokens=4, do_sample=False)
    assert got == generate(model, tok, PROMPTS, cal, max_new_tokens=4, do_sample=False)  # same id: eos
    assert no_pad.pad_token is None and no_pad.padding_side == tok.padding_side
