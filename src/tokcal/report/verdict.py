"""The report's answer in words: is the model calibrated, where not, which calibrator to ship.

The words follow stated rules (:data:`RULES`), all read from paired differences
(:mod:`tokcal.paired`) and the evaluations' own intervals; nothing here computes a metric.

* the headline compares a *candidate* (the recommended calibrator, or the evaluation with the lowest
  ECE) against the *baseline* (the evaluation without a calibrator, else the first one);
* "cuts" / "raises" the ECE only when the paired 95 % interval of the difference excludes 0;
* a slice value is *miscalibrated* when its conf - acc interval excludes 0 (``significant``);
  the candidate *fixes* it when it was miscalibrated, its ECE is lower with a paired interval excluding 0,
  and it is no longer miscalibrated; it *improves* it when lower but still miscalibrated; it *worsens* it
  when the ECE is higher with an interval excluding 0; every value still miscalibrated after the candidate
  is listed as *still over-/under-confident*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..paired import Difference, difference, pairing
from .terminal import num, signed

RULES = (
    "“cuts” or “raises” the ECE: the paired 95 % bootstrap interval of the difference (same tokens, same "
    "resamples) excludes 0; otherwise “no significant change”.",
    "miscalibrated slice value: its 95 % interval of conf − acc excludes 0 (over-confident when above 0).",
    "“fixes” a slice value: it was miscalibrated, its ECE is lower (paired interval excludes 0) and it is no "
    "longer miscalibrated; “improves”: lower but still miscalibrated; “worsens”: its ECE is higher (paired "
    "interval excludes 0); “still over-/under-confident”: miscalibrated after the calibrator.",
)


@dataclass
class Verdict:
    """The headline's parts: which two evaluations, the overall difference, and slice values by outcome."""

    baseline: str
    candidate: str | None
    overall: Difference | None
    fixes: list[tuple[str, str]] = field(default_factory=list)
    improves: list[tuple[str, str]] = field(default_factory=list)
    remains: list[tuple[str, str, str]] = field(default_factory=list)  # still miscalibrated: (slice, value, side)
    worsens: list[tuple[str, str]] = field(default_factory=list)
    miscalibrated: list[tuple[str, str, str]] = field(default_factory=list)  # of the baseline alone
    paired: bool = False
    reason: str = ""


def _calibrator(ev: Mapping[str, Any]) -> Any:
    return (ev.get("settings") or {}).get("calibrator")


def slice_order(ev: Mapping[str, Any]) -> list[str]:
    """Slice names in order of importance: group slices first, then by the largest |conf - acc| of a
    significant value (most miscalibrated first), then the rest."""
    slices = ev.get("slices") or {}

    def worst(name: str) -> float:
        rows = [r for r in slices[name] if r.get("significant")]
        return max((abs(r.get("signed_gap") or 0.0) for r in rows), default=-1.0)

    return sorted(slices, key=lambda s: (not s.startswith("group:"), -worst(s), s))


def _side(row: Mapping[str, Any]) -> str:
    return "over-confident" if (row.get("signed_gap") or 0.0) > 0 else "under-confident"


def _rows(ev: Mapping[str, Any], name: str) -> dict[str, Mapping[str, Any]]:
    return {str(r.get("value")): r for r in (ev.get("slices") or {}).get(name, [])}


def choose(evs: Mapping[str, Mapping[str, Any]], recommended: str | None = None) -> tuple[str, str | None]:
    """(baseline, candidate): the evaluation without a calibrator (else the first) and the recommended one
    (else the lowest ECE among the others)."""
    names = list(evs)
    baseline = next((n for n in names if not _calibrator(evs[n])), names[0])
    if recommended is not None:
        return baseline, recommended
    others = [n for n in names if n != baseline and evs[n]["overall"].get("ece") is not None]
    if not others:
        return baseline, None
    return baseline, min(others, key=lambda n: evs[n]["overall"]["ece"])


def verdict(evs: Mapping[str, Mapping[str, Any]], recommended: str | None = None) -> Verdict:
    """The :class:`Verdict` of ``evs`` ({name: evaluation dict}) by the rules of the module docstring."""
    baseline, candidate = choose(evs, recommended)
    base = evs[baseline]
    out = Verdict(baseline, candidate, None)
    for name in slice_order(base):
        for value, r in _rows(base, name).items():
            if r.get("significant"):
                out.miscalibrated.append((name, value, _side(r)))
    if candidate is None:
        return out
    cand = evs[candidate]
    out.overall = difference(base, cand, "ece")
    out.paired, out.reason = pairing(base, cand)
    for name in slice_order(base):
        after = _rows(cand, name)
        for value, r in _rows(base, name).items():
            if value not in after:
                continue
            d = difference(base, cand, "ece", name, value)
            lower, higher = d.significant and (d.diff or 0) < 0, d.significant and (d.diff or 0) > 0
            still = bool(after[value].get("significant"))
            if higher:
                out.worsens.append((name, value))
            elif r.get("significant") and lower and not still:
                out.fixes.append((name, value))
            elif r.get("significant") and lower:
                out.improves.append((name, value))
            if still:
                out.remains.append((name, value, _side(after[value])))
    return out


def _ci(ci: Any) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or None in ci:
        return ""
    return f" [{num(ci[0], 3)}, {num(ci[1], 3)}]"


def _list(items: list[tuple[str, ...]], limit: int = 1) -> str:
    """The first ``limit`` slice values named, the rest as a count: ``group:domain=b and 2 more``."""
    shown = [f"{s}={v}" for s, v, *_ in items[:limit]]
    more = len(items) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _by_side(items: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {}
    for item in items:
        out.setdefault(item[2], []).append(item)
    return out


def sentences(evs: Mapping[str, Mapping[str, Any]], v: Verdict) -> list[str]:
    """The headline: at most two sentences worded by :data:`RULES`; the overall result, then the slice
    values by outcome, each outcome naming its first value and counting the rest (all of them:
    :func:`details`)."""
    base = evs[v.baseline]
    o = base["overall"]
    ece_ci = (o.get("ci") or {}).get("ece")
    if v.candidate is None or v.overall is None:
        gap_ci = (o.get("ci") or {}).get("signed_gap")
        first = (f"{v.baseline}: ECE {num(o.get('ece'), 3)}{_ci(ece_ci)}, conf − acc "
                 f"{signed(o.get('signed_gap'), 3)}{_ci(gap_ci)}.")
        if not v.miscalibrated:
            return [first, "No slice value is significantly miscalibrated."]
        sides = "; ".join(f"{side} on {_list(items)}" for side, items in _by_side(v.miscalibrated).items())
        return [first, f"Miscalibrated: {sides}."]
    c = evs[v.candidate]["overall"]
    d = v.overall
    a_txt = f"{num(o.get('ece'), 3)}{_ci(ece_ci)}"
    b_txt = f"{num(c.get('ece'), 3)}{_ci((c.get('ci') or {}).get('ece'))}"
    if not d.paired:
        first = (f"{v.candidate} changes ECE from {a_txt} to {b_txt}; the two are not paired "
                 f"because {d.reason}, so there is no interval for the difference.")
    elif d.ci is None:
        first = f"{v.candidate} changes ECE from {a_txt} to {b_txt} (no interval for the difference)."
    else:
        diff = f"paired difference {signed(d.diff, 3)}{_ci(d.ci)}"
        if d.significant:
            verb = "cuts" if (d.diff or 0) < 0 else "raises"
            first = f"{v.candidate} {verb} ECE from {a_txt} to {b_txt} ({diff})."
        else:
            first = (f"{v.candidate} leaves ECE without a significant change: {a_txt} to {b_txt} "
                     f"({diff} holds 0).")
    parts = [f"{verb} {_list(items)}" for verb, items in
             (("fixes", v.fixes), ("improves", v.improves), ("worsens", v.worsens)) if items]
    parts += [f"still {side} on {_list(items)}" for side, items in _by_side(v.remains).items()]
    if parts:
        return [first, f"It {'; '.join(parts)}."]
    if v.paired:
        return [first, "No slice value remains significantly miscalibrated."]
    return [first]


def details(v: Verdict) -> list[tuple[str, list[str]]]:
    """Every slice value the headline counts, by outcome: ``[(outcome, ["group:domain=b", ...]), ...]``
    (outcomes with no value left out)."""
    def names(items: list[tuple[str, ...]]) -> list[str]:
        return [f"{s}={val}" for s, val, *_ in items]

    if v.candidate is None or v.overall is None:
        groups = [(f"miscalibrated ({side})", names(items)) for side, items in _by_side(v.miscalibrated).items()]
    else:
        groups = [("fixes", names(v.fixes)), ("improves", names(v.improves)), ("worsens", names(v.worsens))]
        groups += [(f"still {side}", names(items)) for side, items in _by_side(v.remains).items()]
    return [(k, vals) for k, vals in groups if vals]


def describe_slice(name: str) -> str:
    """One line on what a slice spec splits by and what its values mean."""
    kind, _, arg = name.partition(":")
    if kind == "group":
        return (f"the group column “{arg}” the tokens were collected with (e.g. a domain or a split); one row "
                "per value.")
    if kind == "freq":
        who = "predicted" if arg == "predicted" else "gold"
        return (f"how frequent the {who} token is: its rank in the reference token counts (the model's training "
                "counts when given, else this table); top-100 = among the 100 most frequent ids, 100-1k = ranks "
                "100 to 999, …, unseen = never counted.")
    if kind == "type":
        who = "predicted" if arg == "predicted" else "gold"
        return (f"the kind of {who} token: word-initial = starts a word (after a space or a word-start marker), "
                "continuation = inside a word, punctuation, digits, whitespace, special / eos tokens, other.")
    if kind == "position":
        return ("where the predicted token sits in its sequence: 0 = the first prediction, 1-3, 4-15, … "
                "(later tokens have more context).")
    if kind == "words":
        return f"gold tokens on the challenge list {arg} (listed) against all others."
    return "a user-defined slice."
