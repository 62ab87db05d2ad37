"""`tokcal annotate` and `tokcal generate` on a tiny local model folder (safetensors) built here."""

from __future__ import annotations

import html
import re

import pytest
from tiny_generate_lm import save_tiny
from typer.testing import CliRunner

from tokcal.calibrators import Temperature
from tokcal.cli import app
from tokcal.integrations.abstain import Abstainer

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny(d / "model")
    cal = Temperature(temperature=1.4).save(d / "cal.json")
    ab = Abstainer(0.02).save(d / "abstain.json")
    return d, model_dir, cal, ab


def test_annotate_text_and_html(files):
    d, model_dir, cal, ab = files
    text = "The quick brown fox <jumps> & naïve café 🙂"
    out = d / "page.html"
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(cal), "--text", text,
                              "--html", str(out), "--abstainer", str(ab)])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "http" not in page.split("<body>")[1]
    tokens = re.findall(r"<span[^>]*>(.*?)</span>", page, flags=re.S)
    assert html.unescape("".join(tokens)) == text
    assert 'class="flag"' in page


def test_annotate_file_and_errors(files):
    d, model_dir, cal, _ = files
    f = d / "in.txt"
    f.write_text("In the beginning was the word.\n", encoding="utf-8")
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(cal), "--file", str(f)])
    assert res.exit_code == 0, res.output
    assert "beginning" in res.output
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(cal)])
    assert res.exit_code == 2 and "exactly one of --text or --file" in res.output
    res = runner.invoke(app, ["annotate", str(d / "nope"), "--calibrator", str(cal), "--text", "x"])
    assert res.exit_code == 2 and "not a model directory" in res.output
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(f), "--text", "x"])
    assert res.exit_code == 2 and "in.txt" in res.output


def test_generate_is_seeded_and_prints_the_continuation(files):
    d, model_dir, cal, _ = files
    args = ["generate", str(model_dir), "--calibrator", str(cal), "--prompt", "The quick", "--max-new-tokens", "6",
            "--top-p", "0.9", "--seed", "3"]
    a, b = runner.invoke(app, args), runner.invoke(app, args)
    assert a.exit_code == 0, a.output
    assert a.output == b.output and "The quick" in a.output
    res = runner.invoke(app, [*args[:-1], "4", "--greedy", "--html", str(d / "g.html")])
    assert res.exit_code == 0 and (d / "g.html").exists()
    res = runner.invoke(app, [*args, "--top-p", "1.5"])
    assert res.exit_code == 2 and "--top-p" in res.output
