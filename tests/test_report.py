"""The HTML report and the diagrams: self-contained, escaped, and showing exactly the evaluation's numbers."""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from report_fixture import evaluations
from typer.testing import CliRunner

from tokcal.cli import app
from tokcal.errors import SchemaError, ValidationError
from tokcal.report import load_evaluation, reliability_diagram, render_html, save_diagrams, save_figure, write_html
from tokcal.report.html import SORT_SCRIPT, SORT_SCRIPT_HASH, slices_section

SVG_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


@pytest.fixture(scope="module")
def evs():
    return evaluations()


@pytest.fixture(scope="module")
def page(evs):
    return render_html(evs, title="t")


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained(page):
    p = Tags()
    p.feed(page)
    names = {t for t, _ in p.tags}
    assert not names & {"link", "iframe", "object", "embed", "img", "audio", "video", "base"}
    # one script, the table sorter, inline and allowed by its hash alone
    assert [a for t, a in p.tags if t == "script"] == [{}]
    assert page.count("<script>") == 1 and f"<script>{SORT_SCRIPT}</script>" in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert csp.startswith("default-src 'none';") and f"script-src '{SORT_SCRIPT_HASH}';" in csp
    assert SORT_SCRIPT_HASH == "sha256-" + base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    assert sum(t == "svg" for t, _ in p.tags) == 3 + 2  # diagrams, and small multiples of group:domain, position
    for tag, attrs in p.tags:
        for k, v in attrs.items():
            if k in ("href", "src", "xlink:href", "action"):
                assert v is None or v.startswith("#"), (tag, k, v)
    remote = set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'<>)]*", page))
    assert remote <= SVG_NAMESPACES, remote - SVG_NAMESPACES  # xmlns names only: never fetched
    assert "@import" not in page
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", page))  # same-document clip paths


def test_data_is_escaped(evs, page):
    tokens = [t["token"] for ev in evs.values() for t in ev["worst_tokens"]]
    assert "<script>alert(1)</script>" in tokens  # the fixture does list it
    assert page.count("<script>") == 1  # the report's own sorter only (test_html_is_self_contained)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # a context's predicted token is its own field; the report marks it, escaped
    assert any(c["token"] == "<script>alert(1)</script>" for ev in evs.values() for t in ev["worst_tokens"]
               for c in t["contexts"])
    assert "<mark>&lt;script&gt;alert(1)&lt;/script&gt;</mark>" in page
    nasty = copy.deepcopy(evs)
    nasty['<b onmouseover="x">'] = nasty.pop("uncalibrated")
    text = render_html(nasty, title="</title><script>")
    assert "<b onmouseover" not in text and "</title><script>" not in text
    assert "&lt;b onmouseover=&quot;x&quot;&gt;" in text


def test_overview_and_slices_show_the_evaluation_numbers(evs, page):
    for ev in evs.values():
        o = o_ci = ev["overall"]
        for key in ("ece", "ece_debiased", "nll", "brier", "signed_gap"):
            lo, hi = o_ci["ci"][key]
            assert f"{o[key]:.4f}<br><span class=\"ci\">[{lo:.4f}, {hi:.4f}]</span>" in page
        assert f"{o['n']:,}" in page
    over = sum(r["significant"] and r["signed_gap"] > 0 for ev in evs.values() for s in ev["slices"].values()
               for r in s)
    under = sum(r["significant"] and r["signed_gap"] < 0 for ev in evs.values()
                for s in ev["slices"].values() for r in s)
    assert over > 0  # the uncalibrated fixture is over-confident in every slice
    assert page.count('class="sig-over"') == over and page.count('class="sig-under"') == under


def test_slice_marking_falls_back_to_the_gap_interval(evs):
    ev = copy.deepcopy(evs["uncalibrated"])
    rows = ev["slices"]["position"]
    for r in rows:
        del r["significant"]
    rows[0]["gap_ci"], rows[0]["signed_gap"] = [-0.2, -0.1], -0.15
    rows[1]["gap_ci"] = [-0.01, 0.3]
    html = slices_section({"x": {**ev, "slices": {"position": rows}}})
    assert html.count('class="sig-under"') == 1
    assert html.count('class="sig-over"') == sum(r["gap_ci"][0] > 0 for r in rows) > 0


def test_undefined_values_show_as_dash(evs):
    ev = copy.deepcopy(evs["uncalibrated"])
    ev["overall"]["ece"] = None
    ev["overall"]["ci"]["ece"] = [None, None]
    ev["overall"]["nll"] = None
    ev["slices"] = {}
    ev["passage"] = []
    html = render_html({"x": ev})
    overview = html[html.index('id="overview"'):html.index('id="diagrams"')]
    assert "—" in overview and "None" not in overview and "nan" not in overview
    assert "No slices were evaluated" in html and "carry no passage" in html
    ev["overall"]["nll"] = float("nan")  # not a value an evaluation can hold (undefined is None/null)
    with pytest.raises(SchemaError, match=r"overall\.nll must be a finite number, got nan"):
        render_html({"x": ev})


def test_accepts_evaluation_objects(evs, tmp_path):
    from tokcal.evaluation import Evaluation

    objs = {k: Evaluation.from_dict(v) for k, v in evs.items()}
    assert render_html(objs, title="t") == render_html(evs, title="t")
    single = render_html(objs["temperature"])
    assert "<h3>evaluation</h3>" in single and f"{evs['temperature']['overall']['ece']:.4f}" in single
    assert len(save_diagrams(objs["temperature"], tmp_path, formats=("svg",))) == 3


def test_write_html_is_atomic(evs, tmp_path):
    path = tmp_path / "sub" / "report.html"
    write_html(path, evs)
    first = path.read_text(encoding="utf-8")
    assert first.startswith("<!DOCTYPE html>") and first.rstrip().endswith("</html>")
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    broken = {"a": {"signature": "s", "overall": {}}}  # no bins
    with pytest.raises(SchemaError, match="evaluation 'a'.*bins"):
        write_html(path, broken)
    assert path.read_text(encoding="utf-8") == first
    assert sorted(os.listdir(path.parent)) == ["report.html"]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_reliability_diagram_draws_the_bins(evs):
    import matplotlib.pyplot as plt

    fig = reliability_diagram(evs)
    try:
        lines = [ln for ln in fig.axes[0].lines if ln.get_label().startswith(tuple(evs))]
        assert len(lines) == len(evs)
        for ln, ev in zip(lines, evs.values(), strict=True):
            rows = [b for b in ev["bins"] if b["n"]]
            assert list(ln.get_xdata()) == pytest.approx([b["confidence"] for b in rows])
            assert list(ln.get_ydata()) == pytest.approx([b["accuracy"] for b in rows])
            assert f"{ev['overall']['ece']:.4f}" in ln.get_label()
        heights = sorted(p.get_height() for p in fig.axes[1].patches)
        assert heights == sorted(float(b["n"]) for ev in evs.values() for b in ev["bins"] if b["n"])
    finally:
        plt.close(fig)


def test_save_diagrams_png_svg(evs, tmp_path):
    paths = save_diagrams(evs, tmp_path / "fig", formats=("png", "svg"))
    assert sorted(p.name for p in paths) == sorted(
        f"{d}.{f}" for d in ("reliability", "confidence_histogram", "risk_coverage") for f in ("png", "svg"))
    for p in paths:
        data = p.read_bytes()
        if p.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"
    with pytest.raises(ValidationError, match="unsupported figure format 'jpg'"):
        save_figure(None, tmp_path / "x.jpg")
    with pytest.raises(ValidationError, match="unsupported figure format"):
        save_diagrams(evs, tmp_path, formats=("gif",))


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValidationError, match="expected a non-empty mapping"):
        render_html({})
    with pytest.raises(ValidationError, match="evaluation 'x': expected a tokcal Evaluation"):
        render_html({"x": 3})
    with pytest.raises(SchemaError, match="missing key.*signature"):
        render_html({"x": {"overall": {}, "bins": []}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SchemaError, match="bad.json: not valid JSON"):
        load_evaluation(bad)
    with pytest.raises(SchemaError, match="no such evaluation file"):
        load_evaluation(tmp_path / "missing.json")


def test_report_cli(evs, tmp_path):
    a, b = tmp_path / "before.json", tmp_path / "after.json"
    a.write_text(json.dumps(evs["uncalibrated"]))
    b.write_text(json.dumps(evs["temperature"]))
    out, figs = tmp_path / "r.html", tmp_path / "figs"
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(a), f"T2={b}", "-o", str(out), "--png-dir", str(figs)])
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert "<h3>before</h3>" in html and "<h3>T2</h3>" in html
    assert len(list(figs.glob("*.png"))) == 3 and len(list(figs.glob("*.svg"))) == 3
    res = runner.invoke(app, ["report", str(a), f"before={b}", "-o", str(out)])
    assert res.exit_code == 2 and "two evaluations are named 'before'" in _flat(res.output)
    res = runner.invoke(app, ["report", str(tmp_path / "nope.json"), "-o", str(out)])
    assert res.exit_code == 2 and "nope.json: no such evaluation file" in _flat(res.output)


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_headline_next_steps_and_one_signatures_section(evs, page):
    from tokcal import gate
    from tokcal.report.verdict import sentences, verdict

    head = page.index('<section id="headline">')
    assert head < page.index('id="by-slice"') < page.index('id="next-steps"') < page.index('id="overview"')
    words = sentences(evs, verdict(evs))
    assert html.escape(words[0]) in page and "paired difference" in words[0]
    assert "How these words are chosen" in page
    limits = gate.suggest_limits(evs["temperature"], slices=["group:domain"])
    assert f"--max-ece {limits['max_ece']:g}" in page and f"--max-slice-ece {limits['max_slice_ece']:g}" in page
    assert page.count('<section id="signatures">') == 1 and page.count("<h2>Signatures</h2>") == 1
    assert "-0.0000" not in page and "−0.0000" not in page
    # slices: group slices first, each with its one-line explanation
    assert page.index("<h3>group:domain</h3>") < page.index("<h3>position</h3>")
    assert "the group column “domain”" in page and "where the predicted token sits in its sequence" in page


def test_negative_zero_is_shown_as_zero():
    from tokcal.report.html import fmt

    assert fmt(-0.00001) == "0.0000" and fmt(-0.2, 1) == "-0.2" and fmt(-1e-9, 2) == "0.00"


def test_markdown_summary(evs, tmp_path):
    from tokcal.report.markdown import render_markdown

    nasty = {"a|b*": evs["uncalibrated"], "temperature": evs["temperature"]}
    md = render_markdown(nasty, title="Card")
    assert md.startswith("## Card\n") and "temperature cuts ECE" in md
    assert "| a\\|b\\* | 3,000 |" in md  # table cells escaped
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == table_rows[0].count(" | ") for line in table_rows[:3])
    assert "**group:domain**" in md and "tokcal check TABLE --calibrator CAL.json --max-ece" in md
    a, b = tmp_path / "before.json", tmp_path / "after.json"
    a.write_text(json.dumps(evs["uncalibrated"]))
    b.write_text(json.dumps(evs["temperature"]))
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(a), f"T={b}", "--markdown", str(tmp_path / "s.md")])
    assert res.exit_code == 0, res.output
    assert "T cuts ECE" in (tmp_path / "s.md").read_text(encoding="utf-8")
    res = runner.invoke(app, ["report", str(a)])
    assert res.exit_code == 2 and "give -o/--out" in res.output
    res = runner.invoke(app, ["report", str(a), f"T={b}", "-o", str(tmp_path / "r.html"), "--recommend", "U"])
    assert res.exit_code == 2 and "--recommend 'U': not one of the evaluations (before, T)" in _flat(res.output)


def test_evaluations_without_pairing_data_are_reported_unpaired(evs):
    old = copy.deepcopy(evs)
    for ev in old.values():
        for key in ("replicates", "table_fingerprint", "slice_bins"):
            ev.pop(key)
    page = render_html(old)
    verdict_text = re.search(r'<p class="verdict">(.*?)</p>', page).group(1)
    assert "not paired because an evaluation has no table fingerprint" in html.unescape(verdict_text)
    assert "cuts" not in verdict_text and 'id="by-slice"' not in page and 'href="#by-slice"' not in page


def _sentences(text):
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z“])", text.strip()) if s]


@pytest.mark.parametrize("names", [("uncalibrated", "temperature"), ("uncalibrated",)])
def test_headline_is_at_most_two_sentences_with_the_rest_counted_below(evs, names):
    from tokcal.report.markdown import render_markdown
    from tokcal.report.verdict import details, verdict

    chosen = {n: evs[n] for n in names}
    page = render_html(chosen)
    text = html.unescape(re.search(r'<p class="verdict">(.*?)</p>', page).group(1))
    assert 1 <= len(_sentences(text)) <= 2, text
    groups = details(verdict(chosen))
    assert any(len(vals) > 1 for _, vals in groups)  # the fixture has outcomes with several values
    for _, vals in groups:
        assert vals[0] in text  # the first value of each outcome is named ...
        if len(vals) > 1:  # ... the rest counted
            assert f"{vals[0]} and {len(vals) - 1} more" in text
    below = page[page.index('id="headline-details"'):page.index('id="by-slice"') if 'id="by-slice"' in page else None]
    assert all(v in html.unescape(below) for _, vals in groups for v in vals)  # every value listed below
    md = render_markdown(chosen)
    assert all(f"- {outcome}: " in md for outcome, _ in groups)
