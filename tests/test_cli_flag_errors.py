"""A bad option value is reported with the command's flag (``--bins``), never the Python parameter the
library checks (``bins``, ``block_length``, ``frac``, ``allow_argmax_change=True``), in the one message
format ``<field> <requirement>, got <value>``: the validation layer's :class:`tokcal.errors.ParameterError`
rendered by the CLI with each command's flags, and typer's own type conversion worded the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from tiny_generate_lm import save_tiny
from typer.testing import CliRunner

from tokcal import evaluate, synthetic
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.cli import app
from tokcal.errors import ParameterError, ValidationError

runner = CliRunner()
FIX = Path(__file__).parent / "fixtures" / "logprobs"

# command -> its good arguments ({d}: the folder of good inputs, {o}: a fresh output path)
BASE = {
    "evaluate": ["{d}/t.parquet", "--bootstrap", "0"],
    "fit": ["{d}/t.parquet", "-o", "{o}.json", "--bootstrap", "0"],
    "check": ["{d}/t.parquet", "--bootstrap", "0"],
    "synth": ["-o", "{o}.parquet", "--n", "300", "--vocab", "20"],
    "report": ["{d}/ev.json", "-o", "{o}.html"],
    "curate": ["{d}/t.parquet", "-o", "{o}.jsonl"],
    "import-logprobs": ["{d}/lp.jsonl", "-o", "{o}-lp"],
    "collect": ["{d}/model", "{d}/docs.jsonl", "-o", "{o}-ds", "--device", "cpu"],
    "annotate": ["{d}/model", "-c", "{d}/cal.json", "--text", "In the"],
    "generate": ["{d}/model", "-c", "{d}/cal.json", "-p", "In", "--max-new-tokens", "2"],
    "demo": ["--out", "{o}-demo"],
}

# (command, bad option arguments, the flag the message names)
CASES = [
    ("evaluate", ["--bins", "0"], "--bins"),
    ("evaluate", ["--bins", "2.5"], "--bins"),
    ("evaluate", ["--bins", "100000"], "--bins"),
    ("evaluate", ["--binning", "wide"], "--binning"),
    ("evaluate", ["--bootstrap", "-1"], "--bootstrap"),
    ("evaluate", ["--bootstrap", "x"], "--bootstrap"),
    ("evaluate", ["--seed", "-1"], "--seed"),
    ("evaluate", ["--unit", "token"], "--unit"),
    ("evaluate", ["--slice", "bogus"], "--slice"),
    ("evaluate", ["--slice", "freq:sideways"], "--slice"),
    ("evaluate", ["--slice", "group:nope"], "--slice"),
    ("evaluate", ["--slice", "group:"], "--slice"),
    ("evaluate", ["--slice", "words:"], "--slice"),
    ("evaluate", ["--unit", "block", "--block-length", "0"], "--block-length"),
    ("fit", ["--bins", "0"], "--bins"),
    ("fit", ["--bootstrap", "-1"], "--bootstrap"),
    ("fit", ["--seed", "-1"], "--seed"),
    ("fit", ["--holdout", "1.5"], "--holdout"),
    ("fit", ["--holdout", "-0.1"], "--holdout"),
    ("fit", ["--holdout", "half"], "--holdout"),
    ("fit", ["--method", "x"], "--method"),
    ("fit", ["--method", "histogram", "--bins", "0", "--holdout", "0"], "--bins"),
    ("fit", ["--method", "conformal", "--alpha", "2"], "--alpha"),
    ("fit", ["--method", "conformal", "--score", "x"], "--score"),
    ("fit", ["--method", "selective", "--threshold", "2"], "--threshold"),
    ("fit", ["--method", "selective", "--inner", "conformal"], "--inner"),
    ("fit", ["--method", "group", "--by", "nope"], "--by"),
    ("check", ["--max-ece", "-1"], "--max-ece"),
    ("check", ["--max-ece", "nan"], "--max-ece"),
    ("check", ["--max-ece", "0.1", "--bins", "0"], "--bins"),
    ("check", ["--max-ece", "0.1", "--bootstrap", "-1"], "--bootstrap"),
    ("check", ["--max-ece", "0.1", "--binning", "x"], "--binning"),
    ("check", ["--max-ece", "0.1", "--metric", "x"], "--metric"),
    ("check", ["--max-ece", "0.1", "--seed", "-1"], "--seed"),
    ("check", ["--slice", "type", "--max-slice-ece", "0.1", "--min-slice-tokens", "-1"], "--min-slice-tokens"),
    ("check", ["--slice", "type"], "--max-slice-ece"),
    ("check", ["--slice", "bogus", "--max-slice-ece", "0.1"], "--slice"),
    ("check", ["--slice", "group:nope", "--max-slice-ece", "0.1"], "--slice"),
    ("check", ["--baseline", "{d}/ev.json"], "--max-regression"),
    ("check", [], "--max-ece"),
    ("synth", ["--n", "0"], "--n"),
    ("synth", ["--vocab", "1"], "--vocab"),
    ("synth", ["--beta", "0"], "--beta"),
    ("synth", ["--seq-len", "0"], "--seq-len"),
    ("synth", ["--seed", "-1"], "--seed"),
    ("synth", ["--domains", "a=x"], "--domains"),
    ("curate", ["--context", "-1"], "--context"),
    ("curate", ["--overconfident", "-1"], "--overconfident"),
    ("curate", ["--per-token", "-1"], "--per-token"),
    ("curate", ["--per-slice", "-1"], "--per-slice"),
    ("curate", ["--weights-out", "{o}-w.jsonl", "--boost", "-1"], "--boost"),
    ("curate", ["--weights-out", "{o}-w.jsonl", "--rare-rank", "0"], "--rare-rank"),
    ("import-logprobs", ["--format", "grpc"], "--format"),
    ("import-logprobs", ["--vocab-size", "0"], "--vocab-size"),
    ("collect", ["--top-k", "0"], "--top-k"),
    ("collect", ["--group", "novalue"], "--group"),
    ("collect", ["--batch-size", "0"], "--batch-size"),
    ("collect", ["--max-length", "0"], "--max-length"),
    ("collect", ["--max-length", "16", "--stride", "20"], "--stride"),
    ("collect", ["--task", "x"], "--task"),
    ("collect", ["--part-rows", "0"], "--part-rows"),
    ("collect", ["--flush-seconds", "-1"], "--flush-seconds"),
    ("annotate", ["--format", "x"], "--format"),
    ("annotate", ["--group", "novalue"], "--group"),
    ("generate", ["--top-p", "0"], "--top-p"),
    ("generate", ["--group", "novalue"], "--group"),
    ("generate", ["--top-k", "-1"], "--top-k"),
    ("generate", ["--temperature", "0"], "--temperature"),
    ("generate", ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("generate", ["--seed", "-1"], "--seed"),
    ("generate", ["--format", "x"], "--format"),
    ("generate", ["-c", "{d}/cal_shift.json"], "--allow-argmax-change"),
    ("demo", ["--in-domain", "5"], "--in-domain"),
    ("demo", ["--shift", "x"], "--shift"),
    ("demo", ["--bootstrap", "-1"], "--bootstrap"),
    ("demo", ["--seed", "-1"], "--seed"),
]


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    synthetic.make_table(800, 50, domains={"a": 0.7, "b": 1.3}, seq_len=20, seed=0).write_parquet(d / "t.parquet")
    Temperature(temperature=1.2).save(d / "cal.json")
    (d / "docs.jsonl").write_text(json.dumps({"text": "In the beginning was the word."}) + "\n")
    (d / "lp.jsonl").write_text((FIX / "vllm.jsonl").read_text())
    res = runner.invoke(app, ["evaluate", str(d / "t.parquet"), "--bootstrap", "0", "--json", str(d / "ev.json")])
    assert res.exit_code == 0, res.output
    save_tiny(d / "model")
    from tokcal.calibrators import HistogramBinning  # a top-label map: it may change the most likely token

    HistogramBinning(5).fit(synthetic.make_table(2000, 50, seed=1)).save(d / "cal_shift.json")
    return d


def _python_names() -> set[str]:
    """Every Python parameter name of every command (the names the messages must not show)."""
    cmd = typer.main.get_command(app)
    return {p.name for c in cmd.commands.values() for p in c.params if p.name}


# library parameter names the commands expose under another flag
LIBRARY_NAMES = {"n_tokens", "vocab_size", "beta_star", "frac", "tokens_are_reference", "allow_argmax_change",
                 "max_new_tokens", "top_k", "top_p", "batch_size", "max_length", "block_length", "chunk_rows"}


def _bare(name: str, text: str) -> bool:
    """``name`` as a bare word (not as part of a flag such as ``--bins`` or of a path)."""
    return re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command,extra,flag", CASES, ids=[f"{c} {' '.join(e)}" for c, e, _ in CASES])
def test_bad_option_value_names_the_flag(d, tmp_path, command, extra, flag):
    argv = [command, *(a.format(d=d, o=tmp_path / "out") for a in [*BASE[command], *extra])]
    res = runner.invoke(app, argv)
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert text.startswith("error: ") and flag in text, text
    assert "Traceback" not in text and "╭" not in text, text  # one line, no usage box
    option = flag.lstrip("-").replace("-", "_")
    names = {n for n in _python_names() if "_" in n} | LIBRARY_NAMES | {option}
    rest = text.replace(flag, "")
    for name in sorted(names):
        assert not _bare(name, rest) and f"{name}=" not in rest, (name, text)  # e.g. "bins must", "top_k=0"
    assert not re.match(r"error: [A-Za-z_.]+: ", text), text  # no "<where>:" owner prefix (evaluate:, make_table:)
    assert "wrote" not in text and "fitted" not in text  # refused before any output


def test_every_validated_option_is_covered():
    """Each command's options that take a checked value appear in CASES (paths, free text and flags aside)."""
    free = {"--calibrator", "--out", "--output", "--json", "--html", "--name", "--freq-ref", "--slice", "--text",
            "--file", "--prompt", "--abstainer", "--gguf-file", "--evaluation", "--words", "--words-out",
            "--weights-out", "--markdown", "--recommend", "--png-dir", "--title", "--baseline", "--vocab",
            "--text-field", "--source-field", "--target-field", "--group-field", "--device"}
    cmd = typer.main.get_command(app)
    covered = {(c, f) for c, _, f in CASES} | {(c, a) for c, e, _ in CASES for a in e if a.startswith("--")}
    missing = []
    for name, c in cmd.commands.items():
        for p in c.params:
            long = next((o for o in p.opts if o.startswith("--")), None)
            if p.param_type_name != "option" or getattr(p, "is_flag", False) or long in free or long is None:
                continue
            if name == "import-logprobs" and long == "--vocab":
                continue
            if (name, long) not in covered:
                missing.append(f"{name} {long}")
    assert not missing, missing


def test_python_callers_keep_python_names():
    table = synthetic.make_table(300, 20, seed=0)
    with pytest.raises(ValidationError) as err:
        evaluate(table, bins=2.5)
    assert str(err.value) == "evaluate: bins must be an integer, got 2.5"
    assert isinstance(err.value, ParameterError) and err.value.params == ["bins"]
    assert err.value.render({"bins": "--bins"}) == "--bins must be an integer, got 2.5"
    assert err.value.render({"seed": "--seed"}) == "evaluate: bins must be an integer, got 2.5"  # not a flag
    with pytest.raises(ParameterError) as err:
        GroupTemperature("domain", bounds=(5, 1))
    assert str(err.value) == "GroupTemperature: bounds must satisfy 0 < T_min < T_max, got (5, 1)"


def test_braces_in_values_are_never_parameters():
    e = ParameterError("{slices} value " + ParameterError.quote("{bins}") + " is unknown", "check")
    assert e.params == ["slices"]
    assert str(e) == "check: slices value {bins} is unknown"
    assert e.render({"slices": "--slice", "bins": "--bins"}) == "--slice value {bins} is unknown"
