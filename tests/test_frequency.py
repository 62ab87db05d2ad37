"""tokcal.frequency: reference frequencies (counts file, table, text corpus, id-order proxy) against
brute-force counting and ranking, and their record in the evaluation and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, bpe_tokenizer
from typer.testing import CliRunner

from tokcal import SchemaError, TokenTable, ValidationError, evaluate
from tokcal.calibrators import AdaptiveTemperature
from tokcal.cli import app
from tokcal.errors import TokcalWarning
from tokcal.frequency import FrequencyReference, load_reference
from tokcal.slices import FrequencySlice, parse_slices
from tokcal.synthetic import make_table
from tokcal.vocab import Vocabulary


@pytest.fixture(scope="module")
def table():
    return make_table(3000, 400, seq_len=50, seed=4)


def brute_buckets(counts: np.ndarray, ids: np.ndarray, edges=(100, 1000, 10000)) -> list[int]:
    """Bucket of each id: sort ids by (-count, id), rank -> bucket; count 0 -> unseen."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    rank = {i: r for r, i in enumerate(order)}
    out = []
    for i in ids:
        if counts[i] == 0:
            out.append(len(edges) + 1)
        else:
            out.append(sum(rank[i] >= e for e in edges))
    return out


def test_counts_file_ranks_equal_brute_force(tmp_path, table):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, table.vocab_size) * (rng.random(table.vocab_size) < 0.8)
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"what": "anything else is ignored", "counts": counts.tolist()}))
    sl = FrequencySlice(reference=path, edges=(10, 100))
    codes = sl.codes(table)
    np.testing.assert_array_equal(codes, brute_buckets(counts, table.label, (10, 100)))
    ref = sl.used
    assert ref.kind == "counts" and ref.name == "counts.json" and ref.n_tokens == counts.sum()
    assert sl.settings()["reference"] == ref.describe() and f"ref=counts:{ref.digest}" in sl.signature()
    back = FrequencyReference.from_json(ref.to_json(tmp_path / "again.json"))
    assert back.digest == ref.digest


@pytest.mark.parametrize("content, message", [
    ('{"count": [1]}', r'\{"counts": \[count per id\]\}'),
    ('{"counts": [1, 2]}', "2 counts for a vocabulary of 400 ids"),
    ('{"counts": [1, "x"]}', r"counts\[1\] must be a number, got 'x'"),
    ('{"counts": [1, true]}', r"counts\[1\] must be a number, got True"),
    ("[1, 2", "not valid JSON"),
])
def test_bad_counts_files_name_the_file_and_entry(tmp_path, table, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SchemaError, match=message) as e:
        load_reference(path, table)
    assert "bad.json" in str(e.value)
    negative = np.ones(table.vocab_size)
    negative[7] = -3
    path.write_text(json.dumps({"counts": negative.tolist()}))
    with pytest.raises(SchemaError, match=r"bad\.json: counts\[7\] must be greater than or equal to 0, got -3\.0"):
        load_reference(path, table)


def test_shipped_demo_counts_are_a_reference():
    from tokcal.demo.run import ASSETS_DIR, training_counts

    ref = training_counts()
    raw = json.loads((ASSETS_DIR / "token_counts.json").read_text())["counts"]
    assert ref.kind == "counts" and ref.vocab_size == 4096 == len(raw) and ref.n_tokens == sum(raw)


def test_table_reference_streams_and_equals_bincount(tmp_path, table):
    other = make_table(2000, 400, seq_len=40, seed=9)
    path = other.write_parquet(tmp_path / "ref.parquet")
    ref = load_reference(path, table)
    np.testing.assert_array_equal(ref.counts, np.bincount(other.label, minlength=400))
    assert ref.kind == "table" and ref.name == "ref.parquet"
    np.testing.assert_array_equal(load_reference(other, table).counts, ref.counts)
    with pytest.raises(ValidationError, match="vocab_size 50, but the evaluated table's is 400"):
        load_reference(make_table(100, 50, seed=1), table)


def test_text_corpus_is_counted_with_the_tokenizer(tmp_path):
    tok = bpe_tokenizer()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PARAGRAPHS * 2) + "\n")
    ref = FrequencyReference.from_text(corpus, tok)
    want = np.zeros(len(tok))
    for line in corpus.read_text().splitlines(keepends=True):
        for i in tok.encode(line, add_special_tokens=False):
            want[i] += 1
    np.testing.assert_array_equal(ref.counts, want)
    assert ref.kind == "text" and ref.n_tokens == want.sum()


def test_default_is_id_order_for_byte_level_else_the_table_with_a_warning(table):
    assert table.vocabulary.convention == "byte-level"
    sl = FrequencySlice(edges=(10, 100))
    codes = sl.codes(table)
    assert sl.used.kind == "id-order"
    np.testing.assert_array_equal(codes, np.searchsorted([10, 100], table.label, side="right"))
    sp = TokenTable(sequence_id=table.sequence_id, position=table.position, label=table.label,
                    top_ids=table.top_ids, top_logits=table.top_logits, label_logit=table.label_logit,
                    log_normalizer=table.log_normalizer, tail=table.tail, layout=table.layout,
                    vocab_size=table.vocab_size,
                    vocab=Vocabulary([p.replace("Ġ", "▁") for p in table.vocabulary.pieces], "sentencepiece"))
    with pytest.warns(TokcalWarning, match="'sentencepiece' vocabulary has no frequency proxy.*3000 tokens"):
        codes = sl.codes(sp)
    assert sl.used.kind == "evaluated-table"
    np.testing.assert_array_equal(codes, brute_buckets(np.bincount(table.label, minlength=400), table.label,
                                                       (10, 100)))


def test_evaluation_records_the_reference(tmp_path, table):
    counts = np.bincount(make_table(5000, 400, seed=11).label, minlength=400)
    ev = evaluate(table, slices=["freq", "freq:predicted", "type"], bootstrap=0, freq_ref=counts).to_dict()
    st = ev["settings"]["slices"]
    assert st["freq"]["reference"]["kind"] == "counts" == st["freq:predicted"]["reference"]["kind"]
    parts = st["freq"]["signature"].split("|")
    assert parts[0] == "slice:freq" and {"on=gold", "edges=100,1000,10000"} <= set(parts)
    assert f"ref=counts:{FrequencyReference.from_counts(counts).digest}" in parts
    assert st["type"]["convention"] == "byte-level" and "rules=tokcal-vocab-2" in st["type"]["signature"]
    default = evaluate(table, bootstrap=0).to_dict()["settings"]["slices"]
    assert default["freq"]["reference"]["kind"] == "id-order"
    assert default["freq"]["signature"] != st["freq"]["signature"]
    from tokcal.report.data import slice_definition

    assert slice_definition(ev, "freq") == f"frequency reference: counts file (counts, {counts.sum():,} tokens)"
    assert parse_slices(["freq"], table, reference=counts)[0].reference.kind == "counts"  # resolved once


def test_cli_freq_ref_on_evaluate_check_and_fit(tmp_path, table):
    tpath = table.write_parquet(tmp_path / "t.parquet")
    counts = np.bincount(make_table(5000, 400, seed=11).label, minlength=400)
    cpath = tmp_path / "counts.json"
    cpath.write_text(json.dumps({"counts": counts.tolist()}))
    out = tmp_path / "ev.json"
    r = CliRunner().invoke(app, ["evaluate", str(tpath), "--freq-ref", str(cpath), "--bootstrap", "0",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "frequency reference: counts file (counts.json" in " ".join(r.output.split())
    assert json.loads(out.read_text())["settings"]["slices"]["freq"]["reference"]["name"] == "counts.json"
    r = CliRunner().invoke(app, ["check", str(tpath), "--slice", "freq", "--max-slice-ece", "1",
                                 "--freq-ref", str(cpath), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    bad = tmp_path / "short.json"
    bad.write_text('{"counts": [1, 2, 3]}')
    r = CliRunner().invoke(app, ["evaluate", str(tpath), "--freq-ref", str(bad)])
    assert r.exit_code == 2 and "short.json: 3 counts for a vocabulary of 400 ids" in " ".join(r.output.split())
    cal = tmp_path / "cal.json"
    r = CliRunner().invoke(app, ["fit", str(tpath), "--method", "adaptive", "--freq-ref", str(cpath), "-o", str(cal),
                                 "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads(cal.read_text())["fit"]["freq_reference"].startswith("counts:")
    r = CliRunner().invoke(app, ["fit", str(tpath), "--freq-ref", str(cpath), "-o", str(cal)])
    assert r.exit_code == 2 and "uses no token frequency (adaptive and group --by freq do)" in r.output


def test_adaptive_frequency_feature_uses_the_reference(table):
    counts = np.zeros(400)
    counts[:5] = 1000.0
    cal = AdaptiveTemperature().fit(table, freq_reference=counts)
    np.testing.assert_array_equal(cal.freq_ids, np.arange(5))
    np.testing.assert_array_equal(cal.freq_counts, counts[:5])


def test_group_temperature_by_frequency_bucket(tmp_path, table):
    """GroupTemperature("freq") groups tokens exactly as the freq:predicted slice does, and keeps the
    buckets of every id for decoding."""
    from tokcal.calibrators import GroupTemperature, load_calibrator
    from tokcal.synthetic import make_logits

    counts = np.bincount(make_table(5000, 400, seed=11).label, minlength=400)
    cal = GroupTemperature("freq").fit(table, freq_reference=counts)
    sl = FrequencySlice(name="freq:predicted", on="predicted", reference=counts)
    by_slice = np.asarray(sl.labels)[sl.codes(table)]
    np.testing.assert_array_equal(cal._table_groups(table), by_slice)
    assert set(cal.temperatures) == set(by_slice) and cal.freq_reference.startswith("counts:")
    z = make_logits(6, 400, seed=3)
    buckets = sl.id_buckets(table)[z.argmax(axis=1)]
    expect = np.array([cal.temperatures.get(sl.labels[b], cal.global_temperature) for b in buckets])
    shifted = z - z.max(axis=1, keepdims=True)  # temperature calibrators subtract the row maximum first
    np.testing.assert_allclose(cal.transform_logits(z), shifted / expect[:, None], rtol=1e-6)
    cal.save(tmp_path / "g.json")
    np.testing.assert_allclose(load_calibrator(tmp_path / "g.json").transform_logits(z), cal.transform_logits(z))
    with pytest.raises(ValidationError, match="only used with by='freq'"):
        GroupTemperature("domain").fit(table, freq_reference=counts)
    cpath = tmp_path / "counts.json"
    cpath.write_text(json.dumps({"counts": counts.tolist()}))
    r = CliRunner().invoke(app, ["fit", str(table.write_parquet(tmp_path / "t.parquet")), "--method", "group",
                                 "--by", "freq", "--freq-ref", str(cpath), "-o", str(tmp_path / "c.json"),
                                 "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c.json").read_text())["freq_labels"][0] == "top-100"
