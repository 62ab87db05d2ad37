"""Ray: collection through Ray Data actors equals a single-process collection row for row; evaluate
and (group) temperature fits through mergeable sums equal the in-memory results. One local cluster
for the whole session (tests/conftest.py); every test has a timeout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, save_tiny_causal
from test_stream_evaluate import compare, with_unlabelled, write_parts

from tokcal import TokenTable, evaluate
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.sources.dataset import read_manifest
from tokcal.sources.readers import Document
from tokcal.synthetic import make_table

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(300)


@pytest.mark.timeout(240)
def test_ray_evaluate_and_fits_equal_in_memory(ray_cluster, tmp_path):
    from tokcal.distributed import ray as tokcal_ray

    t = with_unlabelled(make_table(12000, 300, domains={"news": 0.7, "code": 1.5}, seq_len=50, top_k=8, seed=7), 11)
    d = write_parts(t, tmp_path / "ds", 3000)
    full = TokenTable.read_parquet(d)
    cal = GroupTemperature("domain").fit(full)
    compare(evaluate(full, cal, bootstrap=40, seed=2).to_dict(),
            tokcal_ray.evaluate(d, cal, bootstrap=40, seed=2, batch_rows=1000).to_dict())
    a, b = Temperature().fit(full), tokcal_ray.fit(d, Temperature(), batch_rows=1000)
    assert b.temperature == pytest.approx(a.temperature, rel=1e-9)
    g = tokcal_ray.fit(d, GroupTemperature("domain"), batch_rows=1000)
    for k, v in cal.temperatures.items():
        assert g.temperatures[k] == pytest.approx(v, rel=1e-9)


@pytest.mark.timeout(300)
def test_ray_collect_equals_one_process_and_resumes(ray_cluster, tmp_path):
    from tokcal.distributed import ray as tokcal_ray
    from tokcal.sources.hf import collect_causal, load_model

    model_dir = save_tiny_causal(tmp_path / "model")
    docs = [Document(f"doc{i}", PARAGRAPHS[i % 5][(7 * i) % 40:], {"domain": f"d{i % 3}"}) for i in range(40)]
    kw = dict(top_k=8, max_length=32, stride=16, batch_size=1)
    model, tok = load_model(model_dir)
    one = TokenTable.read_parquet(collect_causal(model, tok, docs, out_dir=tmp_path / "one", device="cpu", **kw))

    out = tmp_path / "ray"
    tokcal_ray.collect(model_dir, docs[:25], out, docs_per_part=6, actors=1, **kw)  # a first run, cut short
    first = {d["id"] for p in read_manifest(out)["parts"] for d in p["documents"]}
    assert first == {f"doc{i}" for i in range(25)}
    tokcal_ray.collect(model_dir, docs, out, docs_per_part=6, actors=1, **kw)  # resumes: the rest only
    m = json.loads((out / "manifest.json").read_text())
    ids = [d["id"] for p in m["parts"] for d in p["documents"]]
    assert sorted(ids) == sorted(d.id for d in docs) and len(ids) == len(set(ids))
    assert len({p["writer"] for p in m["parts"]}) >= 2  # one writer per actor, per run
    two = TokenTable.read_parquet(out)
    a, b = (x.select(np.lexsort((x.position, x.sequence_id))) for x in (one, two))
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "label_logit", "log_normalizer", "tail"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    np.testing.assert_array_equal(a.group("domain").values(), b.group("domain").values())
