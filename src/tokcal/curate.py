"""Targeted data from an evaluation: a challenge set of the contexts where confidence is most wrong,
and per-sequence sampling weights that oversample sequences with rare or miscalibrated tokens.

Every labelled token i has confidence c_i and correctness a_i; its *miscalibration* is
``e_i = c_i - a_i`` (> 0: confident and wrong; < 0: right but unsure). Tokens are mined by reason:

* ``overconfident``: the wrong predictions with the highest confidence (largest e_i);
* ``worst-token``: for each of the evaluation's ``worst_tokens`` (predicted ids with the largest
  share of the ECE), the rows predicting it whose e_i points the way of the token's gap;
* ``slice``: for each *significant* slice value (its signed-gap interval excludes 0), the rows of
  that value with the largest e_i (over-confident value) or smallest (under-confident value);
* ``words``: gold tokens on a challenge word list (``words:`` slice format), largest |e_i| first.

:func:`challenge_set` returns one document per mined token: the text of the ``context`` tokens
before it and the token itself (decoded from the table's labels with its vocabulary), with the
target, the prediction, the confidence and the reason. Written as JSON Lines
(:func:`write_challenge`) they are a ``tokcal collect`` input (``--group-field challenge`` scores
them as their own group), and the targets a ``words:`` list.

:func:`sampling_weights` gives each sequence ``w_s = 1 + boost * h_s / n_s``, with h_s of its n_s
labelled tokens *hard* (gold id rare: rank >= ``rare_rank`` or unseen in a reference frequency,
:mod:`tokcal.frequency`; or |e_i| >= ``threshold``; or predicted id among the worst tokens),
normalised to mean 1. Feed them to ``torch.utils.data.WeightedRandomSampler`` in sequence order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write
from .errors import ValidationError
from .evaluation import Evaluation, evaluate
from .probs import token_probs
from .slices import parse_slice
from .table import TokenTable
from .validation import NonNegativeFloat, NonNegativeInt, Params, PositiveInt, Probability, check_params


@dataclass(frozen=True)
class Challenge:
    """One mined token: where it is, what it is, and why it was chosen."""

    sequence_id: int
    position: int
    target_id: int
    target: str
    predicted_id: int
    predicted: str
    confidence: float
    correct: bool
    reason: str
    why: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": f"challenge-{self.sequence_id}-{self.position}", "text": self.text, "challenge": self.reason,
                "why": self.why, "target": self.target, "target_id": self.target_id, "predicted": self.predicted,
                "predicted_id": self.predicted_id, "confidence": self.confidence, "correct": self.correct,
                "sequence_id": self.sequence_id, "position": self.position}


def _evaluation_dict(table: TokenTable, evaluation: Any, calibrator: Any) -> dict[str, Any]:
    if evaluation is None:
        evaluation = evaluate(table, calibrator=calibrator, bootstrap=200, seed=0)
    return evaluation.to_dict() if isinstance(evaluation, Evaluation) else dict(evaluation)


def _top(idx: np.ndarray, score: np.ndarray, n: int, taken: set[int]) -> list[int]:
    """Up to ``n`` of ``idx`` by descending ``score``, skipping rows already taken (stable order)."""
    out: list[int] = []
    if n <= 0:
        return out
    for j in idx[np.argsort(-score[idx], kind="stable")]:
        if int(j) not in taken:
            out.append(int(j))
            taken.add(int(j))
            if len(out) == n:
                break
    return out


class _ChallengeParams(Params):
    """How many contexts :func:`challenge_set` mines, and how much text precedes each (tokens)."""

    context: NonNegativeInt
    overconfident: NonNegativeInt
    per_token: NonNegativeInt
    per_slice: NonNegativeInt
    word_rows: NonNegativeInt


class _WeightParams(Params):
    """The hard-token rule and the boost of :func:`sampling_weights`."""

    rare_rank: PositiveInt
    threshold: Probability
    boost: NonNegativeFloat


def challenge_set(table: TokenTable, evaluation: Any = None, *, calibrator: Any = None, context: int = 32,
                  overconfident: int = 50, per_token: int = 3, per_slice: int = 5,
                  words: str | os.PathLike | None = None, word_rows: int = 50) -> list[Challenge]:
    """Mine the contexts where confidence is most wrong (module docstring). ``evaluation``: an
    Evaluation (or its dict) of ``table``; computed (200 resamples) when None."""
    if table.vocabulary is None:
        raise ValidationError("challenge_set: the table has no vocabulary, so its contexts cannot be written as "
                              "text (collect with a tokenizer, or set table.vocab)")
    check_params("challenge_set", _ChallengeParams, context=context, overconfident=overconfident,
                 per_token=per_token, per_slice=per_slice, word_rows=word_rows)
    ev = _evaluation_dict(table, evaluation, calibrator)
    p = calibrator.token_probs(table) if calibrator is not None else token_probs(table)
    lab = table.labeled
    if not lab.any():
        raise ValidationError("challenge_set: the table has no labelled token")
    c = p.confidence.astype(np.float64)
    a = p.correct.astype(np.float64)
    e = np.where(lab, c - a, np.nan)
    rows = np.flatnonzero(lab)
    taken: set[int] = set()
    picks: list[tuple[int, str, str]] = []

    wrong = rows[a[rows] == 0]
    for j in _top(wrong, c, overconfident, taken):
        picks.append((j, "overconfident", f"wrong with confidence {c[j]:.3f}"))

    predicted = p.predicted
    for w in ev.get("worst_tokens") or []:
        idx = rows[predicted[rows] == int(w["id"])]
        sign = 1.0 if (w.get("gap") or 0.0) >= 0 else -1.0
        for j in _top(idx, sign * e, per_token, taken):
            picks.append((j, "worst-token", f"predicted token {w.get('token')!r} has gap {w.get('gap'):+.3f} over "
                                            f"{w.get('n')} tokens ({100 * (w.get('ece_share') or 0):.1f}% of the ECE)"))

    for name, values in (ev.get("slices") or {}).items():
        sig = [r for r in values if r.get("significant")]
        if not sig:
            continue
        try:
            sl = parse_slice(name)
        except ValidationError:
            continue
        codes = sl.codes(table, p)
        for r in sig:
            if str(r["value"]) not in sl.labels:
                continue
            code = sl.labels.index(str(r["value"]))
            idx = rows[codes[rows] == code]
            sign = 1.0 if (r.get("signed_gap") or 0.0) >= 0 else -1.0
            for j in _top(idx, sign * e, per_slice, taken):
                side = "over" if sign > 0 else "under"
                picks.append((j, "slice", f"slice {name}={r['value']} is significantly {side}-confident "
                                          f"(gap {r.get('signed_gap'):+.3f})"))

    if words is not None:
        ws = parse_slice(f"words:{words}")
        idx = rows[ws.codes(table, p)[rows] == ws.labels.index("listed")]
        for j in _top(idx, np.abs(e), word_rows, taken):
            picks.append((j, "words", f"gold token on the challenge list {Path(words).name}"))

    return [_challenge(table, j, reason, why, c, a, predicted, context) for j, reason, why in picks]


def _challenge(table: TokenTable, j: int, reason: str, why: str, c: np.ndarray, a: np.ndarray,
               predicted: np.ndarray, context: int) -> Challenge:
    vocab = table.vocabulary
    seq, pos = int(table.sequence_id[j]), int(table.position[j])
    same = np.flatnonzero((table.sequence_id == seq) & (table.position >= pos - context) & (table.position <= pos))
    same = same[np.argsort(table.position[same], kind="stable")]
    ids = [int(x) for x in table.label[same] if x >= 0]
    target, pred = int(table.label[j]), int(predicted[j])
    return Challenge(seq, pos, target, vocab.display(target), pred, vocab.display(pred), float(c[j]), bool(a[j]),
                     reason, why, vocab.decode(ids))


def write_challenge(items: Sequence[Challenge], jsonl: str | os.PathLike,
                    words: str | os.PathLike | None = None) -> None:
    """The challenge documents as JSON Lines and (optionally) their targets as a ``words:`` list."""
    lines = "".join(json.dumps(it.to_dict(), ensure_ascii=False) + "\n" for it in items)

    def put(text: str):
        return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(jsonl, put(lines))
    if words is not None:
        seen: dict[str, None] = {}
        for it in items:
            w = it.target.strip().lower()
            if w and not w.startswith("#"):
                seen.setdefault(w, None)
        atomic_write(words, put("# tokcal curate: target tokens of the challenge set\n" + "\n".join(seen) + "\n"))


def sampling_weights(table: TokenTable, evaluation: Any = None, *, calibrator: Any = None, freq_ref: Any = None,
                     rare_rank: int = 1000, threshold: float = 0.5,
                     boost: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(sequence ids ascending, weights with mean 1): ``w_s = 1 + boost * hard_s / n_s`` (module docstring).

    ``freq_ref``: what "rare" is measured against (:func:`tokcal.frequency.load_reference`: counts, a
    counts JSON, a TokenTable or a text corpus; default the id-order proxy or the table itself)."""
    from .frequency import load_reference

    check_params("sampling_weights", _WeightParams, rare_rank=rare_rank, threshold=threshold, boost=boost)
    lab = table.labeled
    if not lab.any():
        raise ValidationError("sampling_weights: the table has no labelled token")
    p = calibrator.token_probs(table) if calibrator is not None else token_probs(table)
    y = np.maximum(table.label, 0)
    ref = load_reference(freq_ref, table)
    hard = (ref.ranks()[y] >= rare_rank) | ~ref.seen[y]
    hard |= np.abs(p.confidence - p.correct) >= threshold
    if evaluation is not None:
        ev = evaluation.to_dict() if isinstance(evaluation, Evaluation) else dict(evaluation)
        worst = np.array([int(w["id"]) for w in ev.get("worst_tokens") or []], np.int64)
        hard |= np.isin(p.predicted, worst)
    seq_ids, inv = np.unique(table.sequence_id[lab], return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    h = np.bincount(inv, weights=hard[lab].astype(np.float64), minlength=len(seq_ids))
    w = 1.0 + boost * h / n
    return seq_ids, w / w.mean()


def write_weights(sequence_ids: Any, weights: Any, path: str | os.PathLike) -> None:
    """JSON Lines ``{"sequence_id": s, "weight": w}``, one per sequence, written atomically."""
    text = "".join(json.dumps({"sequence_id": int(s), "weight": float(w)}) + "\n"
                   for s, w in zip(np.asarray(sequence_ids), np.asarray(weights), strict=True))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
