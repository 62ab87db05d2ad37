"""The command line reads alike everywhere: usage lines, flags, output options, version, error wording."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tokcal
from tokcal import load_calibrator, synthetic
from tokcal.cli import app

runner = CliRunner()
COMMANDS = ("collect", "import-logprobs", "evaluate", "synth", "fit", "check", "report", "annotate", "generate",
            "demo")


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"tokcal {tokcal.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_clean_usage_and_flag_types(command):
    res = runner.invoke(app, [command, "--help"], terminal_width=160)
    assert res.exit_code == 0, res.output
    usage = next(line for line in res.output.splitlines() if "Usage:" in line)
    assert re.fullmatch(rf"\s*Usage: (root|tokcal) {command} \[OPTIONS\]( \[?[A-Z_]+(\.\.\.)?\]?)*\s*", usage), usage
    assert "{" not in usage
    for noise in ("<bool>", "<list[", "<path>", "<str>", "<int>"):
        assert noise not in res.output, (noise, res.output)


def test_a_flag_given_a_value_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["collect", str(tmp_path), "x.txt", "--paragraphs", "true", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--paragraphs is a flag and takes no value" in " ".join(res.output.split())


def test_fit_takes_out_and_the_old_output_spelling(tmp_path):
    path = tmp_path / "t.parquet"
    synthetic.make_table(600, 50, seed=0).write_parquet(path)
    for spelling in ("-o", "--out", "--output"):
        out = tmp_path / f"c{spelling.strip('-')}.json"
        res = runner.invoke(app, ["fit", str(path), spelling, str(out), "--holdout", "0"])
        assert res.exit_code == 0, res.output
        assert load_calibrator(out).temperature > 0


def test_errors_name_flags_not_python_arguments(tmp_path):
    path = tmp_path / "t.parquet"
    synthetic.make_table(600, 50, seed=0).write_parquet(path)
    res = runner.invoke(app, ["check", str(path), "--max-regression", "0.1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--baseline and --max-regression go together" in text, text
    assert "max_regression" not in text


def test_collect_says_what_a_resume_did(tmp_path):
    from tiny_generate_lm import save_tiny

    model = save_tiny(tmp_path / "model")
    docs = tmp_path / "docs.txt"
    docs.write_text("In the beginning was the word.\n\nAnd the word was good.\n", encoding="utf-8")
    out = tmp_path / "tokens"
    args = ["collect", str(model), str(docs), "-o", str(out), "--paragraphs"]
    first = runner.invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "wrote " in first.output and " tokens of 2 documents to " in first.output
    again = runner.invoke(app, args, terminal_width=200)
    assert again.exit_code == 0, again.output
    assert "nothing to do: all 2 documents are already in" in again.output and "wrote nothing" in again.output
    single = tmp_path / "one.txt"
    single.write_text("Just one.", encoding="utf-8")
    res = runner.invoke(app, ["collect", str(model), str(single), "-o", str(tmp_path / "t1")], terminal_width=200)
    assert res.exit_code == 0 and "of 1 document to" in res.output and "1 documents" not in res.output
    assert "Loading" not in res.output and "it/s" not in res.output  # transformers' bars stay quiet


def test_import_logprobs_readme_example_is_scored(tmp_path, monkeypatch):
    """The README's import-logprobs command, as written, gives a table that tokcal evaluate scores."""
    import json

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if x.startswith("| `import-logprobs` |"))
    command = re.search(r"`(tokcal import-logprobs [^`]*)`", line).group(1).split()[1:]
    resp = {"choices": [{"logprobs": {"content": [
        {"token": "Hello", "logprob": -0.1, "top_logprobs": [
            {"token": "Hello", "logprob": -0.1}, {"token": "Hi", "logprob": -2.5}]},
        {"token": "!", "logprob": -0.7, "top_logprobs": [
            {"token": "!", "logprob": -0.7}, {"token": ",", "logprob": -0.9}]}]}}]}
    monkeypatch.chdir(tmp_path)
    Path("responses.jsonl").write_text("\n".join(json.dumps(resp) for _ in range(3)) + "\n")
    res = runner.invoke(app, command)
    assert res.exit_code == 0, res.output
    assert "labels: teacher-forced" in res.output
    res = runner.invoke(app, ["evaluate", command[command.index("-o") + 1], "--bootstrap", "0"])
    assert res.exit_code == 0 and "tokcal evaluation: 6 tokens, 3 sequences" in res.output, res.output
    # without the flag the command says, on one line, why evaluate could not score it
    res = runner.invoke(app, ["import-logprobs", "responses.jsonl", "-o", "unlabelled/", "--vocab-size", "100"])
    assert res.exit_code == 0
    warning = [x for x in res.output.splitlines() if x.startswith("warning: ")]
    assert len(warning) == 1 and "--tokens-are-reference" in warning[0], res.output


def test_make_demo_installs_only_what_the_demo_needs():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "-B", "-C", str(root), "demo", "VENV=/nonexistent-venv"], capture_output=True,
                          text=True, check=True).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert any('-e ".[hf,report,demo]"' in line for line in installs), plan
    assert not any("dev" in line for line in installs), plan
    assert "tokcal demo --out demo-output" in plan
