"""DatasetWriter with several writers in one directory: own journals and part names, a merged
manifest, resume across writers, periodic flushing, version-1 directories, damaged journals."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tokcal import TokenTable
from tokcal.errors import TokcalError
from tokcal.sources.dataset import MANIFEST, DatasetWriter, dataset_parts, read_manifest
from tokcal.synthetic import make_table

SETTINGS = {"model": "synthetic", "top_k": 8}
BASE = make_table(2000, 50, seq_len=40, top_k=8, seed=1)  # 50 sequences


def doc_table(s: int) -> tuple[TokenTable, dict]:
    t = BASE.select(np.flatnonzero(BASE.sequence_id == s))
    return t, {"id": f"doc{s}", "hash": f"h{s}", "sequence_id": s, "rows": len(t)}


def add(writer: DatasetWriter, s: int) -> None:
    t, d = doc_table(s)
    writer.add(t, [d])


def listed(out) -> list[str]:
    return [d["id"] for p in read_manifest(out)["parts"] for d in p["documents"]]


def test_two_writers_interleaved_then_merged_equal_one_table(tmp_path):
    out = tmp_path / "ds"
    a = DatasetWriter(out, SETTINGS, part_rows=100, writer="rank00000")
    b = DatasetWriter(out, SETTINGS, part_rows=100, writer="rank00001")
    for s in range(50):
        add((a if s % 2 == 0 else b), s)
    a.flush()
    b.flush()
    # before the merge the journals already make the directory complete for readers
    assert sorted(listed(out)) == sorted(f"doc{s}" for s in range(50))
    assert json.loads((out / MANIFEST).read_text())["parts"] == []
    names = sorted(p.name for p in dataset_parts(out))
    assert names[0] == "part-rank00000-000000.parquet" and names[-1].startswith("part-rank00001-")
    merged = a.merge()
    assert len(merged["parts"]) == len(a.parts) + len(b.parts)
    t = TokenTable.read_parquet(out)
    t = t.select(np.lexsort((t.position, t.sequence_id)))
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "tail"):
        np.testing.assert_array_equal(getattr(t, col), getattr(BASE, col), err_msg=col)
    # a third writer (another world size on resume) sees every document as done
    c = DatasetWriter(out, SETTINGS, writer="main")
    assert all(c.is_done(f"doc{s}", f"h{s}", s) for s in range(50))
    with pytest.raises(TokcalError, match="doc3.*changed"):
        c.is_done("doc3", "other", 3)


def test_flush_seconds_writes_finished_documents_without_a_full_part(tmp_path):
    out = tmp_path / "ds"
    w = DatasetWriter(out, SETTINGS, part_rows=10**9, flush_seconds=0.2)
    add(w, 0)
    assert listed(out) == []  # neither full nor old enough
    time.sleep(0.25)
    add(w, 1)
    assert listed(out) == ["doc0", "doc1"] and w.buffered_documents == 0
    w0 = DatasetWriter(tmp_path / "eager", SETTINGS, part_rows=10**9, flush_seconds=0)
    w0.add(None, [{"id": "empty", "hash": "h", "sequence_id": 7, "rows": 0}])  # no tokens: listed, no file
    assert listed(tmp_path / "eager") == ["empty"] and dataset_parts(tmp_path / "eager") == []


def test_exception_inside_the_context_flushes_finished_documents(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), DatasetWriter(out, SETTINGS, part_rows=10**9, flush_seconds=100) as w:
        add(w, 0)
        raise KeyboardInterrupt
    assert listed(out) == ["doc0"]


def test_version_1_directory_is_read_and_resumed(tmp_path):
    out = tmp_path / "v1"
    out.mkdir()
    t0, d0 = doc_table(0)
    t0.write_parquet(out / "part-00000.parquet")
    from tokcal.sources.dataset import stable_hash

    settings = json.loads(json.dumps(SETTINGS, sort_keys=True))
    (out / MANIFEST).write_text(json.dumps({"format": "tokcal-dataset", "version": 1, "settings": settings,
                                            "settings_hash": stable_hash(settings),
                                            "parts": [{"file": "part-00000.parquet", "rows": len(t0),
                                                       "documents": [d0]}]}))
    t0.write_parquet(out / "part-00001.parquet")  # a version-1 crash leftover, listed nowhere
    assert len(TokenTable.read_parquet(out)) == len(t0)
    w = DatasetWriter(out, SETTINGS)
    assert not (out / "part-00001.parquet").exists() and w.is_done("doc0", "h0", 0)
    add(w, 1)
    w.close()
    m = json.loads((out / MANIFEST).read_text())
    assert m["version"] == 2 and [p["file"] for p in m["parts"]] == ["part-00000.parquet", "part-main-000000.parquet"]
    assert TokenTable.read_parquet(out).n_sequences == 2


def test_damaged_or_foreign_journals_and_bad_arguments_are_clear_errors(tmp_path):
    out = tmp_path / "ds"
    w = DatasetWriter(out, SETTINGS, writer="a")
    add(w, 0)
    w.close()
    (out / "writers" / "b.json").write_text("{")
    with pytest.raises(TokcalError, match=r"b\.json: not valid JSON"):
        DatasetWriter(out, SETTINGS, writer="c")
    (out / "writers" / "b.json").write_text(json.dumps({"format": "tokcal-dataset-writer", "settings_hash": "x",
                                                        "parts": []}))
    with pytest.raises(TokcalError, match="other settings"):
        read_manifest(out)
    (out / "writers" / "b.json").write_text(json.dumps({"format": "tokcal-dataset-writer", "settings_hash":
                                                        w.settings_hash, "parts": [{"file": "../x.parquet",
                                                                                    "documents": []}]}))
    with pytest.raises(TokcalError, match="not a part file name"):
        read_manifest(out)
    (out / "writers" / "b.json").write_text(json.dumps({"format": "tokcal-dataset-writer", "settings_hash":
                                                        w.settings_hash, "parts": [{
                                                            "file": None, "writer": "b", "index": 0, "documents": [
                                                                {"id": "doc0", "hash": "h0", "sequence_id": 0}]}]}))
    with pytest.raises(TokcalError, match="doc0.*listed by two parts"):
        w.merge()
    for bad, field in (({"writer": "../x"}, "writer"), ({"writer": ""}, "writer"), ({"part_rows": 0}, "part_rows"),
                       ({"part_rows": True}, "part_rows"), ({"flush_seconds": -1}, "flush_seconds"),
                       ({"flush_seconds": float("nan")}, "flush_seconds")):
        with pytest.raises(TokcalError, match=rf"^DatasetWriter: {field} .*, got "):
            DatasetWriter(tmp_path / "other", SETTINGS, **bad)


def test_an_output_directory_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokcalError, match=r"file/ds: cannot create the output directory \(Not a directory\)"):
        DatasetWriter(tmp_path / "file" / "ds", SETTINGS)
