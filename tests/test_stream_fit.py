"""Streamed fits beyond one temperature: frequency-bucket group temperatures (with and without a reference)
and the held-out split by blocks, equal to the in-memory ones; the other calibrators are refused clearly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_stream_evaluate import compare, write_parts
from typer.testing import CliRunner

from tokcal import TokenTable, evaluate
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.calibrators.hygiene import held_out_split
from tokcal.cli import app
from tokcal.distributed.fit import Batches, StreamSplit, fit_stream
from tokcal.distributed.stats import evaluate_stream
from tokcal.synthetic import make_table


@pytest.fixture(scope="module")
def short(tmp_path_factory):  # 300 sequences of 60 tokens
    t = make_table(18000, 500, domains={"news": 0.7, "code": 1.5}, seq_len=60, top_k=16, seed=11)
    return write_parts(t, tmp_path_factory.mktemp("short"), 4000)


@pytest.fixture(scope="module")
def long(tmp_path_factory):  # 4 sequences of 4000 tokens: resampled and split by blocks
    t = make_table(16000, 500, domains={"news": 0.7, "code": 1.5}, seq_len=4000, top_k=16, seed=12)
    return write_parts(t, tmp_path_factory.mktemp("long"), 3000)


def assert_same_groups(a: GroupTemperature, b: GroupTemperature) -> None:
    assert b.counts == a.counts and b.temperatures.keys() == a.temperatures.keys()
    assert (b.freq_codes, b.freq_labels, b.freq_reference) == (a.freq_codes, a.freq_labels, a.freq_reference)
    assert b.global_temperature == pytest.approx(a.global_temperature, rel=1e-9)
    for k in a.temperatures:
        assert b.temperatures[k] == pytest.approx(a.temperatures[k], rel=1e-9)
        assert b.raw_temperatures[k] == pytest.approx(a.raw_temperatures[k], rel=1e-9)


def test_frequency_group_temperatures_stream(short, tmp_path):
    full = TokenTable.read_parquet(short)
    counts = np.random.default_rng(0).integers(0, 50, full.vocab_size).tolist()
    (tmp_path / "ref.json").write_text(json.dumps({"counts": counts}))
    for ref in (tmp_path / "ref.json", None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no reference: the table's own counts, with a warning
            a = GroupTemperature("freq").fit(full, freq_reference=ref)
            b = fit_stream(GroupTemperature("freq"), Batches(short, batch_rows=1700), freq_reference=ref)
        assert len(a.temperatures) >= 2
        assert_same_groups(a, b)
    with pytest.raises(Exception, match="only used with by='freq'"):
        fit_stream(GroupTemperature("domain"), Batches(short), freq_reference=tmp_path / "ref.json")


@pytest.mark.parametrize("which", ["short", "long"])
def test_stream_split_equals_held_out_split(which, short, long):
    d = {"short": short, "long": long}[which]
    full = TokenTable.read_parquet(d)
    mem = held_out_split(full, 0.25, 3)
    split = StreamSplit(d, 0.25, 3)
    assert split.blocks == (mem.message is not None) == (which == "long")
    assert split.message == mem.message and split.n_out == mem.n_held_out
    for side, ref in ((split.fit, mem.fit), (split.held_out, mem.held_out)):
        got = TokenTable.concat(list(Batches(d, batch_rows=1300, select=side)))
        for col in ("sequence_id", "position", "label"):
            assert np.array_equal(getattr(got, col), getattr(ref, col)), col
    # the held-out evaluation of the streamed side equals the in-memory one (its units: the blocks)
    cal = Temperature().fit(mem.fit)
    a = evaluate(mem.held_out, cal, slices=[], bootstrap=30, worst=0).to_dict()
    b = evaluate_stream(d, cal, slices=[], bootstrap=30, worst=0, batch_rows=1300, select=split.held_out).to_dict()
    assert b["table_fingerprint"] is None  # of a part of the dataset: not computed
    compare({**a, "table_fingerprint": None}, b)
    t = fit_stream(Temperature(), Batches(d, batch_rows=1300, select=split.fit))
    assert t.temperature == pytest.approx(cal.temperature, rel=1e-9)
    assert t.fit_info["se_beta"] == pytest.approx(cal.fit_info["se_beta"], rel=1e-9)


def run(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_cli_streamed_fit_by_blocks_and_freq_groups(long, short, tmp_path):
    counts = {"counts": np.arange(500)[::-1].tolist()}
    (tmp_path / "ref.json").write_text(json.dumps(counts))
    cases = {"blocks": [str(long), "--method", "group", "--by", "domain", "--holdout", "0.25"],
             "freq": [str(short), "--method", "group", "--by", "freq", "--freq-ref", str(tmp_path / "ref.json")]}
    for name, args in cases.items():
        out = {m: run("fit", *args, m, "--bootstrap", "20", "-o", str(tmp_path / f"{name}{m}.json"))
               for m in ("--stream", "--in-memory")}
        a, b = (GroupTemperature.load(tmp_path / f"{name}{m}.json") for m in ("--in-memory", "--stream"))
        assert_same_groups(a, b)
        assert "streamed" in out["--stream"] and "held out" in out["--stream"]
        if name == "blocks":
            note = [ln for ln in out["--in-memory"].splitlines() if ln.startswith("note:")]
            assert note and note[0] in out["--stream"]


def test_cli_streamed_fit_refusals(short, tmp_path):
    for method in ("isotonic", "adaptive", "conformal", "beta"):
        r = CliRunner().invoke(app, ["fit", str(short), "--stream", "--method", method, "-o", str(tmp_path / "c.json")])
        text = " ".join(r.output.split())
        assert r.exit_code == 2 and "needs the table in memory" in text and "--in-memory" in text, text
    r = CliRunner().invoke(app, ["fit", str(short), "--stream", "--freq-ref", str(short),
                                 "-o", str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "uses no token frequency" in r.output
    with pytest.raises(Exception, match="tokcal fit --in-memory"):
        from tokcal.calibrators import Isotonic

        fit_stream(Isotonic(), Batches(short))


@pytest.mark.parametrize("binning", ["mass", "width"])
def test_histogram_binning_streams(short, binning, monkeypatch):
    import tokcal.distributed.quantiles as Q
    from tokcal.calibrators import HistogramBinning

    full = TokenTable.read_parquet(short)
    a = HistogramBinning(12, binning=binning, min_count=5).fit(full)
    b = fit_stream(HistogramBinning(12, binning=binning, min_count=5), Batches(short, batch_rows=1700))
    assert b.edges.tobytes() == a.edges.tobytes()  # exact quantiles
    np.testing.assert_allclose(b.values, a.values, rtol=1e-12, atol=1e-15)
    monkeypatch.setattr(Q, "CAP", 4)  # the bit-range passes: the same edges
    c = fit_stream(HistogramBinning(12, binning=binning, min_count=5), Batches(short, batch_rows=1700))
    assert c.edges.tobytes() == a.edges.tobytes()


def test_cli_streamed_histogram_fit(short, tmp_path):
    from tokcal.calibrators import HistogramBinning

    for m in ("--stream", "--in-memory"):
        run("fit", str(short), "--method", "histogram", m, "--bootstrap", "10", "-o", str(tmp_path / f"h{m}.json"))
    a, b = (HistogramBinning.load(tmp_path / f"h{m}.json") for m in ("--in-memory", "--stream"))
    assert b.edges.tobytes() == a.edges.tobytes()
    np.testing.assert_allclose(b.values, a.values, rtol=1e-12, atol=1e-15)
