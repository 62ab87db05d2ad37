"""Resampling units (tokcal.bootstrap): the rule, the blocks against brute force, few units, replicates,
and the Evaluation schema version."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
from rich.console import Console

from tokcal import SchemaError, TokenTable, ValidationError
from tokcal.bootstrap import (
    DEFAULT_BLOCK_LENGTH,
    ResamplingWarning,
    choose_unit,
    replicate_weights,
    resampling_units,
    unit_keys,
    units_from_arrays,
)
from tokcal.calibrators import Temperature, compare, split_by_sequence
from tokcal.calibrators.hygiene import held_out_split
from tokcal.evaluation import SCHEMA_VERSION, Evaluation, evaluate
from tokcal.probs import token_probs
from tokcal.synthetic import make_logits, make_table, sample_labels


def _table(seq, pos, *, source=None, seed=0):
    n = len(seq)
    z = make_logits(n, 40, seed=seed)
    y = sample_labels(z, 0.8, seed=seed + 1)
    return TokenTable.from_logits(z, y, sequence_ids=seq, positions=pos, top_k=8, source=source)


def test_rule_sequences_or_blocks():
    assert choose_unit(np.full(30, 100))[0] == "sequence"
    assert choose_unit(np.full(29, 100))[0] == "block"
    dominant = np.r_[np.full(40, 10), 500]          # one of 41 sequences holds 500 / 900 tokens
    kind, reason = choose_unit(dominant)
    assert kind == "block" and "56%" in reason
    assert choose_unit(np.r_[np.full(40, 10), 300])[0] == "sequence"   # 300 / 700 = 43 %
    assert choose_unit(np.full(100, 5), unit="block")[0] == "block"
    with pytest.raises(Exception, match="resampling unit"):
        choose_unit([1, 2], unit="tokens")


def test_blocks_equal_brute_force_and_never_cross_a_sequence():
    rng = np.random.default_rng(0)
    seq = np.repeat([7, 3, 11], [1000, 130, 40])            # unsorted ids, one long sequence
    pos = np.concatenate([np.arange(1000), np.arange(5, 135), np.arange(40)])
    perm = rng.permutation(seq.size)                        # row order must not matter
    seq, pos = seq[perm], pos[perm]
    u = units_from_arrays(seq, pos, block_length=64)
    assert u.kind == "block" and u.block_length == 64 and u.n_sequences == 3
    # brute force: a dict over (sequence id, position // B) in sorted key order
    keys = sorted({(int(s), int(p) // 64) for s, p in zip(seq, pos, strict=True)})
    index = {k: i for i, k in enumerate(keys)}
    assert u.ids.tolist() == [index[(int(s), int(p) // 64)] for s, p in zip(seq, pos, strict=True)]
    assert u.n_units == len(keys) == math.ceil(1000 / 64) + 3 + 1   # 130 tokens at 5..134 touch 3 blocks
    sorted_seq = np.unique(seq)
    assert [sorted_seq[u.sequence_of_unit[i]] for i in range(u.n_units)] == [k[0] for k in keys]
    for i in range(u.n_units):                               # contiguous, at most B positions, one sequence
        m = u.ids == i
        assert np.unique(seq[m]).size == 1 and pos[m].max() - pos[m].min() < 64
        assert np.array_equal(np.sort(pos[m]), np.arange(pos[m].min(), pos[m].max() + 1))
    assert np.array_equal(unit_keys(seq, pos, "block", 64), np.stack([seq, pos // 64], 1))
    # short sequences only: the blocks are the sequences, reported as such
    short = units_from_arrays(np.repeat(np.arange(5), 20), np.tile(np.arange(20), 5))
    assert short.kind == "sequence" and short.n_units == 5 and "no sequence spans" in short.reason


def test_block_length_is_the_collection_window():
    n = 3000
    t = _table(np.zeros(n, np.int64), np.arange(n), source={"max_length": 512})
    assert resampling_units(t).block_length == 512
    plain = _table(np.zeros(n, np.int64), np.arange(n))
    assert resampling_units(plain).block_length == DEFAULT_BLOCK_LENGTH
    d = evaluate(t, slices=["position"], bootstrap=50).to_dict()
    res = d["settings"]["resampling"]
    assert res["unit"] == "block" and res["block_length"] == 512 and res["n_units"] == math.ceil(n / 512)
    assert d["overall"]["n_units"] == 6 and d["overall"]["n_sequences"] == 1
    assert "|unit=block|" in d["signatures"]["ci"] and "|block_length=512|" in d["signatures"]["ci"]
    lo, hi = d["overall"]["ci"]["accuracy"]
    assert lo < d["overall"]["accuracy"] < hi                # a real interval, not zero width
    # position slice 256+ lies in all 6 blocks (256..511 is in block 0), 64-255 in block 0 alone
    rows = {r["value"]: r for r in d["slices"]["position"]}
    assert rows["256+"]["n_units"] == 6 and rows["64-255"]["n_units"] == 1
    assert rows["64-255"]["n_sequences"] == 1 and not rows["64-255"]["significant"]
    # asked for explicitly
    assert evaluate(t, slices=[], bootstrap=0, block_length=100).to_dict()["overall"]["n_units"] == 30
    seqs = evaluate(t, slices=[], bootstrap=0, unit="sequence").to_dict()
    assert seqs["overall"]["n_units"] == 1 and seqs["signatures"]["ci"].count("unit=sequence") == 1


def test_fewer_than_two_units_give_no_interval_and_a_warning():
    t = _table(np.zeros(150, np.int64), np.arange(150))        # one sequence, one block of 256
    msg = r"1 resampling unit \(1 sequence, 150 tokens; .*one block of 256\).*--block-length below 150"
    with pytest.warns(ResamplingWarning, match=msg):
        ev = evaluate(t, slices=["position"], bootstrap=50)
    d = json.loads(ev.to_json())
    assert all(v == [None, None] for v in d["overall"]["ci"].values())
    assert all(b["acc_ci"] == [None, None] for b in d["bins"])
    assert all(r["gap_ci"] == [None, None] and r["ece_ci"] == [None, None] and not r["significant"]
               for r in d["slices"]["position"])
    assert ev.replicates is None
    out = io.StringIO()
    ev.print_summary(Console(file=out, width=160))
    assert "n/a" in out.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(t, slices=[], bootstrap=0)                     # no bootstrap asked: no warning
        ten = evaluate(t, slices=[], bootstrap=30, block_length=15)  # 10 blocks: enough
    assert ten.overall["n_units"] == 10
    # 2..9 units: intervals, with a warning that they are rough
    with pytest.warns(ResamplingWarning, match=r"only 3 resampling units \(3 blocks of 50 positions in 1 "
                                               r"sequence, 150 tokens.*rough and too narrow"):
        ok = evaluate(t, slices=[], bootstrap=30, block_length=50)
    assert ok.overall["n_units"] == 3 and ok.overall["ci"]["accuracy"][0] is not None


def test_replicates_are_reproducible_paired_and_equal_brute_force():
    t = make_table(3000, 60, beta_star=0.7, seq_len=100, seed=5)     # 30 sequences
    a = evaluate(t, slices=[], bootstrap=64, seed=9)
    cal = Temperature().fit(t)
    b = evaluate(t, calibrator=cal, slices=[], bootstrap=64, seed=9)
    assert set(a.replicates) == set(a.overall["ci"])
    # same units + seed = same resamples: the argmax-preserving calibrator leaves accuracy replicates equal
    np.testing.assert_array_equal(a.replicates["accuracy"], b.replicates["accuracy"])
    assert not np.allclose(a.replicates["nll"], b.replicates["nll"])
    # brute force from the weights: sum_u w_ru * correct_u / sum_u w_ru * n_u
    w = replicate_weights(30, 64, 9).astype(np.float64)
    n_u = np.bincount(t.sequence_id, minlength=30)
    acc_u = np.bincount(t.sequence_id, t.correct.astype(float), minlength=30)
    np.testing.assert_allclose(a.replicates["accuracy"], (w @ acc_u) / (w @ n_u), rtol=1e-6)
    lo, hi = np.percentile((w @ acc_u) / (w @ n_u), [2.5, 97.5])
    assert a.overall["ci"]["accuracy"] == pytest.approx([lo, hi], rel=1e-6)
    assert np.array_equal(replicate_weights(30, 64, 9), replicate_weights(30, 64, 9))
    assert (replicate_weights(30, 64, 9).sum(1) == 30).all()


def test_schema_version_and_old_files_still_load(tmp_path):
    t = make_table(1200, 50, seq_len=40, seed=1)
    d = evaluate(t, slices=["group:domain"] if "domain" in t.groups else ["position"], bootstrap=20).to_dict()
    assert d["schema_version"] == SCHEMA_VERSION == 2 and list(d)[0] == "schema_version"
    old = json.loads(json.dumps(d))
    del old["schema_version"], old["settings"]["resampling"], old["overall"]["n_units"]
    for rows in old["slices"].values():
        for r in rows:
            del r["n_units"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = Evaluation.from_json(tmp_path / "old.json")
    assert back.schema_version == SCHEMA_VERSION
    assert back["settings"]["resampling"]["unit"] == "sequence" and back.overall["n_units"] == 30
    assert list(back.overall) == list(d["overall"])
    assert all(r["n_units"] == r["n_sequences"] for rows in back["slices"].values() for r in rows)
    future = {**d, "schema_version": 3}
    (tmp_path / "future.json").write_text(json.dumps(future))
    with pytest.raises(SchemaError, match=r"future.json: evaluation schema_version 3"):
        Evaluation.from_json(tmp_path / "future.json")


def test_split_of_one_long_document_is_by_blocks_never_one_on_both_sides():
    n, b = 5000, 256
    t = _table(np.zeros(n, np.int64), np.arange(n), source={"max_length": b}, seed=3)
    with pytest.warns(ResamplingWarning, match=r"contiguous blocks: 4 of 20 blocks of 256 positions in 1 sequence"):
        fit, held = split_by_sequence(t, 0.2, seed=1)
    assert len(fit) + len(held) == n and not np.intersect1d(fit.sequence_id, held.sequence_id).size
    # brute force: every block (position // 256) of the document lies wholly on one side, under one id
    side = {}
    for tab, name in ((fit, "fit"), (held, "held")):
        for sid, p in zip(tab.sequence_id, tab.position, strict=True):
            assert side.setdefault(int(p) // b, (name, int(sid))) == (name, int(sid))
    assert len(side) == 20 and sum(v[0] == "held" for v in side.values()) == 4
    assert held.n_sequences == 4 and evaluate(held, slices=[], bootstrap=20).overall["n_units"] == 4
    rows = compare([Temperature()], fit, held, bootstrap=0)          # no shared unit: compare accepts it
    assert rows[0]["n"] == len(held)
    with pytest.raises(ValidationError, match="both train and test"):
        compare([Temperature()], fit, t, bootstrap=0)
    again = held_out_split(t, 0.2, seed=1)
    np.testing.assert_array_equal(again.held_out.position, held.position)
    # many sequences: the old split by sequence, no message, ids kept
    many = make_table(2000, 50, seq_len=40, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, h = split_by_sequence(many, 0.25, seed=3)
    assert set(np.unique(h.sequence_id)) <= set(np.unique(many.sequence_id)) and h.n_sequences == 12
    with pytest.raises(ValidationError, match=r"1 resampling unit; a held-out split needs at least 2"):
        split_by_sequence(_table(np.zeros(100, np.int64), np.arange(100)), 0.5)


def test_cli_fit_on_one_long_document(tmp_path):
    from typer.testing import CliRunner

    from tokcal.cli import app

    path = tmp_path / "book.parquet"
    _table(np.zeros(4000, np.int64), np.arange(4000), source={"max_length": 200}, seed=4).write_parquet(path)
    res = CliRunner().invoke(app, ["fit", str(path), "-o", str(tmp_path / "cal.json"), "--bootstrap", "30"],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "note: split_by_sequence: 1 sequence(s), fewer than 30, so the split is by contiguous blocks" in res.output
    assert "held out: 800 tokens, 4 blocks" in res.output and "[" in res.output


def test_slice_values_and_bins_inside_one_unit_have_no_interval():
    n = 4000
    t = _table(np.zeros(n, np.int64), np.arange(n), source={"max_length": 200}, seed=4)
    d = evaluate(t, slices=["position"], bootstrap=50).to_dict()
    rows = {r["value"]: r for r in d["slices"]["position"]}
    for value in ("0", "1-3", "4-15", "16-63"):               # positions < 200: all in block 0
        assert rows[value]["n_units"] == 1 and rows[value]["gap_ci"] == rows[value]["ece_ci"] == [None, None]
        assert not rows[value]["significant"]
    for value in ("64-255", "256+"):
        lo, hi = rows[value]["gap_ci"]
        assert rows[value]["n_units"] >= 2 and lo < hi
    # ten near-certain tokens in block 3 alone fill the top bin: it has no accuracy interval
    z = 0.1 * make_logits(n, 40, seed=4)                         # flat: no other confidence near 1
    z[600:610, 0] += 40.0
    y = sample_labels(z, 0.8, seed=5)
    sure = TokenTable.from_logits(z, y, sequence_ids=np.zeros(n, np.int64), positions=np.arange(n), top_k=8,
                                  source={"max_length": 200})
    d = evaluate(sure, slices=[], bootstrap=50).to_dict()
    idx = np.minimum((np.asarray(token_probs(sure).confidence) * 15).astype(int), 14)
    for b, row in enumerate(d["bins"]):
        units = {p // 200 for p in np.flatnonzero(idx == b)}     # brute force: the blocks of the bin's tokens
        if len(units) == 1:
            assert row["acc_ci"] == [None, None]
        elif len(units) >= 2:
            assert row["acc_ci"][0] is not None and row["acc_ci"][0] <= row["acc_ci"][1]
    assert {p // 200 for p in np.flatnonzero(idx == 14)} == {3}


def test_cli_evaluate_unit_options(tmp_path):
    from typer.testing import CliRunner

    from tokcal.cli import app

    path, out = tmp_path / "short.parquet", tmp_path / "ev.json"
    _table(np.zeros(150, np.int64), np.arange(150)).write_parquet(path)
    res = CliRunner().invoke(app, ["evaluate", str(path), "-s", "position", "--bootstrap", "30", "--block-length",
                                   "30", "--json", str(out)], terminal_width=200)
    assert res.exit_code == 0 and "bootstrap over 5 blocks of 30 positions" in " ".join(res.output.split())
    d = json.loads(out.read_text())
    assert d["settings"]["resampling"]["n_units"] == 5 and d["overall"]["ci"]["accuracy"][0] is not None
    res = CliRunner().invoke(app, ["evaluate", str(path), "--unit", "tokens"])
    assert res.exit_code == 2 and "unit must be 'auto', 'sequence' or 'block', got 'tokens'" in res.output


def test_temperature_standard_errors_cluster_by_units_on_one_long_document():
    """One document: sequence clusters give a zero standard error (the gradient sums to 0 at the optimum)
    and leave every group of GroupTemperature at the global temperature; block clusters do not."""
    from tokcal.calibrators import GroupTemperature

    n = 12000
    z = make_logits(n, 60, seed=8)
    half = np.arange(n) >= n // 2
    y = np.where(half, sample_labels(z, 0.6, seed=9), sample_labels(z, 1.6, seed=10))
    t = TokenTable.from_logits(z, y, sequence_ids=np.zeros(n, np.int64), positions=np.arange(n), top_k=16,
                               groups={"part": np.where(half, "hot", "cold")}, source={"max_length": 256})
    cal = Temperature().fit(t)
    blocks = resampling_units(t).ids
    assert resampling_units(t).n_units == math.ceil(n / 256)
    # brute-force sandwich: sqrt(sum over blocks of the summed gradient^2) / sum of curvatures
    from tokcal.calibrators.temperature import nll_terms

    beta = 1.0 / cal.temperature
    _, grad, hess = nll_terms(t.sketch, np.full(n, beta))
    g = np.array([grad[blocks == b].sum() for b in range(blocks.max() + 1)])
    assert cal.fit_info["se_beta"] == pytest.approx(np.sqrt((g**2).sum()) / hess.sum(), rel=1e-9)
    assert cal.fit_info["se_beta"] > 10 * abs(grad.sum()) / hess.sum()       # not the one-cluster value
    got = GroupTemperature("part").fit(t).temperatures       # shrunk toward the global temperature
    hot, cold = (Temperature().fit(t.select(m)).temperature for m in (half, ~half))
    assert got["hot"] == pytest.approx(hot, rel=0.05) and got["cold"] == pytest.approx(cold, rel=0.05)
    assert got["hot"] - got["cold"] > 0.5 * (hot - cold) > 0
