"""Real evaluations for the report tests: ``tokcal.evaluate`` on a synthetic table with known truth.

Two domains, one calibrated (beta* = 1) and one over-confident (beta* = 0.5), evaluated before and
after a temperature fitted on it (between the two ideal ones, 1 and 2). The most frequent token ids get strings
full of markup and whitespace, so the report's escaping is exercised by what the evaluation itself
lists (worst tokens, contexts, passage).
"""

from __future__ import annotations

import copy
import functools

import tokcal
from tokcal.calibrators import Temperature
from tokcal.synthetic import make_table

NASTY = ["<script>alert(1)</script>", "&amp;", "\n", " the", "\"q'", "</td>", "é", "<b>x</b>"]


@functools.lru_cache(maxsize=1)
def _evaluations() -> dict:
    table = make_table(n_tokens=3000, vocab_size=200, seq_len=30, domains={"kjv": 1.0, "fortunes": 0.5}, seed=0)
    table.vocab = NASTY + list(table.vocab[len(NASTY):])  # ids 0.. are the most frequent (Zipf)
    cal = Temperature().fit(table)
    kw = {"slices": ["group:domain", "position"], "bootstrap": 50, "seed": 0}
    return {"uncalibrated": tokcal.evaluate(table, **kw).to_dict(),
            "temperature": tokcal.evaluate(table, calibrator=cal, **kw).to_dict()}


def evaluations() -> dict:
    """``{"uncalibrated": dict, "temperature": dict}`` (a fresh copy each call)."""
    return copy.deepcopy(_evaluations())
