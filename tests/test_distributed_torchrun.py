"""``torchrun -m tokcal collect`` on 2 CPU processes (gloo): equal to one process row for row, and a
kill of one rank at a random moment, then a rerun, loses and duplicates no document."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import PARAGRAPHS, save_tiny_causal
from typer.testing import CliRunner

from tokcal import TokenTable
from tokcal.cli import app
from tokcal.sources.dataset import read_manifest

TORCHRUN = Path(sys.executable).with_name("torchrun")
N_DOCS = 1200  # 15 parts per rank: a kill after its first lands mid-run even on a loaded machine
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("torchrun")
    save_tiny_causal(d / "model")
    data = d / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": PARAGRAPHS[i % 5][(7 * i) % 40:], "domain": f"d{i % 3}"}) + "\n"
                            for i in range(N_DOCS)))
    return d


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def args(setup: Path, out: Path) -> list[str]:
    return ["collect", str(setup / "model"), str(setup / "docs.jsonl"), "-o", str(out), "--top-k", "8",
            "--max-length", "32", "--stride", "16", "--batch-size", "1", "--device", "cpu",
            "--group-field", "domain", "--flush-seconds", "0"]


def torchrun(setup: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "tokcal",
                             *args(setup, out)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank among the descendants of ``parent``."""
    todo, seen = [parent], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=%d" % rank in environ:
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None


def sorted_table(t: TokenTable) -> TokenTable:
    return t.select(np.lexsort((t.position, t.sequence_id)))


def assert_same_rows(a: TokenTable, b: TokenTable) -> None:
    a, b = sorted_table(a), sorted_table(b)
    assert len(a) == len(b)
    for col in ("sequence_id", "position", "label", "top_ids", "top_logits", "label_logit", "log_normalizer", "tail"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    np.testing.assert_array_equal(a.group("domain").values(), b.group("domain").values())
    assert a.vocab == b.vocab


def documents(out: Path) -> list[str]:
    return [d["id"] for p in read_manifest(out)["parts"] for d in p["documents"]]


def test_torchrun_equals_one_process_and_survives_a_killed_rank(setup, tmp_path):
    single = tmp_path / "single"
    r = CliRunner().invoke(app, args(setup, single))
    assert r.exit_code == 0, r.output
    reference = TokenTable.read_parquet(single)
    assert reference.n_sequences == N_DOCS

    # clean run on two ranks: each wrote its own parts, rank 0 merged the manifest
    both = tmp_path / "both"
    p = torchrun(setup, both)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert sorted(x.name for x in (both / "writers").iterdir()) == ["rank00000.json", "rank00001.json"]
    merged = json.loads((both / "manifest.json").read_text())
    assert sorted(d["id"] for part in merged["parts"] for d in part["documents"]) == sorted(documents(single))
    assert {part["writer"] for part in merged["parts"]} == {"rank00000", "rank00001"}
    assert_same_rows(TokenTable.read_parquet(both), reference)

    # kill rank 1 (SIGKILL, no cleanup) after a random number of its flushes; torchrun stops rank 0
    killed = tmp_path / "killed"
    p = torchrun(setup, killed)
    journal = killed / "writers" / "rank00001.json"
    stop_after = int(np.random.default_rng(int(time.time())).integers(1, 4))  # of its ~15 parts
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if len(json.loads(journal.read_text())["parts"]) >= stop_after:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    pid = rank_pid(p.pid, 1)
    assert pid is not None, "rank 1 finished before it could be killed"
    os.kill(pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0, out
    done = documents(killed)
    assert len(done) == len(set(done)) and 0 < len(done) < N_DOCS, (len(done), out)
    assert TokenTable.read_parquet(killed).n_sequences == len(done)  # listed parts only, each document once

    # rerun (one process this time: the journals are shared whatever the number of ranks)
    r = CliRunner().invoke(app, args(setup, killed))
    assert r.exit_code == 0, r.output
    final = documents(killed)
    assert sorted(final) == sorted(documents(single)) and len(final) == len(set(final))
    assert_same_rows(TokenTable.read_parquet(killed), reference)
