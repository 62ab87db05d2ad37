"""Streamed equal-mass binning: the edges are found exactly by passes of counts, bit for bit the in-memory
ones (numpy.quantile), also with heavy ties, tiny values and forced extra passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_stream_evaluate import compare, with_unlabelled, write_parts
from typer.testing import CliRunner

import tokcal.distributed.quantiles as Q
from tokcal import TokenTable, evaluate
from tokcal.calibrators import GroupTemperature
from tokcal.cli import app
from tokcal.distributed.stats import evaluate_stream
from tokcal.metrics import mass_edges
from tokcal.synthetic import make_table


def stream_edges(parts: list[np.ndarray], bins: int) -> tuple[np.ndarray, int]:
    return Q.mass_edges_of(lambda: iter(parts), bins)


ARRAYS = {
    "uniform": lambda r: r.random(5003),
    "ties": lambda r: r.permutation(np.concatenate([np.ones(3000), np.full(2500, 0.5), np.zeros(400), r.random(900)])),
    "rounded": lambda r: np.round(r.random(20000), 2),
    "near one": lambda r: 1.0 - r.random(30000) ** 6 * 1e-9,
    "tiny": lambda r: r.random(8000) * 1e-300,
    "signed zero": lambda r: r.permutation(np.concatenate([np.full(50, -0.0), r.random(70)])),
    "one value": lambda r: np.full(777, 0.3),
    "single": lambda r: np.asarray([0.25]),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize("cap", [1 << 20, 40])  # 40: the collection overflows, the bit-range passes run
@pytest.mark.parametrize("bins", [1, 15, 150])
def test_order_statistics_give_numpy_quantile_edges_bit_for_bit(name, cap, bins, monkeypatch):
    monkeypatch.setattr(Q, "CAP", cap)
    x = ARRAYS[name](np.random.default_rng(len(name)))
    parts = np.array_split(x, 7)
    edges, passes = stream_edges(parts, bins)
    ref = mass_edges(x, bins)
    assert np.array_equal(edges, ref)
    if name != "signed zero":  # -0.0 is counted as 0.0: an equal value, other bits
        assert edges.tobytes() == ref.tobytes()
    if cap > x.size:
        assert passes == 1


def test_pass_counts_merge_in_any_order(monkeypatch):
    """Shards counted apart and merged (as Ray does) give the same edges, whatever the order of merging."""
    monkeypatch.setattr(Q, "CAP", 100)
    rng = np.random.default_rng(1)
    x = np.round(rng.random(40000) ** 3, 4)
    shards = np.array_split(x, 5)
    ref = mass_edges(x, 20)
    q = np.linspace(0, 1, 21)
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        stats = Q.OrderStatistics(lambda n: Q.quantile_ranks(n, q))
        while not stats.done:
            counts = [stats.counter().update(shards[i]) for i in order]
            total = counts[0]
            for c in counts[1:]:
                total.merge(c)
            stats.absorb(total)
        assert stats.passes > 1
        edges = stats.quantiles(q)
        edges[0], edges[-1] = 0.0, 1.0
        assert edges.tobytes() == ref.tobytes()


def test_bad_values_are_named():
    with pytest.raises(Exception, match="NaN or outside"):
        Q.PassCounts(None, None, None, 0).update(np.asarray([0.2, np.nan]))


def tied_table(n: int, distinct: int, seed: int) -> TokenTable:
    """``n`` tokens drawn from ``distinct`` rows of a synthetic table: heavy ties of the confidences."""
    base = make_table(400, 300, domains={"news": 0.7, "code": 1.5}, seq_len=40, top_k=8, seed=seed)
    t = base.select(np.random.default_rng(seed).integers(0, distinct, n))
    seq = np.arange(n, dtype=np.int64) // 50
    return TokenTable(sequence_id=seq, position=(np.arange(n) % 50).astype(np.int32), label=t.label,
                      top_ids=t.top_ids, top_logits=t.top_logits, label_logit=t.label_logit,
                      log_normalizer=t.log_normalizer, tail=t.tail, layout=t.layout, vocab_size=t.vocab_size,
                      groups=t.groups, vocab=t.vocab, source=t.source)


@pytest.mark.parametrize("kind", ["plain", "ties"])
def test_streamed_mass_binning_equals_in_memory(tmp_path, kind, monkeypatch):
    if kind == "plain":
        t = with_unlabelled(make_table(20000, 400, domains={"news": 0.7, "code": 1.5}, seq_len=60, top_k=16,
                                       seed=3), 13)
    else:
        t = with_unlabelled(tied_table(18000, 6, seed=4), 11)
    d = write_parts(t, tmp_path / "ds", 4000)
    full = TokenTable.read_parquet(d)
    cal = GroupTemperature("domain").fit(full)
    for c in (None, cal):
        a = evaluate(full, c, bins=12, binning="mass", bootstrap=40, seed=2).to_dict()
        b = evaluate_stream(d, c, bins=12, binning="mass", bootstrap=40, seed=2, batch_rows=1500).to_dict()
        assert [x["lo"] for x in b["bins"]] == [x["lo"] for x in a["bins"]]
        assert [x["hi"] for x in b["bins"]] == [x["hi"] for x in a["bins"]]
        assert b["settings"]["binning"] == "mass" and b["signature"] == a["signature"]
        assert b["settings"]["streaming"]["edge_passes"] == 1
        compare(a, b)
    if kind == "ties":  # distinct edges collapse onto tied confidences: empty bins, as in memory
        assert len({x["lo"] for x in a["bins"]}) < 12
    monkeypatch.setattr(Q, "CAP", 2)  # force the bit-range passes: still the same edges and numbers
    b = evaluate_stream(d, None, bins=12, binning="mass", bootstrap=40, seed=2, batch_rows=1500).to_dict()
    assert b["settings"]["streaming"]["edge_passes"] > 1
    compare(evaluate(full, None, bins=12, binning="mass", bootstrap=40, seed=2).to_dict(), b)


def test_cli_stream_mass_matches_in_memory(tmp_path):
    d = write_parts(make_table(9000, 300, domains={"a": 0.8, "b": 1.3}, seq_len=50, top_k=8, seed=6),
                    tmp_path / "ds", 2000)
    out = {}
    for mode in ("--stream", "--in-memory"):
        r = CliRunner().invoke(app, ["evaluate", str(d), mode, "--binning", "mass", "--bootstrap", "20",
                                     "--json", str(tmp_path / f"ev{mode}.json")])
        assert r.exit_code == 0, r.output
        out[mode] = json.loads((tmp_path / f"ev{mode}.json").read_text())
    compare(out["--in-memory"], out["--stream"])
    assert out["--stream"]["settings"]["binning"] == "mass"
