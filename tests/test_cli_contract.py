"""The CLI contract: every command, given bad input, prints ``error: ...`` and exits 2, and leaves
its inputs as they were. Bad input: a corpus of damaged tables, JSON files, text files, model
folders, unwritable outputs and out-of-range numbers, put into each command's input slots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_generate_lm import save_tiny
from typer.testing import CliRunner

from tokcal import synthetic
from tokcal.calibrators import Temperature
from tokcal.cli import app
from tokcal.integrations.abstain import Abstainer

runner = CliRunner()
FIX = Path(__file__).parent / "fixtures" / "logprobs"


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """Good inputs (``t.parquet``, ``cal.json``, ``ev.json``, ``ab.json``, ``docs.jsonl``, ``model/``) and the
    bad-input corpus beside them."""
    d = tmp_path_factory.mktemp("contract")
    t = synthetic.make_table(800, 50, domains={"a": 0.7, "b": 1.3}, seq_len=20, seed=0)
    t.write_parquet(d / "t.parquet")
    Temperature(temperature=1.2).save(d / "cal.json")
    Abstainer(0.3).save(d / "ab.json")
    (d / "docs.jsonl").write_text(json.dumps({"text": "In the beginning was the word."}) + "\n")
    (d / "lp.jsonl").write_text((FIX / "vllm.jsonl").read_text())
    res = runner.invoke(app, ["evaluate", str(d / "t.parquet"), "--bootstrap", "0", "--json", str(d / "ev.json")])
    assert res.exit_code == 0, res.output
    save_tiny(d / "model")

    bad = d / "bad"
    bad.mkdir()
    raw = (d / "t.parquet").read_bytes()
    files: dict[str, bytes | str] = {
        "empty": b"", "binary": bytes(range(256)) * 4, "text": "hello world\n", "json_list": "[1, 2]",
        "json_deep": "[" * 100000 + "]" * 100000, "json_nan": '{"format": "tokcal-calibrator", "temperature": NaN}',
        "json_inf": '{"bins": 1e999}', "json_foreign": '{"format": "other", "type": "temperature"}',
        "truncated.parquet": raw[: len(raw) // 2], "parquet_tail.parquet": raw[-2000:],
        "eval_missing.json": json.dumps({"signature": "ece|bins=15"}),
        "eval_types.json": json.dumps({"signature": 1, "overall": [], "bins": {}}),
        "jsonl_mixed.jsonl": '{"text": "ok"}\n[1]\n"x"\n',
        "jsonl_deep.jsonl": '{"text": ' + "[" * 50000 + "]" * 50000 + "}\n",
        "vllm_null_id.jsonl": json.dumps({"prompt_token_ids": [1, None], "prompt_logprobs": [None, {"1": -0.1}]}),
        "vllm_huge_id.jsonl": json.dumps({"prompt_token_ids": [1, 100000000],
                                          "prompt_logprobs": [None, {"100000000": {"logprob": -0.1}}]}),
        "openai_null.jsonl": json.dumps({"choices": [{"logprobs": {"content": [{"token": None}]}}]}),
    }
    for name, content in files.items():
        (bad / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    b = bytearray(raw)
    col = pq.ParquetFile(d / "t.parquet").metadata.row_group(0).column(0)
    b[(col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size - 4] ^= 0x10
    (bad / "crc.parquet").write_bytes(bytes(b))
    arrow = pq.read_table(d / "t.parquet")
    pq.write_table(arrow.replace_schema_metadata({}), bad / "plain.parquet")
    meta = json.loads(arrow.schema.metadata[b"tokcal"])
    for name, m in {"meta_list.parquet": [1], "meta_nokey.parquet": {k: v for k, v in meta.items()
                                                                     if k != "tail_layout"},
                    "meta_kind.parquet": {**meta, "tail_layout": {**meta["tail_layout"], "kind": "x"}}}.items():
        pq.write_table(arrow.replace_schema_metadata({b"tokcal": json.dumps(m).encode()}), bad / name)
    seq = arrow.column("sequence_id").to_pylist()
    pq.write_table(arrow.set_column(0, "sequence_id", pa.array([None, *seq[1:]], pa.int64())), bad / "null.parquet")
    (bad / "emptydir").mkdir()
    (bad / "badparts").mkdir()
    (bad / "badparts" / "part-00000.parquet").write_bytes(b"PAR1garbagePAR1")
    (bad / "afile").write_text("x")
    return d


CORPUS = {
    "table": ["missing", "empty", "binary", "text", "json_list", "truncated.parquet", "parquet_tail.parquet",
              "crc.parquet", "plain.parquet", "meta_list.parquet", "meta_nokey.parquet", "meta_kind.parquet",
              "null.parquet", "emptydir", "badparts"],
    "json": ["missing", "empty", "binary", "text", "json_list", "json_deep", "json_nan", "json_inf", "json_foreign",
             "emptydir", "truncated.parquet", "eval_missing.json", "eval_types.json"],
    "output": ["emptydir", "afile/out.json"],
    "outdir": ["afile", "afile/sub"],
    "text": ["missing", "binary", "emptydir"],
    "jsonl": ["missing", "empty", "binary", "jsonl_mixed.jsonl", "jsonl_deep.jsonl", "emptydir"],
    "logprobs": ["missing", "empty", "binary", "json_list", "json_deep", "jsonl_mixed.jsonl", "jsonl_deep.jsonl",
                 "vllm_null_id.jsonl", "vllm_huge_id.jsonl", "openai_null.jsonl", "emptydir"],
    "model": ["missing", "emptydir", "afile", "badparts"],
}

# (command template, slot kind). {X} is the bad input; {d} the folder of good inputs; {o} a fresh output path.
TEMPLATES = [
    (["evaluate", "{X}", "--bootstrap", "0"], "table"),
    (["evaluate", "{d}/t.parquet", "-c", "{X}", "--bootstrap", "0"], "json"),
    (["evaluate", "{d}/t.parquet", "-s", "words:{X}", "--bootstrap", "0"], "text"),
    (["evaluate", "{d}/t.parquet", "--bootstrap", "0", "--json", "{X}"], "output"),
    (["evaluate", "{d}/t.parquet", "--bootstrap", "0", "--html", "{X}"], "output"),
    (["fit", "{X}", "-o", "{o}"], "table"),
    (["fit", "{d}/t.parquet", "-o", "{X}", "--holdout", "0"], "output"),
    (["check", "{X}", "--max-ece", "1"], "table"),
    (["check", "{d}/t.parquet", "-c", "{X}", "--max-ece", "1", "--bootstrap", "0"], "json"),
    (["check", "{d}/t.parquet", "--baseline", "{X}", "--max-regression", "0.1", "--bootstrap", "0"], "json"),
    (["report", "{X}", "-o", "{o}"], "json"),
    (["report", "{d}/ev.json", "-o", "{X}"], "output"),
    (["report", "{d}/ev.json", "-o", "{o}", "--png-dir", "{X}"], "outdir"),
    (["synth", "-o", "{X}", "--n", "200", "--vocab", "20"], "output"),
    (["import-logprobs", "{X}", "-o", "{o}", "--vocab-size", "1000"], "logprobs"),
    (["import-logprobs", "{d}/lp.jsonl", "-o", "{X}", "--vocab-size", "1000"], "outdir"),
    (["collect", "{d}/model", "{X}", "-o", "{o}", "--device", "cpu"], "jsonl"),
    (["collect", "{X}", "{d}/docs.jsonl", "-o", "{o}", "--device", "cpu"], "model"),
    (["collect", "{d}/model", "{d}/docs.jsonl", "-o", "{X}", "--device", "cpu"], "outdir"),
    (["annotate", "{d}/model", "-c", "{X}", "--text", "In the"], "json"),
    (["annotate", "{d}/model", "-c", "{d}/cal.json", "--text", "In the", "--abstainer", "{X}"], "json"),
    (["annotate", "{d}/model", "-c", "{d}/cal.json", "--file", "{X}"], "text"),
    (["annotate", "{d}/model", "-c", "{d}/cal.json", "--text", "In the", "--html", "{X}"], "output"),
    (["annotate", "{X}", "-c", "{d}/cal.json", "--text", "In the"], "model"),
    (["generate", "{d}/model", "-c", "{X}", "-p", "In", "--max-new-tokens", "2"], "json"),
    (["demo", "--out", "{X}"], "outdir"),
]

BAD_NUMBERS = [
    ["evaluate", "{d}/t.parquet", "--bins", "0"], ["evaluate", "{d}/t.parquet", "--bins", "1000000000"],
    ["evaluate", "{d}/t.parquet", "--binning", "quantum"], ["evaluate", "{d}/t.parquet", "--bootstrap", "-1"],
    ["evaluate", "{d}/t.parquet", "-s", "nonsense"],
    ["fit", "{d}/t.parquet", "-o", "{o}", "--holdout", "1.5"], ["fit", "{d}/t.parquet", "-o", "{o}", "--method", "x"],
    ["fit", "{d}/t.parquet", "-o", "{o}", "--bins", "1000000000", "--method", "histogram"],
    ["check", "{d}/t.parquet", "--max-ece", "-1"], ["check", "{d}/t.parquet", "--max-ece", "nan"],
    ["check", "{d}/t.parquet", "--max-ece", "1", "--bins", "1000000000"],
    ["synth", "-o", "{o}", "--n", "0"], ["synth", "-o", "{o}", "--vocab", "1"],
    ["synth", "-o", "{o}", "--n", "1000000000000", "--vocab", "100000"],
    ["generate", "{d}/model", "-c", "{d}/cal.json", "-p", "In", "--top-p", "0"],
    ["import-logprobs", "{d}/lp.jsonl", "-o", "{o}", "--format", "grpc"],
]


def _digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cases():
    for template, kind in TEMPLATES:
        for item in CORPUS[kind]:
            yield pytest.param(template, item, id=f"{template[0]}:{' '.join(template[1:])}:{item}".replace("{", "")
                               .replace("}", ""))


def _run(d: Path, args: list[str], tmp_path: Path):
    before = _digest(d)
    res = runner.invoke(app, [a.format(d=d, o=tmp_path / "out") for a in args])
    assert res.exit_code == 2, f"exit {res.exit_code}:\n{res.output}\n{res.exception!r}"
    assert "error: " in res.output, res.output
    assert "Traceback" not in res.output, res.output
    assert _digest(d) == before, "an input changed"
    return res


@pytest.mark.parametrize("template, item", list(_cases()))
def test_bad_input_is_error_exit_2_and_inputs_unchanged(d, tmp_path, template, item):
    bad = str(d / "bad" / item)
    _run(d, [a.replace("{X}", bad) for a in template], tmp_path)


@pytest.mark.parametrize("args", BAD_NUMBERS, ids=lambda a: " ".join(a).replace("{d}/", "").replace("{o}", "OUT"))
def test_bad_numbers_are_error_exit_2(d, tmp_path, args):
    _run(d, args, tmp_path)


def test_the_good_inputs_work(d, tmp_path):
    """The templates' other slots are valid: each command succeeds with good inputs in every slot."""
    for args in (["evaluate", "{d}/t.parquet", "-c", "{d}/cal.json", "--bootstrap", "0", "--json", "{o}.json"],
                 ["check", "{d}/t.parquet", "--baseline", "{d}/ev.json", "--max-regression", "1", "--bootstrap", "0"],
                 ["report", "{d}/ev.json", "-o", "{o}.html"],
                 ["import-logprobs", "{d}/lp.jsonl", "-o", "{o}-lp", "--vocab-size", "1000"],
                 ["annotate", "{d}/model", "-c", "{d}/cal.json", "--text", "In the", "--abstainer", "{d}/ab.json",
                  "--html", "{o}.annotate.html"]):
        res = runner.invoke(app, [a.format(d=d, o=tmp_path / "ok") for a in args])
        assert res.exit_code == 0, f"{args}: {res.output}"
    for page in ("ok.html", "ok.annotate.html"):  # self-contained pages that forbid scripts and remote loads
        assert "Content-Security-Policy\" content=\"default-src 'none'" in (tmp_path / page).read_text()
