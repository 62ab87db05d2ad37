"""Data is printed and drawn literally: rich markup / emoji codes in tokens and group values, and
matplotlib mathtext in evaluation names, never crash a command nor change what is shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tokcal import TokenTable, synthetic
from tokcal.cli import app

runner = CliRunner()
NASTY = ["[/INST]", "[bold red]x", ":smile:", "[/x]", "$\\frac{1$", "$x$", "_hidden"]


@pytest.fixture(scope="module")
def nasty_table(tmp_path_factory):
    t = synthetic.make_table(3000, 40, domains={"[/x]": 0.6, "[bold red]y :smile:": 1.4}, seq_len=30, seed=4)
    vocab = [f"tok{i}" for i in range(40)]
    for i, s in enumerate(NASTY):
        vocab[int(np.bincount(t.predicted, minlength=40).argsort()[::-1][i])] = s
    t = TokenTable(sequence_id=t.sequence_id, position=t.position, label=t.label, top_ids=t.top_ids,
                   top_logits=t.top_logits, label_logit=t.label_logit, log_normalizer=t.log_normalizer,
                   tail=t.tail, layout=t.layout, vocab_size=t.vocab_size, groups=t.groups, vocab=vocab,
                   source={"model": "$\\alpha$ [/INST] model"})
    path = tmp_path_factory.mktemp("markup") / "t.parquet"
    t.write_parquet(path)
    return path


def test_evaluate_prints_markup_in_data_literally_and_writes_its_outputs(nasty_table, tmp_path):
    res = runner.invoke(app, ["evaluate", str(nasty_table), "-s", "group:domain", "--bootstrap", "0",
                              "--json", str(tmp_path / "e.json"), "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e.json").exists() and (tmp_path / "r.html").exists()
    assert "[/x]" in res.output and "[bold red]y" in res.output  # (the terminal is 80 wide: cells may be cut)
    assert "'[/INST]'" in res.output  # worst tokens are shown by repr
    assert "😄" not in res.output
    doc = json.loads((tmp_path / "e.json").read_text())
    assert {r["value"] for r in doc["slices"]["group:domain"]} == {"[/x]", "[bold red]y :smile:"}


def test_report_with_mathtext_names_draws_them_literally(nasty_table, tmp_path):
    pytest.importorskip("matplotlib")
    ev = tmp_path / "e.json"
    assert runner.invoke(app, ["evaluate", str(nasty_table), "--bootstrap", "0", "--json", str(ev)]).exit_code == 0
    named = [f"{name}={ev}" for name in ("$\\frac{1$", "$x$ [/INST]", "_under")]
    res = runner.invoke(app, ["report", *named, "-o", str(tmp_path / "r.html"), "--png-dir", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "png" / "reliability.svg").exists()

    from tokcal.report.data import load_evaluation
    from tokcal.report.plots import reliability_diagram

    fig = reliability_diagram({"$x^2$": load_evaluation(ev), "_under": load_evaluation(ev)})
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith(r"\$x^2\$") for t in texts) and any(t.startswith("\u200b_under") for t in texts)
    assert len(texts) == 3  # perfect calibration + both evaluations (a leading "_" would hide one)


def test_fit_and_check_print_group_values_literally(nasty_table, tmp_path):
    res = runner.invoke(app, ["fit", str(nasty_table), "--method", "group", "--by", "domain", "-o",
                              str(tmp_path / "c.json"), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["check", str(nasty_table), "--slice", "group:domain", "--max-slice-ece", "1",
                              "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "[/x]" in res.output
