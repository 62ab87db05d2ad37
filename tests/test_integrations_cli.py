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
    tokens = re.findall(r"<ruby[^>]*>(.*?)<rt>([^<]*)</rt></ruby>", page, flags=re.S)
    assert html.unescape("".join(t for t, _ in tokens)) == text
    assert all(n == "–" or 0 <= float(n) <= 1 for _, n in tokens)  # every token shows its confidence
    assert 'class="flag"' in page
    # colour-blind-safe palette with a legend naming every range; no red/green pair
    for colour in ("#e66101", "#fdb863", "#b2abd2", "#5e3c99"):
        assert colour in page
    assert "low [0.00, 0.30)" in page and "very high [0.85, 1.00]" in page


def test_annotate_file_and_errors(files):
    d, model_dir, cal, _ = files
    f = d / "in.txt"
    f.write_text("In the beginning was the word.\n", encoding="utf-8")
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(cal), "--file", str(f),
                              "--format", "text"])
    assert res.exit_code == 0, res.output
    assert "beginning" in res.output and "confidence: low [0.00, 0.30)" in res.output
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(cal)])
    assert res.exit_code == 2 and "exactly one of --text or --file" in res.output
    res = runner.invoke(app, ["annotate", str(d / "nope"), "--calibrator", str(cal), "--text", "x"])
    assert res.exit_code == 2 and "not a model directory" in res.output
    res = runner.invoke(app, ["annotate", str(model_dir), "--calibrator", str(f), "--text", "x"])
    assert res.exit_code == 2 and "in.txt" in res.output


def test_piped_annotate_prints_one_line_per_token(files):
    d, model_dir, cal, _ = files
    text = "In the\tbeginning\nwas"
    res = runner.invoke(app, ["annotate", str(model_dir), "-c", str(cal), "--text", text])  # not a TTY: TSV
    assert res.exit_code == 0, res.output
    lines = res.output.rstrip("\n").split("\n")
    header = lines[0].split("\t")
    assert header[:5] == ["index", "start", "end", "id", "text"] and "confidence" in header
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    unescaped = "".join(r["text"].replace("\\t", "\t").replace("\\n", "\n") for r in rows)
    assert unescaped == text
    assert all(0 <= float(r["confidence"]) <= 1 for r in rows[1:])
    res = runner.invoke(app, ["annotate", str(model_dir), "-c", str(cal), "--text", text, "--format", "jsonl"])
    import json

    toks = [json.loads(line) for line in res.output.splitlines()]
    assert "".join(t["text"] for t in toks) == text and [t["start"] for t in toks] == [float(r["start"]) for r in rows]


def test_group_and_adaptive_calibrators_take_group(files):
    from tokcal.calibrators import AdaptiveTemperature, GroupTemperature
    from tokcal.synthetic import make_table

    d, model_dir, _, _ = files
    t = make_table(3000, 200, domains={"kjv": 0.6, "fortunes": 1.4}, seed=0)
    outs = {}
    for name, cal in (("group", GroupTemperature(by="domain")), ("adaptive", AdaptiveTemperature(groups=("domain",)))):
        path = cal.fit(t).save(d / f"{name}.json")
        res = runner.invoke(app, ["annotate", str(model_dir), "-c", str(path), "--text", "The quick"])
        assert res.exit_code == 2 and "pass --group domain=VALUE" in " ".join(res.output.split()), res.output
        for value in ("kjv", "fortunes"):
            res = runner.invoke(app, ["annotate", str(model_dir), "-c", str(path), "--text", "The quick brown",
                                      "--group", f"domain={value}"])
            assert res.exit_code == 0 and "warning" not in res.output, res.output
            outs[name, value] = [line.split("\t")[7] for line in res.output.splitlines()[2:]]
        assert outs[name, "kjv"] != outs[name, "fortunes"]  # the group's temperature is used
    res = runner.invoke(app, ["generate", str(model_dir), "-c", str(d / "group.json"), "-p", "The", "--group",
                              "domain=kjv", "--max-new-tokens", "3", "--format", "jsonl"])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 3, res.output
    res = runner.invoke(app, ["generate", str(model_dir), "-c", str(d / "group.json"), "-p", "The", "--group", "kjv"])
    assert res.exit_code == 2 and "--group must be NAME=VALUE, got 'kjv'" in res.output


def test_generate_refusal_names_the_flag(files):
    from tokcal.calibrators import HistogramBinning
    from tokcal.synthetic import make_table

    d, model_dir, _, _ = files
    path = HistogramBinning().fit(make_table(2000, 100, seed=0)).save(d / "hist.json")
    res = runner.invoke(app, ["generate", str(model_dir), "-c", str(path), "-p", "The", "--max-new-tokens", "2"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "pass --allow-argmax-change to decode" in text, text
    assert "=True" not in text and "preserves_argmax" not in text, text


def test_generate_is_seeded_and_prints_the_continuation(files):
    d, model_dir, cal, _ = files
    args = ["generate", str(model_dir), "--calibrator", str(cal), "--prompt", "The quick", "--max-new-tokens", "6",
            "--top-p", "0.9", "--format", "text", "--seed", "3"]
    a, b = runner.invoke(app, args), runner.invoke(app, args)
    assert a.exit_code == 0, a.output
    assert a.output == b.output and "The quick" in a.output
    res = runner.invoke(app, [*args[:-1], "4", "--greedy", "--html", str(d / "g.html")])
    assert res.exit_code == 0 and (d / "g.html").exists()
    res = runner.invoke(app, [*args, "--top-p", "1.5"])
    assert res.exit_code == 2 and "--top-p" in res.output
