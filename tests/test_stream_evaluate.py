"""Streamed (out-of-core) evaluate and fit equal the in-memory ones; peak RSS stays flat from 1x to 16x."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokcal import TokenTable, evaluate
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.cli import app
from tokcal.distributed.fit import Batches, fit_stream
from tokcal.distributed.stats import aurc_from_bins, evaluate_stream
from tokcal.metrics import aurc
from tokcal.synthetic import make_table


def with_unlabelled(t: TokenTable, every: int) -> TokenTable:
    lab = t.label.copy()
    lab[::every] = -1
    return TokenTable(sequence_id=t.sequence_id, position=t.position, label=lab, top_ids=t.top_ids,
                      top_logits=t.top_logits, label_logit=t.label_logit, log_normalizer=t.log_normalizer,
                      tail=t.tail, layout=t.layout, vocab_size=t.vocab_size, groups=t.groups, vocab=t.vocab,
                      source=t.source)


def write_parts(t: TokenTable, d: Path, rows: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(range(0, len(t), rows)):
        t.select(np.arange(s, min(len(t), s + rows))).write_parquet(d / f"part-{i:03d}.parquet")
    return d


def compare(a, b, path="", *, ci_rtol=1e-5):
    """Every number equal to 1e-12 (relative or absolute), except bootstrap intervals (float32 products: ``ci_rtol``
    relative or 1e-6 absolute),
    AURC and the risk-coverage curve (checked apart, against the computed bound)."""
    if path.endswith(("risk_coverage", ".aurc", "settings.streaming")):
        return
    if isinstance(a, dict):
        assert set(a) <= set(b), (path, set(a) - set(b))
        for k in a:
            compare(a[k], b[k], f"{path}.{k}", ci_rtol=ci_rtol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            compare(x, y, f"{path}[{i}]", ci_rtol=ci_rtol)
    elif isinstance(a, float) and not isinstance(a, bool):
        boot = "_ci" in path or ".ci." in path or path.startswith(".replicates")
        rtol, atol = (ci_rtol, 1e-6) if boot else (1e-12, 1e-12)
        assert b is not None and math.isclose(a, b, rel_tol=rtol, abs_tol=atol), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    t = with_unlabelled(make_table(24000, 400, domains={"news": 0.7, "code": 1.5}, seq_len=60, top_k=16, seed=3), 13)
    return write_parts(t, tmp_path_factory.mktemp("ds"), 5000)


@pytest.mark.parametrize(("seq_len", "workers"), [(60, 1), (60, 3), (4000, 2)])  # 400 sequences; 6 long ones
def test_streamed_evaluate_equals_in_memory(tmp_path, seq_len, workers):
    t = with_unlabelled(make_table(24000, 400, domains={"news": 0.7, "code": 1.5}, seq_len=seq_len, top_k=16,
                                   seed=3), 13)
    d = write_parts(t, tmp_path / "ds", 5000)
    full = TokenTable.read_parquet(d)
    cal = GroupTemperature("domain").fit(full)
    for c in (None, cal):
        a = evaluate(full, c, bootstrap=60, seed=4).to_dict()
        b = evaluate_stream(d, c, bootstrap=60, seed=4, batch_rows=1700, workers=workers).to_dict()
        assert b["settings"]["resampling"]["unit"] == ("sequence" if seq_len == 60 else "block")
        compare(a, b)
        bound = b["settings"]["streaming"]["aurc_error_bound"]
        assert abs(a["overall"]["aurc"] - b["overall"]["aurc"]) <= bound < 1e-4
        assert b["risk_coverage"]["coverage"][-1] == 1.0


def test_binned_aurc_bound_holds_and_is_exact_without_shared_bins():
    rng = np.random.default_rng(0)
    c = rng.random(5000)
    a = (rng.random(5000) < c).astype(float)
    for bins in (8, 64, 1 << 18):
        idx = np.minimum((c * bins).astype(int), bins - 1)
        count, errors = np.bincount(idx, minlength=bins), np.bincount(idx, 1 - a, minlength=bins)
        value, bound, _, _ = aurc_from_bins(count.astype(float), errors)
        assert abs(value - aurc(c, a)) <= bound + 1e-12
        if count.max() <= 1:
            assert bound == 0 and value == pytest.approx(aurc(c, a), abs=1e-12)
    # a coarse binning with ties inside bins: the tie rule of aurc() is exactly the binned value
    q = np.floor(c * 8) / 8
    idx = np.minimum((q * 8).astype(int), 7)
    value, _, _, _ = aurc_from_bins(np.bincount(idx, minlength=8).astype(float), np.bincount(idx, 1 - a, minlength=8))
    assert value == pytest.approx(aurc(q, a), abs=1e-12)


def test_streamed_fits_equal_in_memory_fits_with_warm_start(dataset, monkeypatch):
    import tokcal.calibrators.temperature as T
    import tokcal.distributed.fit as F

    monkeypatch.setattr(T, "_WARM_ROWS", 3000)  # groups of ~11k rows: the warm start runs in both paths
    monkeypatch.setattr(F, "_WARM_ROWS", 3000)
    full = TokenTable.read_parquet(dataset)
    a = Temperature().fit(full)
    b = fit_stream(Temperature(), Batches(dataset, batch_rows=2200))
    assert b.temperature == pytest.approx(a.temperature, rel=1e-9)
    assert b.fit_info["se_beta"] == pytest.approx(a.fit_info["se_beta"], rel=1e-9)
    assert b.fit_info["iterations"] == a.fit_info["iterations"] and b.fit_info["n"] == a.fit_info["n"]
    g1 = GroupTemperature("domain").fit(full)
    g2 = fit_stream(GroupTemperature("domain"), Batches(dataset, batch_rows=2200))
    assert g2.counts == g1.counts and g2.temperatures.keys() == g1.temperatures.keys()
    for k in g1.temperatures:
        assert g2.temperatures[k] == pytest.approx(g1.temperatures[k], rel=1e-9)
        assert g2.raw_temperatures[k] == pytest.approx(g1.raw_temperatures[k], rel=1e-9)
    assert g2.tau == pytest.approx(g1.tau, rel=1e-9)
    # one long text per domain: the standard errors are clustered by blocks in both paths
    long = write_parts(make_table(12000, 400, domains={"news": 0.7, "code": 1.5}, seq_len=4000, top_k=16, seed=9),
                       dataset.parent / "long", 2500)
    full = TokenTable.read_parquet(long)
    a, b = Temperature().fit(full), fit_stream(Temperature(), Batches(long, batch_rows=1100))
    assert b.fit_info["se_beta"] == pytest.approx(a.fit_info["se_beta"], rel=1e-9) and a.fit_info["se_beta"] > 0
    g1 = GroupTemperature("domain").fit(full)
    g2 = fit_stream(GroupTemperature("domain"), Batches(long, batch_rows=1100))
    for k in g1.temperatures:
        assert g2.temperatures[k] == pytest.approx(g1.temperatures[k], rel=1e-9)


def test_cli_stream_matches_in_memory(dataset, tmp_path):
    out = {}
    for mode in ("--stream", "--in-memory"):
        r = CliRunner().invoke(app, ["evaluate", str(dataset), mode, "--bootstrap", "30",
                                     "--json", str(tmp_path / f"ev{mode}.json")])
        assert r.exit_code == 0, r.output
        out[mode] = json.loads((tmp_path / f"ev{mode}.json").read_text())
        r = CliRunner().invoke(app, ["fit", str(dataset), mode, "--method", "group", "--by", "domain",
                                     "--bootstrap", "30", "-o", str(tmp_path / f"cal{mode}.json")])
        assert r.exit_code == 0, r.output
        assert "held out" in r.output
    compare(out["--in-memory"], out["--stream"])
    a, b = (json.loads((tmp_path / f"cal{m}.json").read_text()) for m in ("--in-memory", "--stream"))
    for k, v in a["temperatures"].items():
        assert b["temperatures"][k] == pytest.approx(v, rel=1e-9)
    r = CliRunner().invoke(app, ["fit", str(dataset), "--stream", "--method", "isotonic",
                                 "-o", str(tmp_path / "i.json")])
    assert r.exit_code == 2 and "needs the table in memory" in " ".join(r.output.split())


PEAK = textwrap.dedent("""
    import sys
    from tokcal.cli import app
    try:
        app(sys.argv[1:], standalone_mode=False)
    finally:  # VmHWM: peak resident set of this process image (ru_maxrss would include the parent's)
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
        print("PEAK_KB", hwm, file=sys.stderr)
""")


def replicate(base: Path, out: Path, copies: int) -> Path:
    """``copies`` copies of the parts of ``base``, each with fresh sequence ids."""
    out.mkdir()
    files = sorted(base.glob("*.parquet"))
    span = 1 + max(int(pq.read_table(f, columns=["sequence_id"]).column(0).to_numpy().max()) for f in files)
    for c in range(copies):
        for f in files:
            t = pq.read_table(f)
            i = t.column_names.index("sequence_id")
            t = t.set_column(i, "sequence_id", pa.array(t.column(i).to_numpy() + c * span))
            pq.write_table(t, out / f"c{c:02d}-{f.name}", compression="zstd")
    return out


def peak_kb(args: list[str], script: Path) -> int:
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stderr.split("PEAK_KB")[-1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_rss_is_flat_from_1x_to_16x(tmp_path):
    base = write_parts(make_table(20000, 2000, domains={"a": 0.8, "b": 1.2}, seq_len=80, top_k=8, seed=5),
                       tmp_path / "base", 5000)
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    sets = {n: replicate(base, tmp_path / f"x{n}", n) for n in (1, 4, 16)}
    common = ["--stream", "--bootstrap", "20"]
    ev = {n: peak_kb(["evaluate", str(d), *common, "--json", str(tmp_path / f"e{n}.json")], script)
          for n, d in sets.items()}
    fit = {n: peak_kb(["fit", str(sets[n]), "--stream", "--holdout", "0", "-o", str(tmp_path / f"c{n}.json")],
                      script) for n in (1, 16)}
    mib = {name: {n: v // 1024 for n, v in d.items()} for name, d in (("evaluate", ev), ("fit", fit))}
    print(f"peak RSS MiB: {mib}")
    assert ev[16] <= 1.2 * ev[1] and ev[4] <= 1.2 * ev[1]
    assert fit[16] <= 1.2 * fit[1]
    # point metrics of the streamed 1x set equal the in-memory ones
    memory = evaluate(TokenTable.read_parquet(sets[1]), bootstrap=20).to_dict()
    compare(memory, json.loads((tmp_path / "e1.json").read_text()))
    sixteen = json.loads((tmp_path / "e16.json").read_text())
    assert sixteen["overall"]["n"] == 16 * memory["overall"]["n"]
    assert sixteen["overall"]["ece"] == pytest.approx(memory["overall"]["ece"], rel=1e-9)  # copies: same ECE


def test_unique_fast_path_equals_numpy_unique():
    from tokcal.distributed.summary import _unique

    rng = np.random.default_rng(0)
    cases = [np.sort(rng.integers(0, 50, 1000)), rng.integers(0, 50, 1000), np.zeros(0, np.int64), np.array([3]),
             np.array([1, 1, 1]), np.arange(10)]
    for x in cases:
        assert np.array_equal(_unique(x), np.unique(x))
        for kw, name in (({"counts": True}, "return_counts"), ({"inverse": True}, "return_inverse")):
            got, want = _unique(x, **kw), np.unique(x, **{name: True})
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1].ravel())


def test_ordered_merge_of_summaries_equals_merging_one_by_one():
    """Pass 1 merges its parts pairwise (O(n log n)); the result is the one-by-one merge, order-dependent
    fields (the first labelled sequence) included."""
    from tokcal.distributed.summary import DatasetSummary, OrderedMerge

    rng = np.random.default_rng(3)
    parts = []
    for i in range(37):
        seq = np.sort(rng.integers(0, 60, 300)) + 40 * (i % 5)
        lab = rng.integers(-1, 50, 300) if i > 2 else np.full(300, -1)  # the first parts have no label
        parts.append(DatasetSummary.of_arrays(50, 16, seq, rng.integers(0, 100, 300), lab,
                                              {"d": {f"g{i % 4}"}}))
    one = DatasetSummary(50, 16)
    merged = OrderedMerge()
    for p in parts:
        one = one.merge(p)
        merged.add(p)
    tree = merged.result(DatasetSummary(50, 16))
    for name in ("n_rows", "label_counts", "seq_ids", "seq_counts", "labelled_seq", "labelled_count", "block_keys"):
        np.testing.assert_array_equal(getattr(tree, name), getattr(one, name), err_msg=name)
    assert tree.groups == one.groups
    assert tree.first_labelled_seq == one.first_labelled_seq == parts[3].first_labelled_seq
    assert OrderedMerge().result(one) is one


def test_unit_ids_by_one_search_equal_the_pairwise_search():
    """Block units: a batch's rows find their unit by one search of the keys as single integers; rows
    outside the keys' range take the search of the pairs, and a row of no unit is an error."""
    from tokcal.bootstrap import ResamplingUnits
    from tokcal.distributed.summary import StreamUnits
    from tokcal.errors import ValidationError

    rng = np.random.default_rng(5)
    seq = np.sort(rng.integers(0, 400, 5000))
    pos = rng.integers(0, 3000, 5000)
    keys = np.unique(np.stack([seq, pos // 64], axis=1), axis=0)
    info = ResamplingUnits(np.zeros(0, np.int64), np.zeros(len(keys), np.int64), "block", 64, 400, "test")
    units = StreamUnits(info, keys, 64)
    assert units._combined is not None
    got = units.ids(seq, pos)
    np.testing.assert_array_equal(keys[got], np.stack([seq, pos // 64], axis=1))
    pairwise = StreamUnits(info, keys, 64)
    pairwise.__dict__["_combined"] = None  # force the search of the pairs
    np.testing.assert_array_equal(pairwise.ids(seq, pos), got)
    with pytest.raises(ValidationError, match="not in the dataset summary"):
        units.ids(np.array([seq[0]]), np.array([64 * (int(keys[:, 1].max()) + 1)]))  # a block past every key
