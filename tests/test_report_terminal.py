"""Terminal text: readable at 80 columns when not a TTY (CI logs), numbers never cut, no -0.0000."""

from __future__ import annotations

import io
import re

from report_fixture import evaluations
from rich.console import Console

from tokcal.report.terminal import (
    check_command,
    demo_summary,
    ece_table,
    num,
    plural,
    print_summary,
    ranked_slice_rows,
    signed,
)


def test_numbers_and_plurals():
    assert num(-0.00001) == "0.0000" and num(-0.2) == "-0.2000" and num(None) == "undefined"
    assert signed(-0.00001) == "+0.0000" and signed(0.0123, 3) == "+0.012" and signed(-0.5, 1) == "-0.5"
    assert plural(1, "sequence") == "1 sequence" and plural(1200, "token") == "1,200 tokens"
    assert plural(3, "entry", "entries") == "3 entries"


def test_summary_fits_80_columns_without_a_tty():
    ev = evaluations()["uncalibrated"]
    buf = io.StringIO()
    print_summary(ev, Console(file=buf, width=80, force_terminal=False, color_system=None))
    out = buf.getvalue()
    # every line fits, except the signature: an identifier kept on one line so it can be copied whole
    assert all(len(line) <= 80 or line == ev["signature"] for line in out.splitlines()), out
    assert "…" not in out and "-0.0000" not in out
    # every shown slice value's numbers are there in full
    for name, row in ranked_slice_rows(ev)[:8]:
        assert f"{row['accuracy']:.3f}" in out and f"{row['ece']:.3f}" in out, (name, row)
    assert "* the 95% interval of conf - acc excludes 0" in out
    assert "tokcal evaluation: 3,000 tokens, 100 sequences" in out


def _by_column(evs):
    return {"all": {name: (ev["overall"]["ece"], ev["overall"]["ci"]["ece"]) for name, ev in evs.items()}}


def test_ece_table_shows_each_value_with_its_interval_at_80_columns():
    evs = evaluations()
    by_column = _by_column(evs)
    buf = io.StringIO()
    Console(file=buf, width=80, force_terminal=False, color_system=None).print(
        ece_table(by_column, list(evs), {"all": "all\n1,000 tokens"}, "ECE"))
    out = buf.getvalue()
    assert all(len(line) <= 80 for line in out.splitlines()) and "…" not in out, out
    for ev in evs.values():
        lo, hi = ev["overall"]["ci"]["ece"]
        assert num(ev["overall"]["ece"]) in out and f"[{num(lo)}, {num(hi)}]" in out, out
    best = min(evs, key=lambda k: evs[k]["overall"]["ece"])
    coloured = io.StringIO()
    Console(file=coloured, width=80, force_terminal=True, color_system="standard").print(
        ece_table(by_column, list(evs), {}, "ECE"))
    line = next(x for x in coloured.getvalue().splitlines() if best in x)
    # the lowest ECE of the column in bold green, the other not
    assert re.search(r"\x1b\[1;32m\s*" + re.escape(num(evs[best]["overall"]["ece"])), line), line
    other_name = next(k for k in evs if k != best)
    other = next(x for x in coloured.getvalue().splitlines() if other_name in x)
    assert "\x1b[1;32m" not in other, other


def test_demo_summary_words_what_the_demo_did():
    evs = evaluations()
    items = demo_summary(_by_column(evs), list(evs), {"all": 1234}, {"all": "everything"}, temperature=1.25,
                         group_temperatures={"kjv": 1.1}, chosen="temperature",
                         selection={"temperature": 0.01234, "group_temperature": 0.02}, out="demo-output",
                         seconds=3.21, limits={"max_ece": 0.05, "max_slice_ece": 0.125})
    text = "\n".join(i for i in items if isinstance(i, str))
    assert "T = 1.250" in text and "kjv 1.100" in text and "temperature 0.0123" in text and "3.2 s" in text
    assert text.endswith("try: tokcal check demo-output/test.parquet --calibrator demo-output/calibrator.json "
                         "--max-ece 0.05 --slice group:domain --max-slice-ece 0.125")
    buf = io.StringIO()
    Console(file=buf, width=80, force_terminal=False, color_system=None).print(items[0])
    assert "everything" in buf.getvalue() and "1,234 tokens" in buf.getvalue()
    assert check_command("o", {"max_ece": None, "max_slice_ece": None}) == \
        "tokcal check o/test.parquet --calibrator o/calibrator.json"
