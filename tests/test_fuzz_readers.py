"""Seeded mutation fuzzing of every reader: a tokcal error or a correct result, never another exception.

Readers: plain text, JSONL documents and pairs, CoNLL, API log-prob files (every format and
``auto``), TokenTable Parquet files and dataset directories. Each case is a valid seed file mutated
by :mod:`fuzzing` (byte edits, JSON-aware edits); the check after a successful read is the reader's
contract (re-derived from the raw bytes where it can be), plus the downstream step a user runs
next (probabilities, evaluation). CI runs a few thousand cases; ``make fuzz`` runs 20x more.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from fuzzing import cases, mutate_bytes, mutate_jsonl, run_case

import tokcal
from tokcal import TokenTable, synthetic
from tokcal.probs import token_probs
from tokcal.sources import readers
from tokcal.sources.logprobs import read_logprobs

FIX = Path(__file__).parent / "fixtures" / "logprobs"

TEXT = ("In the beginning God created the heaven and the earth.\n\nAnd the earth was without form, and void;\n"
        "and darkness was upon the face of the deep.\n\n\nÉtude — “quotes” 💥 [/INST] $x$\n")
DOCS = "".join(json.dumps({"text": t, "domain": d, "n": i}) + "\n"
               for i, (t, d) in enumerate([("Hello there.", "a"), ("Second doc ünïcode", "b"), ("[bold]x", "a")]))
PAIRS = "".join(json.dumps({"source": s, "target": t, "domain": "x"}) + "\n"
                for s, t in [("Guten Tag", "Good day"), ("Danke", "Thanks"), ("ja", "yes")])
CONLL = "-DOCSTART- O\n\nEU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n"


def _lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8").splitlines()


def _fuzz(tmp_path: Path, seed: bytes | str, n: int, read, check, name: str, json_aware: bool = False) -> dict:
    rng = random.Random(f"{name}-0")
    text = seed if isinstance(seed, str) else seed.decode()
    counts = {"ok": 0, "error": 0}
    path = tmp_path / f"case{Path(name).suffix or '.txt'}"
    for i in range(n):
        raw = mutate_jsonl(text, rng) if json_aware else mutate_bytes(text.encode(), rng)
        path.write_bytes(raw)
        counts[run_case(lambda: read(path), lambda r, raw=raw: check(r, raw), f"{name} case {i}")] += 1
    assert counts["ok"] + counts["error"] == n
    return counts


def test_fuzz_read_text(tmp_path):
    def check_file(docs, raw):
        text = "\n".join(_lines(raw))
        assert docs == ([readers.Document(f"{tmp_path / 'case.txt'}#0", text, {})] if text.strip() else [])

    def check_paragraphs(docs, raw):
        assert all(d.text.strip() for d in docs)
        assert [ln for d in docs for ln in d.text.split("\n")] == [ln for ln in _lines(raw) if ln.strip()]
        assert len({d.id for d in docs}) == len(docs)

    _fuzz(tmp_path, TEXT, cases(300), lambda p: readers.read_text(p), check_file, "text.txt")
    _fuzz(tmp_path, TEXT, cases(300), lambda p: readers.read_text(p, split="paragraph"), check_paragraphs,
          "paragraphs.txt")


def _json_objects(raw: bytes) -> list[dict]:
    out = []
    for line in raw.decode("utf-8").split("\n"):
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict)
            out.append(obj)
    return out


def test_fuzz_read_jsonl_documents_and_pairs(tmp_path):
    def check_docs(docs, raw):
        objs = _json_objects(raw)
        assert [d.text for d in docs] == [o["text"] for o in objs]
        assert [d.groups for d in docs] == [{"domain": str(o["domain"])} for o in objs]

    def check_pairs(pairs, raw):
        objs = _json_objects(raw)
        assert [(p.source, p.target) for p in pairs] == [(o["source"], o["target"]) for o in objs]

    read_docs = lambda p: readers.read_jsonl(p, group_fields=["domain"])  # noqa: E731
    c = _fuzz(tmp_path, DOCS, cases(500), read_docs, check_docs, "docs.jsonl", json_aware=True)
    assert c["ok"] > 0 and c["error"] > 0
    _fuzz(tmp_path, PAIRS, cases(300), readers.read_pairs_jsonl, check_pairs, "pairs.jsonl", json_aware=True)


def test_fuzz_read_conll(tmp_path):
    def check(sents, raw):
        token_lines = [ln.split() for ln in _lines(raw) if ln.split() and ln.split()[0] != "-DOCSTART-"]
        assert [w for s in sents for w in s.words] == [cols[0] for cols in token_lines]
        assert [t for s in sents for t in s.tags] == [cols[-1] for cols in token_lines]
        assert all(len(s.words) == len(s.tags) > 0 for s in sents)

    _fuzz(tmp_path, CONLL, cases(400), readers.read_conll, check, "ner.conll")


def _check_table(t: TokenTable, evaluate: bool = True) -> None:
    """What a correct table from any source satisfies, and the next steps a user runs on it."""
    assert isinstance(t, TokenTable) and len(t) > 0
    t.validate()
    p = token_probs(t)
    for arr in (p.confidence, p.label_prob[t.labeled]):
        assert np.isfinite(arr).all() and (arr >= 0).all() and (arr <= 1 + 1e-6).all()
    if evaluate and t.labeled.any():
        tokcal.evaluate(t, bootstrap=0)


LOGPROB_FIXTURES = sorted(p.name for p in FIX.iterdir() if p.name != "README.md")


@pytest.mark.parametrize("fixture", LOGPROB_FIXTURES)
def test_fuzz_read_logprobs(tmp_path, fixture):
    """Every server fixture, mutated; formats recognised automatically, V from the file or given."""
    seed = (FIX / fixture).read_text()
    rng = random.Random(fixture)
    counts = {"ok": 0, "error": 0}
    for i in range(cases(15)):
        kwargs = {"vocab_size": rng.choice([None, 1000, 200000]), "tokens_are_reference": rng.random() < 0.3,
                  "strict": rng.random() < 0.3}
        path = tmp_path / f"case{i}{Path(fixture).suffix}"
        path.write_bytes(mutate_jsonl(seed, rng) if not fixture.endswith(".json") or rng.random() < 0.5
                         else mutate_bytes(seed.encode(), rng))

        def read(path=path, kwargs=kwargs):
            return read_logprobs(path, **kwargs)

        def check(t, i=i):
            _check_table(t, evaluate=i % 10 == 0)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts[run_case(read, check, f"{fixture} case {i} {kwargs}")] += 1
    assert counts["ok"] + counts["error"] == cases(15)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fz") / "t.parquet"
    synthetic.make_table(60, 30, domains={"a": 0.7, "b": 1.3}, seq_len=15, seed=0, top_k=6).write_parquet(path)
    return path


def test_fuzz_parquet_file(tmp_path, table_file):
    ref = TokenTable.read_parquet(table_file)

    def check(t, raw):
        assert t.to_arrow().equals(ref.to_arrow(), check_metadata=True), "a damaged file loaded a different table"

    rng = random.Random("parquet-0")
    raw0 = table_file.read_bytes()
    path = tmp_path / "case.parquet"
    for i in range(cases(400)):
        path.write_bytes(mutate_bytes(raw0, rng))
        run_case(lambda: TokenTable.read_parquet(path), lambda t: check(t, None), f"parquet case {i}")


def test_fuzz_parquet_dataset_directory(tmp_path, table_file):
    """A dataset directory: one part damaged, a stray or empty file among the parts; streaming reads too."""
    ref = TokenTable.read_parquet(table_file)
    rng = random.Random("dataset-0")
    raw0 = table_file.read_bytes()
    for i in range(cases(150)):
        d = tmp_path / f"ds{i}"
        d.mkdir()
        (d / "part-00000.parquet").write_bytes(raw0)
        (d / "part-00001.parquet").write_bytes(mutate_bytes(raw0, rng) if rng.random() < 0.8 else b"")
        if rng.random() < 0.2:
            (d / "manifest.json").write_text("{}")
        batch = rng.choice([None, 7, 1000])

        def read(d=d, batch=batch):
            return TokenTable.concat(list(TokenTable.iter_parquet(d, batch_rows=batch)))

        def check(t):
            assert len(t) == 2 * len(ref)
            assert t.select(np.arange(len(ref), 2 * len(ref))).to_arrow().equals(ref.to_arrow())

        run_case(read, check, f"dataset case {i} (batch_rows={batch})")
