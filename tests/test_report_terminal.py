"""Terminal text: readable at 80 columns when not a TTY (CI logs), numbers never cut, no -0.0000."""

from __future__ import annotations

import io

from report_fixture import evaluations
from rich.console import Console

from tokcal.report.terminal import num, plural, print_summary, ranked_slice_rows, signed


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
