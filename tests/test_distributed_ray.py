"""Ray: collection through Ray Data actors (causal, seq2seq, token classification) equals a
single-process collection row for row; evaluate and (group) temperature fits of a dataset directory
or a ray.data.Dataset through mergeable sums equal the in-memory results. One local cluster for the
whole session (tests/conftest.py); every test has a timeout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, TAGS, bpe_tokenizer, save_tiny_causal, tiny_bart, tiny_bert_tagger
from test_stream_evaluate import compare, with_unlabelled, write_parts
from typer.testing import CliRunner

from tokcal import TokenTable, evaluate
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.cli import app
from tokcal.errors import SchemaError
from tokcal.sources.dataset import read_manifest
from tokcal.sources.readers import Document, read_conll, read_pairs_jsonl
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
    assert_same_rows(one, TokenTable.read_parquet(out), groups=("domain",))


def assert_same_rows(one: TokenTable, two: TokenTable, groups=()) -> None:
    """Equal row for row after sorting by (sequence, position): every column and the metadata."""
    a, b = (x.select(np.lexsort((x.position, x.sequence_id))) for x in (one, two))
    assert len(a) == len(b) > 0 and (a.vocab_size, a.k, a.vocab) == (b.vocab_size, b.k, b.vocab)
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "label_logit", "log_normalizer", "tail"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    for g in groups:
        np.testing.assert_array_equal(a.group(g).values(), b.group(g).values())


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.timeout(300)
def test_ray_collect_seq2seq_and_token_classification_equal_tokcal_collect(ray_cluster, tmp_path):
    """Ray collection of seq2seq pairs (plain tuples: ids by index) and tagged sentences equals the
    single-process ``tokcal collect`` of the same files row for row; two actors on the 2-CPU cluster
    share the one CPU the pool may take (Ray Data keeps a CPU)."""
    from tokcal.distributed import ray as tokcal_ray

    tok = bpe_tokenizer()
    bart = _save(tiny_bart(len(tok)), tok, tmp_path / "bart")
    tagger = _save(tiny_bert_tagger(len(tok)), tok, tmp_path / "tagger")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"source": PARAGRAPHS[i % 5][(3 * i) % 30:][:50],
                                         "target": PARAGRAPHS[(i + 2) % 5][(5 * i) % 40:][:40]}) + "\n"
                             for i in range(10)))
    conll = tmp_path / "tags.conll"
    words = " ".join(PARAGRAPHS).split()
    sentences = [[f"{w} {TAGS[(i + j) % len(TAGS)]}" for j, w in enumerate(words[i:i + 3 + i % 5])]
                 for i in range(0, 90, 9)]
    conll.write_text("\n\n".join("\n".join(s) for s in sentences) + "\n")
    kw = dict(top_k=6, max_length=48, batch_size=1)  # bitwise equal needs equal batches (padding changes float32)
    for task, model, data, items in (
            ("seq2seq", bart, pairs, [(p.source, p.target) for p in read_pairs_jsonl(pairs)]),
            ("token-classification", tagger, conll, read_conll(conll))):
        one = tmp_path / f"one-{task}"
        r = CliRunner().invoke(app, ["collect", str(model), str(data), "-o", str(one), "--task", task, "--top-k", "6",
                                     "--max-length", "48", "--batch-size", "1", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        out = tokcal_ray.collect(model, items, tmp_path / f"ray-{task}", task=task, docs_per_part=3, actors=2, **kw)
        ids = [d["id"] for p in read_manifest(out)["parts"] for d in p["documents"]]
        assert sorted(ids) == sorted(getattr(x, "id", f"#{i}") for i, x in enumerate(items))
        assert_same_rows(TokenTable.read_parquet(one), TokenTable.read_parquet(out))


def test_pool_size_leaves_a_cpu_for_ray_data():
    from tokcal.distributed.ray import pool_size

    assert pool_size({"CPU": 2.0}, None, None) == (1, 1.0, 0.0)
    assert pool_size({"CPU": 2.0}, 2, None) == (2, 0.5, 0.0)  # more actors share the one CPU
    assert pool_size({"CPU": 1.0}, None, None) == (1, 0.5, 0.0)
    assert pool_size({"CPU": 16.0, "GPU": 4.0}, None, None) == (4, 1.0, 1.0)
    assert pool_size({"CPU": 4.0, "GPU": 8.0}, None, None) == (8, 3 / 8, 1.0)


# -- a ray.data.Dataset -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Parts cut inside sequences (2999 rows, sequences of 50)."""
    t = with_unlabelled(make_table(12000, 300, domains={"news": 0.7, "code": 1.5}, seq_len=50, top_k=8, seed=5), 11)
    d = write_parts(t, tmp_path_factory.mktemp("ds"), 2999)
    return d, TokenTable.read_parquet(d)


@pytest.mark.timeout(300)
def test_ray_dataset_evaluate_and_fits_equal_in_memory(ray_cluster, parts, monkeypatch):
    """``read_parquet`` of the parts, ``from_arrow`` of the table in blocks cut inside sequences (the
    first of 5 rows: worst-token contexts cross it), ``from_pandas`` (no tokcal metadata: ``meta=``);
    equal-mass bins; fits with the warm start."""
    import tokcal.calibrators.temperature as T
    import tokcal.distributed.fit as F
    from tokcal.distributed import ray as tokcal_ray

    ray = ray_cluster
    d, full = parts
    cal = GroupTemperature("domain").fit(full)
    ref = evaluate(full, cal, bootstrap=40, seed=2).to_dict()
    a = full.to_arrow()
    cuts = [(0, 5), (5, 3001), (3001, 7501), (7501, len(full))]
    datasets = {"read_parquet": (ray.data.read_parquet(str(d)), None),
                "from_arrow": (ray.data.from_arrow([a.slice(s, e - s) for s, e in cuts]), None),
                "from_pandas": (ray.data.from_pandas([a.slice(0, 5003).to_pandas(), a.slice(5003).to_pandas()]), d)}
    for name, (ds, meta) in datasets.items():
        got = tokcal_ray.evaluate(ds, cal, bootstrap=40, seed=2, batch_rows=1000, meta=meta).to_dict()
        assert got["settings"]["resampling"] == ref["settings"]["resampling"], name
        compare(ref, got)
    mass = evaluate(full, cal, bins=10, binning="mass", bootstrap=20, seed=1).to_dict()  # exact edges by passes
    compare(mass, tokcal_ray.evaluate(datasets["from_arrow"][0], cal, bins=10, binning="mass", bootstrap=20, seed=1,
                                      batch_rows=1000).to_dict())
    monkeypatch.setattr(T, "_WARM_ROWS", 2000)  # groups of ~5k labelled rows: the warm start runs in both paths
    monkeypatch.setattr(F, "_WARM_ROWS", 2000)
    ds, meta = datasets["from_pandas"]
    t1, t2 = Temperature().fit(full), tokcal_ray.fit(ds, Temperature(), batch_rows=1000, meta=meta)
    assert t2.temperature == pytest.approx(t1.temperature, rel=1e-9)
    g1 = GroupTemperature("domain").fit(full)
    g2 = tokcal_ray.fit(datasets["from_arrow"][0], GroupTemperature("domain"), batch_rows=1000)
    assert g2.temperatures.keys() == g1.temperatures.keys()
    for k, v in g1.temperatures.items():
        assert g2.temperatures[k] == pytest.approx(v, rel=1e-9)


@pytest.mark.timeout(120)
def test_ray_dataset_bad_input_is_named(ray_cluster, parts):
    from tokcal.distributed import ray as tokcal_ray

    ray = ray_cluster
    d, full = parts
    a = full.select(np.arange(600)).to_arrow()
    no_logit = ray.data.from_arrow(a).drop_columns(["label_logit"])
    with pytest.raises(SchemaError, match="missing column.*'label_logit'"):
        tokcal_ray.evaluate(no_logit, bootstrap=0)
    with pytest.raises(SchemaError, match="missing column.*'label_logit'"):
        tokcal_ray.fit(no_logit, Temperature())
    with pytest.raises(SchemaError, match="no tokcal metadata.*meta="):
        tokcal_ray.evaluate(ray.data.from_pandas(a.to_pandas()), bootstrap=0)
    short = ray.data.from_items([{**{c: a.column(c)[i].as_py() for c in a.column_names if c != "group:domain"},
                                  "top_ids": a.column("top_ids")[i].as_py()[:7 if i == 3 else 8]} for i in range(6)],
                                 override_num_blocks=1)
    with pytest.raises(SchemaError, match=r"^ray Dataset block 0: column 'top_ids': row 3 has 7 values, row 0 has 8"):
        tokcal_ray.evaluate(short, bootstrap=0, meta=full)
