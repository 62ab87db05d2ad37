"""Streaming collection into a dataset directory: resume after a kill, refusal to mix, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, save_tiny_causal
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.errors import TokcalError
from tokcal.sources.dataset import MANIFEST, read_manifest
from tokcal.sources.readers import Document

TEXTS = [PARAGRAPHS[i % 5][(7 * i) % 40:] for i in range(24)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = save_tiny_causal(tmp_path_factory.mktemp("model"))
    assert (d / "model.safetensors").exists()
    return d


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def sorted_table(t: TokenTable) -> TokenTable:
    return t.select(np.lexsort((t.position, t.sequence_id)))


def assert_same(a: TokenTable, b: TokenTable) -> None:
    a, b = sorted_table(a), sorted_table(b)
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "label_logit", "log_normalizer", "tail"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    assert a.source == b.source and a.vocab == b.vocab
    np.testing.assert_array_equal(a.group("domain").values(), b.group("domain").values())


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tokcal.sources.hf import collect_causal
    from tokcal.sources.readers import Document
    import json
    texts = json.loads(sys.argv[3])
    docs = [Document(f"doc{i}", t, {"domain": "d%d" % (i % 3)}) for i, t in enumerate(texts)]
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    calls = [0]
    def progress(docs, tokens):
        calls[0] += 1
        if calls[0] == 3:  # die like a power cut: no cleanup, no flush
            os.kill(os.getpid(), signal.SIGKILL)
    collect_causal(model, tok, docs, top_k=8, max_length=32, stride=16, batch_size=4, out_dir=sys.argv[2],
                   part_rows=30, block_tokens=60, progress=progress)
""")


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long error lines


def docs():
    return [Document(f"doc{i}", t, {"domain": f"d{i % 3}"}) for i, t in enumerate(TEXTS)]


def test_killed_run_resumes_to_the_uninterrupted_table(tmp_path, model_dir):
    from tokcal.sources.hf import collect_causal

    model, tok = load(model_dir)
    kw = dict(top_k=8, max_length=32, stride=16, batch_size=4, part_rows=30, block_tokens=60)
    full = collect_causal(model, tok, docs(), out_dir=tmp_path / "full", **kw)
    reference = TokenTable.read_parquet(full)
    assert reference.n_sequences == len(TEXTS)

    out = tmp_path / "resumed"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(model_dir), str(out), json.dumps(TEXTS)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    m = read_manifest(out)
    done = [d["id"] for p in m["parts"] for d in p["documents"]]
    assert 0 < len(done) < len(TEXTS)
    # leftovers of a crash between writing a part and the manifest, and a temp file
    first = out / m["parts"][0]["file"]
    assert m["parts"][0]["file"] == "part-main-000000.parquet"
    shutil.copy(first, out / "part-main-000099.parquet")
    (out / ".part-main-000100.parquet.x.tmp").write_bytes(b"PAR1 half")
    (out / "writers" / ".main.json.x.tmp").write_text("{")
    # readers never see the unlisted part
    assert TokenTable.read_parquet(out).n_sequences == len(done)
    seen = []
    collect_causal(model, tok, docs(), out_dir=out, progress=lambda d, n: seen.append((d, n)), **kw)
    assert seen[0] == (len(done), 0)  # the finished documents were skipped, not redone
    assert not (out / "part-main-000099.parquet").exists() and not list(out.glob(".*.tmp"))
    assert not list((out / "writers").glob(".*.tmp"))
    assert_same(TokenTable.read_parquet(out), reference)
    m = read_manifest(out)
    ids = [d["id"] for p in m["parts"] for d in p["documents"]]
    assert sorted(ids) == sorted(f"doc{i}" for i in range(len(TEXTS)))

    # rerunning a finished collection does nothing; a different setting or changed input refuses
    collect_causal(model, tok, docs(), out_dir=out, **kw)
    assert_same(TokenTable.read_parquet(out), reference)
    with pytest.raises(TokcalError, match=r"different settings .*top_k"):
        collect_causal(model, tok, docs(), out_dir=out, **{**kw, "top_k": 4})
    changed = docs()
    changed[0] = Document("doc0", "something else entirely", {"domain": "d0"})
    with pytest.raises(TokcalError, match="doc0.*changed"):
        collect_causal(model, tok, changed, out_dir=out, **kw)


def test_cli_collect_and_resume(tmp_path, model_dir):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "domain": f"d{i % 2}"}) for i, t in enumerate(TEXTS[:6])))
    txt = tmp_path / "book.txt"
    txt.write_text("\n\n".join(PARAGRAPHS[:3]))
    out = tmp_path / "ds"
    args = ["collect", str(model_dir), str(data), str(txt), "-o", str(out), "--top-k", "4", "--max-length", "32",
            "--stride", "8", "--group-field", "domain", "--group", "split=test", "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "disagree on group names" in flat(r.output)  # the .txt has no domain
    assert "Loading" not in flat(r.output)  # refused before loading the model
    args = [a for a in args if a != str(txt)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    t = TokenTable.read_parquet(out)
    assert t.n_sequences == 6 and t.k == 4 and set(t.group("split").categories) == {"test"}
    assert t.source["stride"] == 8 and t.source["model"] == str(model_dir)
    assert json.loads((out / MANIFEST).read_text())["settings"]["top_k"] == 4
    r = CliRunner().invoke(app, [*args[:-2], "--top-k", "8", "--device", "cpu"])
    assert r.exit_code == 2 and "different settings" in flat(r.output)
    r = CliRunner().invoke(app, ["collect", str(tmp_path / "nope"), str(data), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not a model directory" in flat(r.output)
