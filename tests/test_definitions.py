"""Definitions, not signature strings: check --baseline across tokcal versions and definition versions,
slice signatures, and the report refusing evaluations defined differently side by side."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tokcal
from tokcal.cli import app
from tokcal.metrics import DEFINITION_VERSIONS, definition_differences, signature
from tokcal.metrics.signature import definition
from tokcal.synthetic import make_table

runner = CliRunner()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    t = make_table(3000, 200, beta_star=0.8, seq_len=50, seed=7)
    path = tmp_path_factory.mktemp("defs") / "t.parquet"
    t.write_parquet(path)
    return t, path


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_definition_ignores_the_tokcal_version_and_reads_old_signatures_as_def_1():
    now = signature("ece", bins=15)
    assert now.endswith(f"|def=1|tokcal={tokcal.__version__}")
    other_release = now.replace(f"tokcal={tokcal.__version__}", "tokcal=0.0.1")
    old = now.replace("|def=1", "")                       # written before def existed
    assert definition_differences(now, other_release) == [] == definition_differences(now, old)
    assert definition(old)[1]["def"] == "1"
    assert definition_differences(now, signature("ece", bins=10)) == ["bins: 15 vs 10"]
    assert definition_differences(now, now.replace("def=1", "def=2")) == ["definition version (def): 1 vs 2"]
    assert set(DEFINITION_VERSIONS) >= {"ece", "nll", "ci", "slice:type", "slice:freq"}


def test_check_baseline_compares_definitions(table, tmp_path, monkeypatch):
    t, path = table
    d = tokcal.evaluate(t, bootstrap=20, seed=0).to_dict()
    # a baseline stored by another tokcal release, and one from before def existed: both comparable
    for name, edit in (("release", lambda s: s.replace(f"tokcal={tokcal.__version__}", "tokcal=0.0.1")),
                       ("old", lambda s: s.replace("|def=1", ""))):
        base = tmp_path / f"{name}.json"
        base.write_text(edit(json.dumps(d)))
        res = runner.invoke(app, ["check", str(path), "--baseline", str(base), "--max-regression", "0",
                                  "--bootstrap", "20"])
        assert res.exit_code == 0 and "change +0.0000" in _flat(res.output), res.output
    # the ECE's definition changes (its version is bumped): the stored baseline is refused, saying why
    monkeypatch.setitem(DEFINITION_VERSIONS, "ece", 2)
    res = runner.invoke(app, ["check", str(path), "--baseline", str(tmp_path / "release.json"),
                              "--max-regression", "0", "--bootstrap", "20"])
    assert res.exit_code == 2, res.output
    assert "definition version (def): 1 vs 2" in _flat(res.output) and "not comparable" in _flat(res.output)


def test_every_slice_signature_carries_its_definition_version(table, monkeypatch):
    t, _ = table
    d = tokcal.evaluate(t, slices=["freq:predicted", "type", "position"], bootstrap=0).to_dict()
    sigs = {name: st["signature"] for name, st in d["settings"]["slices"].items()}
    assert set(sigs) == set(d["slices"])
    assert {n: definition(s)[1]["def"] for n, s in sigs.items()} == {"freq:predicted": "2", "type": "2",
                                                                       "position": "1"}
    assert sigs["position"] == signature("slice:position", edges="1,4,16,64,256")
    monkeypatch.setitem(DEFINITION_VERSIONS, "slice:type", 3)
    bumped = tokcal.evaluate(t, slices=["type"], bootstrap=0).to_dict()["settings"]["slices"]["type"]["signature"]
    assert definition_differences(sigs["type"], bumped) == ["definition version (def): 2 vs 3"]


def _write(tmp_path, name, ev):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(ev if isinstance(ev, dict) else ev.to_dict()))
    return f"{name}={p}"


def test_report_refuses_numbers_defined_differently_and_marks_other_intervals(table, tmp_path, monkeypatch):
    t, _ = table
    a = tokcal.evaluate(t, slices=["type"], bins=15, bootstrap=20)
    b = tokcal.evaluate(t, slices=["type"], bins=10, binning="mass", bootstrap=20)
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", _write(tmp_path, "a", a), _write(tmp_path, "b", b), "-o", str(out)])
    assert res.exit_code == 2 and not out.exists(), res.output
    text = _flat(res.output)
    assert "refusing to report evaluations whose numbers are defined differently" in text
    assert "ece: 'a' vs 'b': bins: 15 vs 10; binning: width vs mass" in text
    # a slice whose definition was bumped (as a new token-type rule does) is refused too
    monkeypatch.setitem(DEFINITION_VERSIONS, "slice:type", 3)
    c = tokcal.evaluate(t, slices=["type"], bins=15, bootstrap=20)
    monkeypatch.undo()
    res = runner.invoke(app, ["report", _write(tmp_path, "a", a), _write(tmp_path, "c", c), "-o", str(out)])
    assert res.exit_code == 2 and "slice type: 'a' vs 'c': definition version (def): 2 vs 3" in _flat(res.output)
    # another tokcal release, same definitions: reported; intervals over other units are marked, not refused
    other = json.loads(json.dumps(a.to_dict()).replace(f"tokcal={tokcal.__version__}", "tokcal=0.0.1"))
    blocks = tokcal.evaluate(t, slices=["type"], bins=15, bootstrap=20, unit="block", block_length=64)
    res = runner.invoke(app, ["report", _write(tmp_path, "a", a), _write(tmp_path, "old", other),
                              _write(tmp_path, "blocks", blocks), "-o", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "Intervals computed with different bootstrap settings" in html
    assert "&#x27;a&#x27; vs &#x27;blocks&#x27;: unit: sequence vs block; block_length: &lt;missing&gt; vs 64" in html
    assert "bootstrap over blocks of 64 positions / sequences" in html
