"""Interrupted collection keeps its finished work: Ctrl-C exits 130 with a resume hint and the rerun
completes the dataset; a SIGKILL loses at most the documents of the last flush interval (measured)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, save_tiny_causal
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.sources.dataset import read_manifest

N_DOCS = 400


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("interrupt")
    save_tiny_causal(d / "model")
    (d / "docs.jsonl").write_text("".join(json.dumps({"text": PARAGRAPHS[i % 5][(7 * i) % 40:]}) + "\n"
                                          for i in range(N_DOCS)))
    return d


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def documents(out: Path) -> list[str]:
    m = read_manifest(out)
    return [] if m is None else [d["id"] for p in m["parts"] for d in p["documents"]]


def wait_for_parts(journal: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(journal.read_text())["parts"]) >= n:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"no part appeared; the collector exited with {proc.poll()}")


def test_ctrl_c_saves_finished_documents_says_how_to_resume_and_exits_130(setup, tmp_path):
    out = tmp_path / "ds"
    args = ["collect", str(setup / "model"), str(setup / "docs.jsonl"), "-o", str(out), "--top-k", "4",
            "--max-length", "32", "--stride", "16", "--device", "cpu", "--flush-seconds", "0", "--part-rows", "100000"]
    p = subprocess.Popen([sys.executable, "-m", "tokcal", *args], env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_for_parts(out / "writers" / "main.json", p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    saved = documents(out)
    assert 0 < len(saved) < N_DOCS, err
    flat = " ".join(err.split())
    assert f"{len(saved)} of {N_DOCS} documents are saved in {out}" in flat
    assert "run the same command again to resume" in flat and "Traceback" not in err

    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    final = documents(out)
    assert len(final) == len(set(final)) == N_DOCS
    fresh = tmp_path / "fresh"
    assert CliRunner().invoke(app, [*args[:4], str(fresh), *args[5:]]).exit_code == 0
    a, b = TokenTable.read_parquet(out), TokenTable.read_parquet(fresh)
    a, b = (t.select(np.lexsort((t.position, t.sequence_id))) for t in (a, b))
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "log_normalizer", "tail"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)


CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tokcal.sources.hf import collect_causal
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    texts = [l for l in open(sys.argv[2]).read().splitlines()]
    done = [0]
    def progress(docs, tokens):
        done[0] += docs
        print(time.monotonic(), done[0], flush=True)
    collect_causal(model, tok, texts, top_k=4, max_length=32, stride=16, batch_size=4, out_dir=sys.argv[3],
                   flush_seconds=float(sys.argv[4]), block_tokens=100, progress=progress)
""")


def test_sigkill_loses_at_most_one_flush_interval(setup, tmp_path):
    """Finished documents are on disk within ``flush_seconds`` (plus one block): measured on a SIGKILL."""
    flush = 0.5
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    texts = tmp_path / "texts.txt"
    n_docs = 4000
    texts.write_text("\n".join(PARAGRAPHS[i % 5][(7 * i) % 40:] for i in range(n_docs)))
    out = tmp_path / "ds"
    p = subprocess.Popen([sys.executable, str(script), str(setup / "model"), str(texts), str(out), str(flush)],
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reports: list[tuple[float, int]] = []
    while p.poll() is None:
        line = p.stdout.readline()
        if not line:
            break
        t, n = line.split()
        reports.append((float(t), int(n)))
        if reports[-1][0] - reports[0][0] > 4 * flush:
            break
    assert reports and reports[-1][1] < n_docs, "the collection finished before it could be killed"
    p.kill()
    t_kill = time.monotonic()
    rest, _ = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    reports += [(float(t), int(n)) for t, n in (line.split() for line in rest.splitlines() if line.strip())]
    saved = len(documents(out))
    # documents are written in input order: the first `saved` ones
    assert documents(out) and set(documents(out)) == {f"#{i}" for i in range(saved)}
    gaps = np.diff([t for t, _ in reports])
    block = float(gaps.max())
    finished_at = next(t for t, n in reports if n >= saved)
    first_unsaved = next((t for t, n in reports if n > saved), t_kill)
    lost_seconds = t_kill - first_unsaved
    print(f"saved {saved} of {reports[-1][1]} finished documents; unsaved work {lost_seconds:.2f} s "
          f"(flush every {flush} s, longest block {block:.2f} s)")
    assert finished_at <= t_kill
    assert lost_seconds <= flush + 2 * block + 0.5
