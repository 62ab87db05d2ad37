"""tokcal.slices: token types, frequency/position buckets, groups, word lists, spec parsing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokcal import TokcalError, TokenTable
from tokcal.slices import (
    FrequencySlice,
    PositionSlice,
    TokenTypeSlice,
    WordListSlice,
    default_slices,
    parse_slice,
    parse_slices,
)
from tokcal.synthetic import make_table


@pytest.fixture(scope="module")
def table():
    return make_table(1500, 120, domains={"a": 0.8, "b": 1.2}, seq_len=40, seed=3)


def test_type_slice_on_gold_and_predicted(table):
    sl = TokenTypeSlice()
    codes = sl.codes(table)
    voc = table.vocabulary
    assert voc.convention == "byte-level"  # make_vocab spells word starts with Ġ
    assert [sl.labels[c] for c in codes] == [voc.token_type(y) for y in table.label]
    pred = parse_slice("type:predicted").codes(table)
    assert [sl.labels[c] for c in pred] == [voc.token_type(y) for y in table.predicted]


def test_frequency_buckets_from_counts(table):
    counts = np.zeros(table.vocab_size)
    counts[5], counts[7], counts[9] = 30.0, 20.0, 10.0  # ranks 0, 1, 2; everything else unseen
    sl = FrequencySlice(counts=counts, edges=(2, 3))
    assert sl.labels == ["top-2", "2-3", "3+", "unseen"]
    per = {5: 0, 7: 0, 9: 1}
    codes = sl.codes(table)
    np.testing.assert_array_equal(codes, [per.get(int(y), 3) for y in table.label])


def test_frequency_counted_on_reference_and_self(table):
    sl = FrequencySlice(edges=(10,))
    codes = sl.codes(table)
    freq = np.bincount(table.label, minlength=table.vocab_size)
    top10 = set(np.argsort(-freq, kind="stable")[:10].tolist())
    np.testing.assert_array_equal(codes == 0, np.isin(table.label, list(top10)))
    assert FrequencySlice().labels == ["top-100", "100-1k", "1k-10k", "10k+", "unseen"]
    ref = table.select(table.position < 5)
    pred = FrequencySlice(on="predicted", reference=ref).codes(table)
    ref_freq = np.bincount(ref.label, minlength=table.vocab_size)
    np.testing.assert_array_equal(pred == 4, ref_freq[table.predicted] == 0)


def test_unknown_gold_labels_get_minus_one(table):
    lab = table.label.copy()
    lab[::7] = -1
    t = TokenTable(sequence_id=table.sequence_id, position=table.position, label=lab, top_ids=table.top_ids,
                   top_logits=table.top_logits, label_logit=table.label_logit, log_normalizer=table.log_normalizer,
                   tail=table.tail, layout=table.layout, vocab_size=table.vocab_size, vocab=table.vocab)
    for spec in ("freq", "type", "words:" + "x"):
        if spec.startswith("words"):
            sl = WordListSlice(words=["the"])
        else:
            sl = parse_slice(spec)
        codes = sl.codes(t)
        assert (codes[lab < 0] == -1).all() and (codes[lab >= 0] >= 0).all()


def test_position_and_group_slices(table):
    sl = PositionSlice()
    assert sl.labels == ["0", "1-3", "4-15", "16-63", "64-255", "256+"]
    codes = sl.codes(table)
    np.testing.assert_array_equal(codes, np.searchsorted([1, 4, 16, 64, 256], table.position, side="right"))
    g = parse_slice("group:domain")
    np.testing.assert_array_equal(g.codes(table), table.groups["domain"].codes)
    assert g.labels == list(table.groups["domain"].categories) and g.name == "group:domain"


def test_word_list_from_file(tmp_path, table):
    f = tmp_path / "challenge.txt"
    f.write_text("# numbers and the\nthe\n 7 \n\n", encoding="utf-8")
    sl = parse_slice(f"words:{f}")
    assert sl.name == "words:challenge" and sl.labels == ["listed", "other"]
    codes = sl.codes(table)
    listed = {i for i, s in enumerate(table.vocabulary.pieces) if s.replace("Ġ", "").strip().lower() in {"the", "7"}}
    np.testing.assert_array_equal(codes == 0, np.isin(table.label, list(listed)))
    assert WordListSlice(words=[3]).codes(table).tolist() == np.where(table.label == 3, 0, 1).tolist()


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_slices_partition_the_labelled_tokens(data):
    n = data.draw(st.integers(1, 60))
    v = data.draw(st.integers(2, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    logits = rng.normal(size=(n, v)).astype(np.float32) * 3
    labels = rng.integers(0, v, n)
    vocab = [data.draw(st.sampled_from(["Ġa", "b", ".", "7", "\n", "<eos>", "<pad>", "Ġ", "x1", "é"])) + str(i)
             if i % 3 else data.draw(st.sampled_from(["Ġa", "b", ".", "7", "\n", "<eos>", "<pad>", "Ġ", "?"]))
             for i in range(v)]
    pos = rng.integers(0, 400, n)
    t = TokenTable.from_logits(logits, labels, positions=pos, top_k=min(4, v), vocab=vocab,
                               groups={"g": rng.choice(["x", "y", "z"], n)})
    counts = rng.integers(0, 3, v)
    for sl in [*default_slices(t), FrequencySlice(counts=counts, edges=(1, 2)), WordListSlice(words=["a", 1]),
               parse_slice("type:predicted")]:
        codes = sl.codes(t)
        assert codes.dtype == np.int32 and codes.shape == (n,)
        # every labelled token is in exactly one category
        assert ((codes >= 0) & (codes < len(sl.labels))).all()
        assert sum(int((codes == c).sum()) for c in range(len(sl.labels))) == n


def test_parse_specs_and_errors(table, tmp_path):
    names = [s.name for s in parse_slices(["freq", "freq:predicted", "type", "group:domain", "position"], table)]
    assert names == ["freq", "freq:predicted", "type", "group:domain", "position"]
    assert [s.name for s in parse_slices(None, table)] == ["freq", "freq:predicted", "type", "position",
                                                           "group:domain"]
    for bad, match in [("nope", "slices must be freq, freq:predicted"), ("freq:sideways", "predicted"),
                       ("group:", "group column"), ("words:", "file"),
                       (f"words:{tmp_path / 'missing.txt'}", "cannot read"), ("", "non-empty")]:
        with pytest.raises(TokcalError, match=match):
            parse_slice(bad)
    with pytest.raises(TokcalError, match="unique"):
        parse_slices(["freq", "freq"], table)
    with pytest.raises(TokcalError, match="slices must name a group column of the table"):
        parse_slice("group:lang").codes(table)
    no_vocab = TokenTable.from_logits(np.zeros((2, 3), np.float32) + [[1, 0, 0]], [0, 1], top_k=2)
    with pytest.raises(TokcalError, match="no vocabulary"):
        parse_slice("type").codes(no_vocab)
    with pytest.raises(TokcalError, match="counts"):
        FrequencySlice(counts=[1, 2]).codes(table)
    with pytest.raises(TokcalError, match="outside"):
        WordListSlice(words=[10**6]).codes(table)
