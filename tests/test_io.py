"""Atomic writes (parents, permissions, stale temps, unwritable targets) and strict JSON parsing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tokcal
from tokcal._io import MAX_JSON_DEPTH, _temp_prefix, atomic_write, clean_stale_temps, parse_json, read_json
from tokcal.errors import SchemaError, TokcalError
from tokcal.integrations.abstain import Abstainer


def _write_text(text: str):
    return lambda tmp: Path(tmp).write_text(text)


def test_atomic_write_creates_parents_and_new_files_get_umask_mode(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    old = os.umask(0o022)
    try:
        atomic_write(target, _write_text("x"))
    finally:
        os.umask(old)
    assert target.read_text() == "x"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_rewriting_keeps_the_file_mode(tmp_path):
    target = tmp_path / "secret.json"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write(target, _write_text("new"))
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o640)
    tokcal.calibrators.Temperature(temperature=1.5).save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_abstainer_save_creates_parent_directories(tmp_path):
    ab = Abstainer(0.5)
    path = ab.save(tmp_path / "new" / "dir" / "ab.json")
    assert Abstainer.load(path).threshold == 0.5


def test_stale_temps_of_dead_writers_are_cleaned_live_ones_kept(tmp_path):
    target = tmp_path / "t.parquet"
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    from tokcal._io import _HOST

    dead = tmp_path / f"{_temp_prefix(target)}{_HOST}.{dead_pid}.abc123.tmp"
    live = tmp_path / f"{_temp_prefix(target)}{_HOST}.{os.getpid()}.def456.tmp"
    other = tmp_path / ".u.parquet.x.1.y.tmp"  # another file's temp: not ours to touch
    for p in (dead, live, other):
        p.write_text("partial")
    atomic_write(target, _write_text("done"))
    assert not dead.exists()
    assert live.exists() and other.exists()
    old = 0  # a day without modification: stale whoever wrote it
    os.utime(live, (old, old))
    assert clean_stale_temps(target) == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, "t.parquet"])


def test_a_killed_write_parquet_leaves_a_temp_that_the_next_write_removes(tmp_path):
    table = tokcal.synthetic.make_table(200, 50, seed=0)
    target = tmp_path / "t.parquet"
    code = ("import os, sys, pyarrow.parquet as pq, tokcal\n"
            "def die(*a, **k):\n    os._exit(9)\n"
            "pq.write_table = die\n"
            f"tokcal.synthetic.make_table(200, 50, seed=0).write_parquet({str(target)!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True)
    assert proc.returncode == 9
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and not target.exists()
    table.write_parquet(target)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


@pytest.mark.parametrize("case", ["directory", "parent_is_file"])
def test_unwritable_targets_are_tokcal_errors_naming_the_path(tmp_path, case):
    if case == "directory":
        target = tmp_path / "d"
        target.mkdir()
    else:
        (tmp_path / "f").write_text("")
        target = tmp_path / "f" / "out.json"
    with pytest.raises(TokcalError, match="cannot write"):
        atomic_write(target, _write_text("x"))
    with pytest.raises(TokcalError, match=str(target.name)):
        tokcal.calibrators.Temperature(temperature=1.5).save(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_permission_denied_is_a_tokcal_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(TokcalError, match="cannot write"):
        atomic_write(ro / "x.json", _write_text("x"))


@pytest.mark.parametrize("text, why", [
    ('{"t": NaN}', "NaN"), ('{"t": Infinity}', "Infinity"), ('{"t": -Infinity}', "Infinity"),
    ('{"t": 1e999}', "overflows"), ('{"t": ' + "9" * 5000 + "}", "digits"),
    ("[" * 100000 + "]" * 100000, "nested"), ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested"),
    ('{"a": ', "line 1"), ("", "line 1"),
])
def test_parse_json_is_strict(text, why):
    with pytest.raises(SchemaError, match=why) as e:
        parse_json(text, "f.json")
    assert str(e.value).startswith("f.json: not valid JSON")


def test_parse_json_accepts_ordinary_documents():
    doc = {"a": [1, 2.5, -3e-7, None, True, "x"], "b": {"c": [[[]]]}}
    assert parse_json(json.dumps(doc), "f") == doc
    deep = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(deep, "f") is not None


def test_read_json_names_missing_directory_and_binary_files(tmp_path):
    with pytest.raises(SchemaError, match="no such calibrator file"):
        read_json(tmp_path / "nope.json", "calibrator file")
    with pytest.raises(SchemaError, match="is a directory"):
        read_json(tmp_path, "calibrator file")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SchemaError, match="cannot read"):
        read_json(tmp_path / "b.json", "calibrator file")


@pytest.mark.parametrize("loader", ["calibrator", "evaluation", "abstainer", "report", "manifest"])
def test_every_json_loader_refuses_deep_nesting(tmp_path, loader):
    from tokcal.report.data import load_evaluation
    from tokcal.sources.dataset import MANIFEST, read_manifest

    deep = '{"format": ' + "[" * 50000 + "]" * 50000 + "}"
    path = tmp_path / (MANIFEST if loader == "manifest" else "x.json")
    path.write_text(deep)
    load = {"calibrator": tokcal.load_calibrator, "evaluation": tokcal.Evaluation.from_json,
            "abstainer": Abstainer.load, "report": load_evaluation,
            "manifest": lambda p: read_manifest(p.parent)}[loader]
    with pytest.raises(TokcalError, match="nested deeper"):
        load(path)
