"""Damaged TokenTable files: page checksums, the metadata digest, and the structure the schema cannot express.

Done means: N seeded bit-flips of a table file each either raise a tokcal error or load a table
identical to the original (so every metric is identical too)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tokcal
from tokcal import TokenTable, synthetic
from tokcal.errors import SchemaError, TokcalError, ValidationError
from tokcal.sketch import MAX_VOCAB_SIZE, TailLayout

N_FLIPS = 400


def _same(a: TokenTable, b: TokenTable) -> bool:
    return a.to_arrow().equals(b.to_arrow(), check_metadata=True)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("flip") / "t.parquet"
    t = synthetic.make_table(120, 40, domains={"a": 0.7, "b": 1.3}, seq_len=20, seed=0, top_k=8)
    t.write_parquet(path)
    return path, TokenTable.read_parquet(path)


def test_written_files_are_lz4_packed_with_dictionaries_only_for_flat_integers_and_groups(original):
    path, ref = original
    pf = pq.ParquetFile(path)
    rg = pf.metadata.row_group(0)
    enc = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    assert {c.compression for c in enc.values()} == {"LZ4"}
    for name, c in enc.items():
        flat_int = name in ("sequence_id", "position", "label") or name.startswith("group:")
        assert ("RLE_DICTIONARY" in c.encodings) == flat_int, (name, c.encodings)
    schema = pf.schema_arrow
    widths = {"top_ids": 8, "top_logits": 8, "tail_logz": ref.layout.n_nodes, "tail_mean": ref.layout.n_nodes}
    for name, width in widths.items():  # one fixed-size value per row: little-endian int32 / float32, in order
        assert schema.field(name).type == pa.binary(4 * width)
    row = pq.read_table(path, columns=["top_ids", "top_logits"]).slice(3, 1).to_pylist()[0]
    np.testing.assert_array_equal(np.frombuffer(row["top_ids"], "<i4"), ref.top_ids[3])
    np.testing.assert_array_equal(np.frombuffer(row["top_logits"], "<f4"), ref.top_logits[3])
    assert json.loads(schema.metadata[b"tokcal"])["schema_version"] == 3


def test_schema_2_files_with_list_columns_read_alike(original, tmp_path):
    path, ref = original
    old = tmp_path / "schema2.parquet"
    arrow = ref.to_arrow()  # lists, as tokcal wrote them up to table schema 2
    meta = json.loads(arrow.schema.metadata[b"tokcal"])
    meta["schema_version"] = 2
    pq.write_table(arrow.replace_schema_metadata({b"tokcal": json.dumps(meta).encode()}), old, compression="zstd")
    assert _same(TokenTable.read_parquet(old), ref)
    assert [len(b) for b in TokenTable.iter_parquet(old, batch_rows=50)] == [50, 50, 20]


def test_a_packed_column_of_the_wrong_width_is_a_clear_error(original, tmp_path):
    path, ref = original
    arrow = ref.to_arrow(packed=True)
    i = arrow.column_names.index("top_logits")
    odd = pa.array([b"\0" * 30] * len(ref), pa.binary(30))
    pq.write_table(arrow.set_column(i, "top_logits", odd), tmp_path / "odd.parquet")
    with pytest.raises(SchemaError, match="odd.parquet.*top_logits.*30 bytes per row"):
        TokenTable.read_parquet(tmp_path / "odd.parquet")


def test_written_files_carry_page_checksums_and_a_metadata_digest(original):
    path, _ = original
    md = pq.ParquetFile(path).schema_arrow.metadata
    assert b"tokcal.sha256" in md
    # Page CRCs are verified: rewrite one byte inside the first data page of a column chunk.
    raw = bytearray(path.read_bytes())
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    raw[(col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size - 4] ^= 0x10
    bad = path.with_name("crc.parquet")
    bad.write_bytes(bytes(raw))
    with pytest.raises(SchemaError):
        TokenTable.read_parquet(bad)


def test_seeded_bit_flips_error_clearly_or_load_identically(original, tmp_path):
    path, ref = original
    raw = path.read_bytes()
    ev_ref = tokcal.evaluate(ref, bootstrap=0, slices=["group:domain"]).to_dict()
    rng = np.random.default_rng(20261201)
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    outcomes = {"error": 0, "identical": 0}
    for i in range(N_FLIPS):
        b = bytearray(raw)
        # half anywhere, half in the footer (metadata, schema, page locations: no page CRC covers it)
        pos = int(rng.integers(len(b))) if i % 2 else len(b) - 1 - int(rng.integers(footer))
        b[pos] ^= 1 << int(rng.integers(8))
        p = tmp_path / "flip.parquet"
        p.write_bytes(bytes(b))
        try:
            got = TokenTable.read_parquet(p)
        except TokcalError as e:
            assert str(e), pos
            outcomes["error"] += 1
            continue
        assert _same(got, ref), f"byte {pos} flipped: loaded a different table"
        assert tokcal.evaluate(got, bootstrap=0, slices=["group:domain"]).to_dict() == ev_ref
        outcomes["identical"] += 1
    assert outcomes["error"] > N_FLIPS // 2, outcomes


def _write(tmp_path, arrow: pa.Table, name="bad.parquet"):
    path = tmp_path / name
    pq.write_table(arrow, path)
    return path


def _with_meta(arrow: pa.Table, meta) -> pa.Table:
    text = meta if isinstance(meta, (str, bytes)) else json.dumps(meta)
    return arrow.replace_schema_metadata({b"tokcal": text.encode() if isinstance(text, str) else text})


@pytest.fixture()
def arrow(original):
    return original[1].to_arrow()


def _meta(arrow):
    return json.loads(arrow.schema.metadata[b"tokcal"])


def test_old_files_without_checksums_still_load(tmp_path, arrow, original):
    plain = arrow.replace_schema_metadata({b"tokcal": arrow.schema.metadata[b"tokcal"]})
    path = _write(tmp_path, plain)
    assert _same(TokenTable.read_parquet(path), original[1])


def test_edited_metadata_fails_its_digest(tmp_path, arrow):
    md = dict(arrow.schema.metadata)
    md[b"tokcal"] = md[b"tokcal"].replace(b'"vocab_size": 40', b'"vocab_size": 41')
    path = _write(tmp_path, arrow.replace_schema_metadata(md))
    with pytest.raises(SchemaError, match="does not match its checksum"):
        TokenTable.read_parquet(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: "[1, 2]", "a JSON list, expected an object"),
    (lambda m: "not json {", "not valid JSON"),
    (lambda m: b"\xff\xfe{}", "not valid JSON"),
    (lambda m: '{"schema_version": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper"),
    (lambda m: {k: v for k, v in m.items() if k != "tail_layout"}, "'tail_layout' is missing"),
    (lambda m: {**m, "vocab_size": "40"}, "'vocab_size' is '40'"),
    (lambda m: {**m, "vocab_size": True}, "'vocab_size' is True"),
    (lambda m: json.dumps(m).replace('"vocab_size": 40', '"vocab_size": Infinity'), "Infinity"),
    (lambda m: json.dumps(m).replace('"vocab_size": 40', '"vocab_size": 1e999'), "overflows"),
    (lambda m: {**m, "vocab_size": MAX_VOCAB_SIZE + 1}, "vocab_size=8388608 outside"),
    (lambda m: {**m, "k": 7}, "metadata says k=7"),
    (lambda m: {**m, "vocabulary": None, "vocab": [1] * 40}, "'vocab' must be"),
    (lambda m: {**m, "source": []}, "'source' is"),
    (lambda m: {**m, "tail_layout": {**m["tail_layout"], "kind": "gaussian"}}, "unknown kind 'gaussian'"),
    (lambda m: {**m, "tail_layout": "binned"}, "'tail_layout' is 'binned'"),
    (lambda m: {**m, "tail_layout": {"kind": "binned"}}, "tail layout: expected"),
    (lambda m: {**m, "tail_layout": {**m["tail_layout"], "betas": m["tail_layout"]["betas"][::-1]}},
     "strictly ascending"),
    (lambda m: json.dumps({**m, "tail_layout": {**m["tail_layout"], "betas": [0.0] + [1.0] * 17}}),
     "strictly ascending"),
    (lambda m: json.dumps(m).replace('"betas": [0.0', '"betas": [NaN'), "NaN"),
    (lambda m: {**m, "tail_layout": {**m["tail_layout"], "betas": [0.0, 0.5]}}, "tail: expected shape"),
])
def test_damaged_metadata_is_a_clear_error(tmp_path, arrow, change, message):
    path = _write(tmp_path, _with_meta(arrow, change(_meta(arrow))))
    with pytest.raises(TokcalError, match=message.replace("[", r"\[").replace("(", r"\(")) as e:
        TokenTable.read_parquet(path)
    assert str(path) in str(e.value)
    with pytest.raises(TokcalError):
        list(TokenTable.iter_parquet(path, batch_rows=50))


def _replace(arrow: pa.Table, name: str, values) -> pa.Table:
    i = arrow.column_names.index(name)
    return arrow.set_column(i, name, values)


def _fixed(arr: np.ndarray, typ=pa.int32()) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), typ), arr.shape[1])


def test_structure_the_schema_cannot_express(tmp_path, arrow, original):
    t = original[1]
    dup = t.top_ids.copy()
    dup[7, 3] = dup[7, 1]
    cases = {
        "top_ids: row 7 repeats an id": _replace(arrow, "top_ids", _fixed(dup)),
        "'sequence_id': row 5 is null": _replace(arrow, "sequence_id", pa.array(
            [None if i == 5 else int(v) for i, v in enumerate(t.sequence_id)], pa.int64())),
        "'position': row 0 is null": _replace(arrow, "position", pa.array(
            [None] + t.position[1:].tolist(), pa.int32())),
        "'top_logits': row 3 holds a null": _replace(arrow, "top_logits", pa.FixedSizeListArray.from_arrays(
            pa.array([None if i == 3 * 8 + 2 else float(v) for i, v in enumerate(t.top_logits.ravel())],
                     pa.float32()), 8)),
        "'position' of type int64 cannot be read": _replace(arrow, "position", pa.array(
            np.r_[t.position[:-1].astype(np.int64), 1 << 40])),
        "'label' of type string cannot be read": _replace(arrow, "label", pa.array([str(v) + "x" for v in t.label])),
        "'top_ids' has type list<element: int64>, expected fixed_size_list": _replace(
            arrow, "top_ids", pa.array(t.top_ids.tolist())),
        "'group:domain': row 2 is null": _replace(arrow, "group:domain", pa.array(
            [None if i == 2 else v for i, v in enumerate(t.groups["domain"].values())])),
    }
    for message, bad in cases.items():
        path = _write(tmp_path, bad.replace_schema_metadata({b"tokcal": arrow.schema.metadata[b"tokcal"]}))
        with pytest.raises(TokcalError, match=message.replace("(", r"\(").replace("[", r"\[")):
            TokenTable.read_parquet(path)


def test_tail_layout_and_vocab_bounds_in_the_constructor(original):
    t = original[1]
    for kind, betas in (("gaussian", TailLayout().betas), ("binned", (0.0,)), ("binned", (0.1, 1.0)),
                        ("binned", (0.0, float("nan"))), ("binned", (0.0, float("inf")))):
        with pytest.raises(ValidationError, match="tail layout"):
            TailLayout(kind, betas)
    assert TailLayout().n_nodes == 18
    with pytest.raises(ValidationError, match="vocab_size=0 outside"):
        TokenTable(sequence_id=t.sequence_id, position=t.position, label=np.full(len(t), -1), top_ids=t.top_ids,
                   top_logits=t.top_logits, label_logit=t.label_logit, log_normalizer=t.log_normalizer,
                   tail=t.tail, layout=t.layout, vocab_size=0)


def test_a_group_column_renamed_in_the_footer_is_a_clear_error(original, tmp_path):
    """Column names live in the Parquet footer, which no page checksum covers: the (digested) tokcal
    metadata lists the group columns, so a flipped or edited name is caught, not read as another group."""
    path, ref = original
    arrow = ref.to_arrow(packed=True)
    renamed = arrow.rename_columns([("group:dom" if c == "group:domain" else c) for c in arrow.column_names])
    pq.write_table(renamed.replace_schema_metadata(arrow.schema.metadata), tmp_path / "renamed.parquet")
    with pytest.raises(SchemaError, match=r"renamed.parquet: group columns \['dom'\], the tokcal metadata lists "
                                          r"\['domain'\]"):
        TokenTable.read_parquet(tmp_path / "renamed.parquet")
    dropped = ref.to_arrow().drop_columns(["group:domain"])  # an Arrow table a user edited: fine
    assert TokenTable.from_arrow(dropped).groups == {}
