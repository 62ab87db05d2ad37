"""tokcal curate: challenge sets and sampling weights, checked by brute force on a known table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import tokcal
from tokcal.cli import app
from tokcal.curate import challenge_set, sampling_weights, write_challenge
from tokcal.errors import ValidationError
from tokcal.probs import token_probs
from tokcal.slices import parse_slice
from tokcal.sources import read_jsonl
from tokcal.synthetic import make_logits, sample_labels

V, SEQ = 120, 40


@pytest.fixture(scope="module")
def table():
    logits = make_logits(4000, V, seed=0)
    labels = sample_labels(logits, beta_star=0.6, seed=1)
    seq = np.arange(4000) // SEQ
    vocab = [f"w{i} " for i in range(V)]
    return tokcal.TokenTable.from_logits(logits, labels, sequence_ids=seq, positions=np.arange(4000) % SEQ,
                                         top_k=8, vocab=vocab,
                                         groups={"domain": np.where(seq % 2 == 0, "a", "b")})


@pytest.fixture(scope="module")
def evaluation(table):
    return tokcal.evaluate(table, slices=["group:domain", "position"], bootstrap=50, seed=0)


def test_overconfident_are_the_most_confident_errors(table, evaluation):
    items = challenge_set(table, evaluation, overconfident=20, per_token=0, per_slice=0, context=5)
    p = token_probs(table)
    wrong = np.flatnonzero(table.labeled & ~p.correct)
    expected = wrong[np.argsort(-p.confidence[wrong], kind="stable")[:20]]
    got = [(it.sequence_id, it.position) for it in items]
    assert got == [(int(table.sequence_id[j]), int(table.position[j])) for j in expected]
    assert all(it.reason == "overconfident" and not it.correct for it in items)
    for it, j in zip(items, expected, strict=True):
        # the text: the gold tokens of the 5 positions before the target, then the target
        rows = np.flatnonzero((table.sequence_id == it.sequence_id) & (table.position <= it.position)
                              & (table.position >= it.position - 5))
        assert it.text == "".join(f"w{int(table.label[r])} " for r in rows)
        assert it.text.endswith(it.target) and it.target_id == int(table.label[j])


def test_worst_tokens_and_significant_slices(table, evaluation):
    d = evaluation.to_dict()
    items = challenge_set(table, evaluation, overconfident=0, per_token=2, per_slice=3)
    p = token_probs(table)
    worst = [w["id"] for w in d["worst_tokens"]]
    wt = [it for it in items if it.reason == "worst-token"]
    assert wt and all(it.predicted_id in worst for it in wt)
    sig = [(n, r["value"]) for n, rows in d["slices"].items() for r in rows if r["significant"]]
    sl = [it for it in items if it.reason == "slice"]
    assert len(sl) == 3 * len(sig) and sig
    for it in sl:
        name, value = it.why.split(" ")[1].split("=", 1)
        s = parse_slice(name)
        j = np.flatnonzero((table.sequence_id == it.sequence_id) & (table.position == it.position))[0]
        codes = s.codes(table, p)
        assert s.labels[codes[j]] == value
    assert len({(it.sequence_id, it.position) for it in items}) == len(items)  # no token twice


def test_written_challenge_is_a_collect_input_and_a_words_list(table, evaluation, tmp_path):
    items = challenge_set(table, evaluation, overconfident=10, per_token=1, per_slice=1)
    write_challenge(items, tmp_path / "c.jsonl", tmp_path / "w.txt")
    docs = read_jsonl(tmp_path / "c.jsonl", group_fields=["challenge"])
    assert [d.text for d in docs] == [it.text for it in items]
    assert {d.groups["challenge"] for d in docs} <= {"overconfident", "worst-token", "slice"}
    ws = parse_slice(f"words:{tmp_path / 'w.txt'}")
    codes = ws.codes(table, token_probs(table))
    targets = {(it.sequence_id, it.position) for it in items}
    listed = {(int(table.sequence_id[j]), int(table.position[j])) for j in np.flatnonzero(codes == 0)}
    assert targets <= listed  # every target's id is on the list


def test_sampling_weights_brute_force(table, evaluation):
    counts_ref = np.random.default_rng(5).zipf(1.4, V).astype(float)
    counts_ref[7] = 0  # unseen: hard
    seq, w = sampling_weights(table, evaluation, rare_rank=50, threshold=0.6, boost=3.0, freq_ref=counts_ref)
    p = token_probs(table)
    counts = counts_ref
    order = np.argsort(-counts, kind="stable")
    rank = {int(i): r for r, i in enumerate(order)}
    worst = {w_["id"] for w_ in evaluation.to_dict()["worst_tokens"]}
    raw = []
    for s in np.unique(table.sequence_id):
        rows = np.flatnonzero((table.sequence_id == s) & table.labeled)
        hard = sum(rank[int(table.label[j])] >= 50 or counts[table.label[j]] == 0
                   or abs(p.confidence[j] - p.correct[j]) >= 0.6 or int(p.predicted[j]) in worst for j in rows)
        raw.append(1 + 3.0 * hard / len(rows))
    np.testing.assert_array_equal(seq, np.unique(table.sequence_id))
    np.testing.assert_allclose(w, np.array(raw) / np.mean(raw))
    assert w.mean() == pytest.approx(1.0) and w.std() > 0
    with pytest.raises(ValidationError, match="boost"):
        sampling_weights(table, boost=-1)


@pytest.mark.filterwarnings("ignore::tokcal.bootstrap.ResamplingWarning")
def test_cli_curate(table, evaluation, tmp_path):
    table.write_parquet(tmp_path / "t.parquet")
    evaluation.to_json(tmp_path / "ev.json")
    r = CliRunner().invoke(app, ["curate", str(tmp_path / "t.parquet"), "-e", str(tmp_path / "ev.json"),
                                 "-o", str(tmp_path / "c.jsonl"), "--words-out", str(tmp_path / "w.txt"),
                                 "--weights-out", str(tmp_path / "wt.jsonl"), "--overconfident", "7"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert sum(x["challenge"] == "overconfident" for x in lines) == 7
    wts = [json.loads(x) for x in (tmp_path / "wt.jsonl").read_text().splitlines()]
    assert len(wts) == table.n_sequences and np.mean([x["weight"] for x in wts]) == pytest.approx(1.0)
    bare = tokcal.TokenTable.from_logits(make_logits(50, V, seed=3), np.zeros(50, np.int32), top_k=4)
    bare.write_parquet(tmp_path / "bare.parquet")
    r = CliRunner().invoke(app, ["curate", str(tmp_path / "bare.parquet"), "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "no vocabulary" in r.output
