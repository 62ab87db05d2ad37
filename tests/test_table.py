"""TokenTable: validation, selection, concat, Parquet round trips and bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokcal import TokenTable
from tokcal.errors import SchemaError, TokcalError, ValidationError


def make(n: int = 300, vocab: int = 500, seed: int = 0, **kw) -> TokenTable:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, vocab)).astype(np.float32)
    labels = rng.integers(0, vocab, n)
    labels[::17] = -1
    return TokenTable.from_logits(
        z, labels, sequence_ids=np.arange(n) // 10, positions=np.arange(n) % 10, top_k=32,
        groups={"domain": np.where(np.arange(n) < n // 2, "bible", "fortunes")},
        features=rng.normal(size=(n, 2)), vocab=[f"tok{i}" for i in range(vocab)],
        source={"model": "random"}, **kw,
    )


def assert_same(a: TokenTable, b: TokenTable) -> None:
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "label_logit",
                "log_normalizer", "tail", "features"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    assert a.layout == b.layout and a.vocab_size == b.vocab_size and a.vocab == b.vocab
    assert a.source == b.source
    assert set(a.groups) == set(b.groups)
    for name in a.groups:
        np.testing.assert_array_equal(a.groups[name].values(), b.groups[name].values())


def test_parquet_round_trip_file_and_directory(tmp_path):
    t = make()
    t.write_parquet(tmp_path / "t.parquet")
    assert_same(t, TokenTable.read_parquet(tmp_path / "t.parquet"))
    parts = tmp_path / "ds"
    t.select(np.arange(0, 100)).write_parquet(parts / "part-00000.parquet")
    t.select(np.arange(100, 300)).write_parquet(parts / "part-00001.parquet")
    assert_same(t, TokenTable.read_parquet(parts))
    batches = list(TokenTable.iter_parquet(parts, batch_rows=64))
    assert max(len(b) for b in batches) <= 64
    assert_same(t, TokenTable.concat(batches))
    assert not [p for p in os.listdir(parts) if p.endswith(".tmp")]


def test_storage_is_under_512_bytes_per_token_at_k32(tmp_path):
    rng = np.random.default_rng(0)
    n, vocab = 4000, 8000
    z = (rng.normal(0, 2, (n, vocab)) - 1.2 * np.log(rng.permutation(vocab) + 1)).astype(np.float32)
    t = TokenTable.from_logits(z, rng.integers(0, vocab, n), sequence_ids=np.arange(n) // 100, top_k=32)
    path = t.write_parquet(tmp_path / "t.parquet")
    per_token = (path.stat().st_size - len(json.dumps(t.metadata()))) / n
    assert per_token <= 512, per_token


def test_select_concat_and_groups():
    t = make()
    sub = t[t.groups["domain"].values() == "fortunes"]
    assert len(sub) == 150 and set(sub.groups["domain"].values()) == {"fortunes"}
    both = TokenTable.concat([t.select(np.arange(150, 300)), t.select(np.arange(150))])
    assert sorted(both.groups["domain"].categories) == ["bible", "fortunes"]
    np.testing.assert_array_equal(np.sort(both.label), np.sort(t.label))
    assert (both.groups["domain"].values()[:150] == "fortunes").all()
    assert t.token_strings([3, 7]) == ["tok3", "tok7"]
    with pytest.raises(ValidationError, match="empty"):
        t.select(np.zeros(len(t), bool))
    with pytest.raises(ValidationError, match="no group column 'split'"):
        t.group("split")


def test_concat_refuses_mismatched_vocab():
    a, b = make(vocab=500), make(vocab=400)
    with pytest.raises(ValidationError, match="vocab_size 400"):
        TokenTable.concat([a, b])


def corrupt(t: TokenTable, **changes) -> dict:
    kw = {c: getattr(t, c).copy() for c in ("sequence_id", "position", "label", "top_ids", "top_logits",
                                            "label_logit", "log_normalizer", "tail")}
    kw.update(layout=t.layout, vocab_size=t.vocab_size)
    for col, (row, value) in changes.items():
        kw[col][row] = value
    return kw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": (5, 500)}, "label: row 5 .*outside"),
        ({"label": (2, -4)}, "label: row 2"),
        ({"top_logits": (7, np.nan)}, "top_logits: row 7 is not finite"),
        ({"top_ids": (3, -1)}, "top_ids: row 3"),
        ({"log_normalizer": (9, np.inf)}, "log_normalizer: row 9"),
        ({"label_logit": (1, np.nan)}, "label_logit: row 1 is not finite"),
        ({"tail": (4, np.nan)}, "tail: row 4"),
    ],
)
def test_validation_names_column_and_row(change, message):
    t = make()
    with pytest.raises(ValidationError, match=message):
        TokenTable(**corrupt(t, **change))


def test_validation_unsorted_and_shapes():
    t = make()
    kw = corrupt(t)
    kw["top_logits"][11] = kw["top_logits"][11][::-1]
    with pytest.raises(ValidationError, match="top_logits: row 11 is not sorted"):
        TokenTable(**kw)
    kw = corrupt(t)
    kw["position"] = kw["position"][:-1]
    with pytest.raises(ValidationError, match=r"position: expected shape \(300,\)"):
        TokenTable(**kw)
    with pytest.raises(ValidationError, match="empty TokenTable"):
        TokenTable(**{k: (v[:0] if isinstance(v, np.ndarray) else v) for k, v in corrupt(t).items()})


def test_bad_files_raise_schema_errors(tmp_path):
    t = make()
    good = t.write_parquet(tmp_path / "good.parquet")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SchemaError, match="truncated.parquet"):
        TokenTable.read_parquet(truncated)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign)
    with pytest.raises(SchemaError, match="foreign.parquet: not a tokcal TokenTable"):
        TokenTable.read_parquet(foreign)
    arrow = t.to_arrow()
    meta = json.loads(arrow.schema.metadata[b"tokcal"])
    meta["schema_version"] = 99
    pq.write_table(arrow.replace_schema_metadata({b"tokcal": json.dumps(meta).encode()}), tmp_path / "v99.parquet")
    with pytest.raises(SchemaError, match="schema version 99"):
        TokenTable.read_parquet(tmp_path / "v99.parquet")
    pq.write_table(arrow.drop(["label_logit"]), tmp_path / "missing.parquet")
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['label_logit'\]"):
        TokenTable.read_parquet(tmp_path / "missing.parquet")
    with pytest.raises(SchemaError, match="no such file"):
        TokenTable.read_parquet(tmp_path / "nope.parquet")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(SchemaError, match="no \\*.parquet parts"):
        TokenTable.read_parquet(tmp_path / "emptydir")


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    t = make()
    path = t.write_parquet(tmp_path / "t.parquet")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(TokcalError, match="t.parquet: cannot write .disk full"):
        make(seed=1).write_parquet(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_import_tokcal_does_not_import_torch():
    code = "import sys, tokcal; tokcal.TokenTable; tokcal.metrics; assert 'torch' not in sys.modules; " \
           "assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
