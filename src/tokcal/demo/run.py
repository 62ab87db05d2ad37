"""``tokcal demo``: the embedded model, in-domain and shifted text, three calibrators, one report.

1. Load the embedded GPT-2 (:mod:`tokcal.demo.train`; safetensors, no remote code) from the package.
2. Collect per-token predictions (teacher forcing, top-k sketch) on passages of the held-out KJV test
   books (``domain = "kjv"``, in-domain) and on FreeBSD fortunes (``domain = "fortunes"``, shift).
3. Split by sequence into a calibration half and a test half (same seed, whole sequences).
4. Fit on the calibration half: one temperature, one temperature per domain, and an adaptive
   (per-token) temperature. The one to ship is chosen *inside* the calibration half: each method is fitted
   on one part of it and scored (ECE) on the rest; the lowest wins (:func:`choose_calibrator`). Choosing on
   the test half and reporting there would overstate it.
5. Evaluate the test half before and after each calibrator, with slices by frequency bucket of the
   gold token (ranks counted on the model's training tokens), token type and domain, and 95 % cluster
   bootstrap intervals.
6. Write into ``--out``: ``report.html`` (all four evaluations, the headline about the chosen calibrator),
   ``evaluation.json`` (``Evaluation.to_dict()`` after ``calibrator.json``, the chosen calibrator), ``evaluations/`` and
   ``calibrators/`` (every evaluation and calibrator), ``test.parquet`` and ``calibration.parquet``
   (the token tables, to rerun ``tokcal evaluate`` / ``tokcal check``).

Nothing is cached outside ``--out``. The defaults take well under 90 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokcalError
from ..progress import ProgressCallback, report
from ..report.terminal import collecting_line
from . import data

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
IN_DOMAIN, SHIFT = "kjv", "fortunes"
#: how the terminal names each domain column of the ECE table
DOMAIN_LABELS = {IN_DOMAIN: "kjv (in-domain)", SHIFT: "fortunes (shift)", "all": "all"}
#: the slice the suggested ``tokcal check`` limits
CHECK_SLICE = "group:domain"
CALIBRATORS = ("temperature", "group_temperature", "adaptive_temperature")
SLICES = ("freq", "type", "group:domain")
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class DemoResult:
    """What the demo produced: output paths, evaluations (as dicts), fitted calibrators, timings."""

    out: Path
    evaluations: dict[str, dict[str, Any]]
    calibrators: dict[str, Any]
    n_tokens: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    chosen: str = "temperature"
    selection: dict[str, float] = field(default_factory=dict)


def load_model(assets: Path | str = ASSETS_DIR) -> tuple[Any, Any]:
    """The embedded model and tokenizer from ``assets`` (:func:`tokcal.sources.hf.load_model`:
    safetensors weights, no remote code); texts longer than the context are windowed by collect_causal."""
    from ..sources.hf import load_model as load

    assets = Path(assets)
    missing = [f for f in _MODEL_FILES if not (assets / f).is_file()]
    if missing:
        raise TokcalError(f"the embedded demo model in {assets} lacks {missing}; "
                          f"retrain it with `python -m tokcal.demo.train --out {assets}`")
    model, tokenizer = load(assets, "causal")
    tokenizer.model_max_length = 1 << 30
    return model, tokenizer


def training_counts(assets: Path | str = ASSETS_DIR) -> Any:
    """The frequency reference of the model's training stream (``token_counts.json``, a counts file of
    :mod:`tokcal.frequency`), if shipped."""
    from ..frequency import FrequencyReference

    path = Path(assets) / "token_counts.json"
    if not path.is_file():
        return None
    return FrequencyReference.from_json(path)


def demo_texts(n_in_domain: int, n_shift: int) -> tuple[list[str], list[str]]:
    """Evenly spread KJV test-book passages and fortunes, and their domain of each text."""
    kjv = data.kjv_passages("test", limit=n_in_domain)
    fortunes = data.fortunes(limit=n_shift)
    return kjv + fortunes, [IN_DOMAIN] * len(kjv) + [SHIFT] * len(fortunes)


def fit_calibrators(table: Any) -> dict[str, Any]:
    """Temperature, group temperature (by domain) and adaptive temperature fitted on ``table``."""
    from ..calibrators import AdaptiveTemperature, GroupTemperature, Temperature

    return {"temperature": Temperature().fit(table),
            "group_temperature": GroupTemperature(by="domain").fit(table),
            "adaptive_temperature": AdaptiveTemperature(groups=("domain",)).fit(table)}


def choose_calibrator(calib: Any, seed: int = 0, frac: float = 0.5) -> tuple[str, dict[str, float]]:
    """The calibrator to ship, chosen on the calibration half only: split it by sequence (``frac`` held out),
    fit every method of :func:`fit_calibrators` on the rest, and take the lowest ECE on the held-out part.
    Returns (name, {name: inner held-out ECE})."""
    from .. import evaluate
    from ..calibrators import split_by_sequence

    inner_fit, inner_val = split_by_sequence(calib, frac=frac, seed=seed + 1)
    scores = {name: float(evaluate(inner_val, calibrator=cal, slices=[], bootstrap=0).overall["ece"])
              for name, cal in fit_calibrators(inner_fit).items()}
    return min(scores, key=scores.__getitem__), scores


def run_demo(out: Path | str = "demo-output", *, n_in_domain: int = 400, n_shift: int = 600,
             bootstrap: int = 200, seed: int = 0, assets: Path | str = ASSETS_DIR,
             console: Any = None, progress: ProgressCallback | None = None) -> DemoResult:
    """Run the whole demo into ``out`` (see the module docstring) and return what it produced. ``console``:
    where to say what is collected (None: nowhere); ``progress``: an optional callback ``(step, done,
    total)`` (:mod:`tokcal.progress`) for the steps ``collect`` (texts), ``fit`` and ``evaluate``."""
    import torch

    from .. import evaluate
    from ..calibrators import split_by_sequence
    from ..slices import parse_slices
    from ..sources.hf import collect_causal

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = console.print if console is not None else (lambda *a, **k: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    torch.manual_seed(seed)
    model, tokenizer = load_model(assets)
    texts, domains = demo_texts(n_in_domain, n_shift)
    say(collecting_line(n_in_domain, n_shift, sum(p.numel() for p in model.parameters())), highlight=False)
    done = [0]

    def collected(docs: int, tokens: int) -> None:
        done[0] += docs
        report(progress, "collect", done[0], len(texts))

    report(progress, "collect", 0, len(texts))
    with torch.inference_mode():
        table = collect_causal(model, tokenizer, texts, top_k=32, batch_size=16, groups={"domain": domains},
                               prepend_bos=True, progress=collected)
    seconds["collect"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    calib, test = split_by_sequence(table, frac=0.5, seed=seed)
    report(progress, "fit", 0, 2)
    chosen, selection = choose_calibrator(calib, seed=seed)
    report(progress, "fit", 1, 2)
    calibrators = fit_calibrators(calib)
    report(progress, "fit", 2, 2)
    seconds["fit"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    slices = parse_slices(SLICES, test, reference=training_counts(assets))
    evaluations: dict[str, dict[str, Any]] = {}
    report(progress, "evaluate", 0, 1 + len(calibrators))
    for i, (name, cal) in enumerate({"uncalibrated": None, **calibrators}.items()):
        evaluations[name] = evaluate(test, calibrator=cal, slices=slices, bootstrap=bootstrap,
                                     seed=seed).to_dict()
        report(progress, "evaluate", i + 1, 1 + len(calibrators))
    seconds["evaluate"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    write_outputs(out, evaluations, calibrators, calib, test, chosen=chosen)
    seconds["write"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    domain = test.groups["domain"]
    values = np.asarray(domain.categories)[domain.codes[test.labeled]]
    n_tokens = {d: int(np.sum(values == d)) for d in (IN_DOMAIN, SHIFT)}
    return DemoResult(out, evaluations, calibrators, n_tokens, seconds, chosen, selection)


def write_outputs(out: Path, evaluations: dict[str, dict[str, Any]], calibrators: dict[str, Any],
                  calib: Any, test: Any, chosen: str = "temperature") -> None:
    """Report, evaluation JSONs, calibrator JSONs and both token tables, each written atomically with the
    permissions a new file normally gets (the user reads and shares these files)."""
    from ..report import write_html
    from ..report.data import write_file

    def write_json(path: Path, obj: Any) -> None:
        text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
        write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    files = {"table": str(out / "test.parquet"),
             "calibrators": {name: str(out / "calibrators" / f"{name}.json") for name in calibrators},
             "evaluations": {name: str(out / "evaluations" / f"{name}.json") for name in evaluations}}
    write_html(out / "report.html", evaluations, title="tokcal demo: the embedded KJV model, in-domain and under shift",
               recommended=chosen, files=files)
    write_json(out / "evaluation.json", evaluations[chosen])
    write_json(out / "calibrator.json", calibrators[chosen].to_dict())
    for name, ev in evaluations.items():
        write_json(out / "evaluations" / f"{name}.json", ev)
    for name, cal in calibrators.items():
        write_json(out / "calibrators" / f"{name}.json", cal.to_dict())
    umask = os.umask(0)
    os.umask(umask)
    for name, table in (("test.parquet", test), ("calibration.parquet", calib)):
        table.write_parquet(out / name)
        os.chmod(out / name, 0o666 & ~umask)


# ------------------------------------------------------------------------------------------------
# terminal summary
# ------------------------------------------------------------------------------------------------


def _slice_row(ev: dict[str, Any], slice_name: str, value: str) -> dict[str, Any] | None:
    for row in (ev.get("slices") or {}).get(slice_name, []):
        if row.get("value") == value:
            return row
    return None


def ece_by_domain(evaluations: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[float, Any]]]:
    """{domain or 'all': {evaluation: (ECE, 95 % interval or None)}} from the evaluation dicts."""
    table: dict[str, dict[str, tuple[float, Any]]] = {}
    for name, ev in evaluations.items():
        overall = ev["overall"]
        table.setdefault("all", {})[name] = (overall["ece"], (overall.get("ci") or {}).get("ece"))
        for domain in (IN_DOMAIN, SHIFT):
            row = _slice_row(ev, "group:domain", domain)
            if row is not None:
                table.setdefault(domain, {})[name] = (row["ece"], row.get("ece_ci"))
    return table


def check_limits(result: DemoResult) -> dict[str, float | None]:
    """Limits of a ``tokcal check`` of the chosen calibrator on the test half, from its measured intervals
    (:func:`tokcal.gate.suggest_limits`), so the check passes on the demo's own output."""
    from ..gate import suggest_limits

    return suggest_limits(result.evaluations[result.chosen], slices=[CHECK_SLICE])


def summary(result: DemoResult) -> list[Any]:
    """What ``tokcal demo`` prints after the run (:func:`tokcal.report.terminal.demo_summary`, which words
    it): the ECE per domain before and after each calibrator, the fitted temperatures, the choice, the
    files written and a ``tokcal check`` whose limits come from :func:`check_limits`."""
    from ..report.terminal import demo_summary

    cal = result.calibrators
    return demo_summary(ece_by_domain(result.evaluations), list(result.evaluations),
                        {**result.n_tokens, "all": sum(result.n_tokens.values())}, DOMAIN_LABELS,
                        temperature=cal["temperature"].temperature,
                        group_temperatures=group_temperatures(cal["group_temperature"]), chosen=result.chosen,
                        selection=result.selection, out=result.out, seconds=result.seconds["total"],
                        limits=check_limits(result), check_slice=CHECK_SLICE)


def group_temperatures(cal: Any) -> dict[str, float]:
    """Per-group temperatures of a fitted GroupTemperature, from its JSON state."""
    state = cal.to_dict()
    temps = state.get("temperatures") or {}
    if isinstance(temps, dict):
        return {str(k): float(v) for k, v in temps.items()}
    return {str(k): float(v) for k, v in zip(state.get("categories", []), temps, strict=False)}
