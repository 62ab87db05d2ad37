"""Fuzz every JSON format tokcal loads: a tokcal error or a correct result, never another exception.

Formats: each calibrator type, the abstainer, the frequency counts file, the evaluation (``Evaluation.to_dict()``, what
``tokcal check --baseline`` and ``tokcal report`` read) and the dataset manifest. Two generators:

* a seeded mutation fuzzer: a real document (fitted on a synthetic table, or written by tokcal) is
  mutated -- a node replaced by an odd value (NaN, infinity, bools, huge or tiny numbers, strings,
  containers), a key deleted or added, a list shortened or extended, a sibling swapped, a number
  scaled -- then serialised as JSON text (NaN/Infinity literals included) and loaded through the
  strict JSON reader and the format's loader;
* hypothesis: arbitrary JSON values in place of a document's values.

A load that succeeds must give a usable object: a calibrator's probabilities finite and in [0, 1] and
its calibrated logits free of NaN and +inf; an abstainer's flags; an evaluation that ``tokcal check``
can compare and print; a manifest a DatasetWriter can resume from. ``TOKCAL_FUZZ_SCALE`` (default 1)
multiplies the number of cases.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import random
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tokcal import synthetic
from tokcal._io import parse_json
from tokcal.calibrators import (
    AdaptiveTemperature,
    BetaCalibration,
    Calibrator,
    ConformalTokenSets,
    GroupTemperature,
    HistogramBinning,
    Isotonic,
    Selective,
    Temperature,
)
from tokcal.errors import TokcalError
from tokcal.evaluation import Evaluation, evaluate
from tokcal.gate import check_regression
from tokcal.integrations.abstain import Abstainer
from tokcal.sources.dataset import MANIFEST, DatasetWriter, read_manifest

SCALE = float(os.environ.get("TOKCAL_FUZZ_SCALE", "1"))


def cases(n: int) -> int:
    """``n`` scaled by ``TOKCAL_FUZZ_SCALE`` (at least 1)."""
    return max(1, int(n * SCALE))


NAN, INF = "\x00nan\x00", "\x00inf\x00"  # placeholders written as the NaN / Infinity literals
ODD = [None, True, False, 0, 1, -1, 2, 2.5, -0.0, 1e-320, 1e308, -1e308, 2**63, 10**40, "", "x", "1.5", "true",
       "auto", "mass", [], [0], [1.0, 2.0], {}, {"a": 1}, NAN, INF, "-" + INF]


# -- documents ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table():
    return synthetic.make_table(600, 60, domains={"a": 0.6, "b": 1.2}, seed=7)


@pytest.fixture(scope="module")
def probe():
    """Small inputs every loaded calibrator is used on."""
    t = synthetic.make_table(120, 60, domains={"a": 0.6, "b": 1.2}, seed=8)
    z = synthetic.make_logits(6, 60, seed=9)
    ctx = {"position": np.arange(6), "domain": ["a", "b", "a", "c", "b", "a"]}
    return t, z, ctx


@pytest.fixture(scope="module")
def calibrator_docs(table):
    made = {
        "temperature": Temperature(seed=3), "fixed": Temperature(temperature=1.3),
        "group": GroupTemperature("domain", seed=1), "adaptive": AdaptiveTemperature(groups=("domain",)),
        "histogram": HistogramBinning(8), "isotonic": Isotonic(), "beta": BetaCalibration(),
        "selective": Selective(Temperature(), 0.6), "conformal": ConformalTokenSets(0.2, "aps"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: c.fit(table).to_dict() for k, c in made.items()}


@pytest.fixture(scope="module")
def evaluation_doc(table):
    return evaluate(table, calibrator=Temperature().fit(table), slices=["group:domain", "position"], bins=10,
                    bootstrap=10, worst=5).to_dict()


ABSTAINER_DOC = Abstainer(0.42, target_risk=0.1, coverage=0.7).to_dict()


@pytest.fixture(scope="module")
def manifest_doc(tmp_path_factory, table):
    out = tmp_path_factory.mktemp("ds")
    with DatasetWriter(out, {"model": "m", "top_k": 32}, part_rows=100) as w:
        for s in range(3):
            rows = table.sequence_id == s
            w.add(table.select(rows), [{"id": f"d{s}", "hash": f"h{s}", "sequence_id": s, "rows": int(rows.sum())}])
    return out, json.loads((out / MANIFEST).read_text())


# -- the mutation fuzzer --------------------------------------------------------------------------


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):  # long arrays: their first elements stand for the rest
            out += _nodes(v, (*path, i))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def mutate(doc: dict, rng: random.Random, n: int | None = None) -> dict:
    """``doc`` with 1-3 random mutations (a deep copy)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(n or rng.choice((1, 1, 1, 2, 3))):
        path = rng.choice(_nodes(doc)[1:] or [()])
        if not path:
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        node = parent[key]
        op = rng.random()
        if op < 0.45:
            parent[key] = copy.deepcopy(rng.choice(ODD))
        elif op < 0.55:
            del parent[key]
        elif op < 0.62 and isinstance(node, dict):
            node[rng.choice(["extra", "type", "settings", "n", "ci", "0"])] = copy.deepcopy(rng.choice(ODD))
        elif op < 0.72 and isinstance(node, list) and node:
            parent[key] = node[: rng.randrange(len(node))] if rng.random() < 0.5 else node + node[-1:]
        elif op < 0.85 and isinstance(node, int | float) and not isinstance(node, bool):
            parent[key] = node * rng.choice((-1, 0, 1e-6, 1e6, 1e300)) + rng.choice((0, 0.5, 1))
        elif op < 0.92 and isinstance(parent, dict) and len(parent) > 1:
            other = rng.choice([k for k in parent if k != key])
            parent[key], parent[other] = parent[other], parent[key]
        elif isinstance(node, str):
            parent[key] = rng.choice(["", node + "x", node[::-1], "word-initial", "domain", "a"])
        else:
            parent[key] = copy.deepcopy(rng.choice(ODD))
    return doc


def to_text(doc: Any, rng: random.Random) -> str:
    text = json.dumps(doc).replace(f'"-{INF}"', "-Infinity").replace(f'"{INF}"', "Infinity")
    text = text.replace(json.dumps(NAN), "NaN").replace(json.dumps(INF), "Infinity")
    r = rng.random()
    if r < 0.03:
        return text[: rng.randrange(len(text))]
    if r < 0.06:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice("{}[]\",:0e-") + text[i + 1:]
    return text


def load_or_error(text: str, load: Any) -> Any:
    """``load(parsed JSON)``; None when tokcal refused the input with one of its errors."""
    try:
        return load(parse_json(text, "fuzz.json"))
    except TokcalError:
        return None


# -- what a loaded object must do -----------------------------------------------------------------


def use_calibrator(cal: Calibrator, probe: tuple) -> None:
    t, z, ctx = probe
    for step in (lambda: cal.token_probs(t), lambda: cal.transform_logits(z, ctx)):
        try:
            out = step()
        except TokcalError:
            continue  # e.g. a group column this table lacks: a clear error is a correct answer
        if isinstance(out, np.ndarray):
            assert not np.isnan(out).any() and not np.isposinf(out).any(), out
        else:
            for name in ("top_probs", "label_prob", "sum_sq", "confidence"):
                v = np.asarray(getattr(out, name), dtype=np.float64)
                v = v[~np.isnan(v)] if name == "label_prob" else v
                assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1 + 1e-9).all(), (name, v)
    if isinstance(cal, ConformalTokenSets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cov = cal.coverage(t)
        assert 0 <= cov["overall"]["coverage"] <= 1
    repr(cal)
    again = Calibrator.from_dict(cal.to_dict())
    assert again.to_dict() == cal.to_dict()


def use_evaluation(ev: Evaluation, show: bool = True) -> None:
    d = ev.to_dict()
    for metric in ("ece", "nll"):
        try:
            check_regression(d, d, metric, 0.01)
        except TokcalError:
            pass
    if show:  # rich rendering is the slow part: every few documents
        ev.print_summary(console=Console(file=io.StringIO(), width=100))
    repr(ev)


def use_abstainer(ab: Abstainer) -> None:
    flags = ab.flag(np.array([0.0, 0.3, 0.5, 0.99, 1.0, np.nan]))
    assert flags.dtype == bool and not flags[-1]
    assert Abstainer.from_dict(ab.to_dict()) == ab or math.isnan(ab.target_risk) or math.isnan(ab.coverage)


def use_manifest(out_dir: Any, m: dict) -> None:
    (out_dir / MANIFEST).write_text(json.dumps(m))
    try:
        loaded = read_manifest(out_dir)
        w = DatasetWriter(out_dir, loaded["settings"], part_rows=100)
        for d in w.done.values():
            w.is_done(d["id"], d["hash"], d["sequence_id"])
    except TokcalError:
        pass


# -- the tests ------------------------------------------------------------------------------------


CALIBRATOR_TYPES = ["temperature", "fixed", "group", "adaptive", "histogram", "isotonic", "beta", "selective",
                    "conformal"]


@pytest.mark.parametrize("kind", CALIBRATOR_TYPES)
def test_mutated_calibrator_files(calibrator_docs, probe, kind):
    rng = random.Random(f"calibrator-{kind}")
    loaded = 0
    for _ in range(cases(250)):
        text = to_text(mutate(calibrator_docs[kind], rng), rng)
        cal = load_or_error(text, lambda d: Calibrator.from_dict(d, "fuzz.json"))
        if cal is not None:
            loaded += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                use_calibrator(cal, probe)
    assert loaded > 0  # some mutations are harmless (a value changed within its range): they must load


def test_mutated_evaluation_files(evaluation_doc):
    rng = random.Random("evaluation")
    loaded = 0
    for _ in range(cases(400)):
        text = to_text(mutate(evaluation_doc, rng), rng)
        ev = load_or_error(text, lambda d: Evaluation.from_dict(d, "fuzz.json"))
        if ev is not None:
            loaded += 1
            use_evaluation(ev, show=loaded % 8 == 1)
    assert loaded > 0


def test_mutated_abstainer_files():
    rng = random.Random("abstainer")
    for _ in range(cases(300)):
        ab = load_or_error(to_text(mutate(ABSTAINER_DOC, rng), rng), lambda d: Abstainer.from_dict(d, "fuzz.json"))
        if ab is not None:
            use_abstainer(ab)


def test_mutated_manifests(manifest_doc, tmp_path):
    src, doc = manifest_doc
    rng = random.Random("manifest")
    for i in range(cases(150)):
        m = mutate(doc, rng)
        d = tmp_path / f"ds{i}"
        d.mkdir()
        for part in src.glob("part-*.parquet"):
            (d / part.name).write_bytes(part.read_bytes())
        use_manifest(d, m)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=3), max_leaves=8)


@settings(max_examples=cases(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(CALIBRATOR_TYPES), key=st.integers(0, 100), value=_json)
def test_arbitrary_json_values_in_calibrator_files(calibrator_docs, probe, kind, key, value):
    doc = copy.deepcopy(calibrator_docs[kind])
    paths = _nodes(doc)[1:]
    path = paths[key % len(paths)]
    _get(doc, path[:-1])[path[-1]] = value
    text = json.dumps(doc, allow_nan=True)  # hypothesis floats include NaN and infinities
    cal = load_or_error(text, lambda d: Calibrator.from_dict(d, "fuzz.json"))
    if cal is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            use_calibrator(cal, probe)


@settings(max_examples=cases(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.integers(0, 1000), value=_json)
def test_arbitrary_json_values_in_evaluation_and_abstainer_files(evaluation_doc, key, value):
    for doc, load, use in ((evaluation_doc, Evaluation.from_dict, lambda ev: use_evaluation(ev, show=key % 4 == 0)),
                           (ABSTAINER_DOC, Abstainer.from_dict, use_abstainer)):
        doc = copy.deepcopy(doc)
        paths = _nodes(doc)[1:]
        path = paths[key % len(paths)]
        _get(doc, path[:-1])[path[-1]] = value
        obj = load_or_error(json.dumps(doc, allow_nan=True), lambda d, load=load: load(d, "fuzz.json"))
        if obj is not None:
            use(obj)


def test_mutated_frequency_counts_files(tmp_path):
    from tokcal.frequency import FrequencyReference

    rng = random.Random("counts")
    doc = {"counts": [5, 0, 3, 1, 0, 2, 9, 1], "note": "demo"}
    path = tmp_path / "counts.json"
    for _ in range(cases(200)):
        path.write_text(to_text(mutate(doc, rng), rng))
        try:
            ref = FrequencyReference.from_json(path, vocab_size=8)
        except TokcalError:
            continue
        assert ref.counts.shape == (8,) and np.isfinite(ref.counts).all() and (ref.counts >= 0).all()
