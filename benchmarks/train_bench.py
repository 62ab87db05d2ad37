"""Fine-tuning with calibration-aware losses: does any beat cross-entropy once temperature scaling is applied?

The embedded demo model (KJV-trained GPT-2, 1.1 M parameters) is fine-tuned on the shift domain
(FreeBSD fortunes) with cross-entropy and with each loss of :mod:`tokcal.losses` under the same
budget (steps, batch, learning rate, data order per seed), for several seeds. Each run is then
collected with tokcal on held-out KJV test passages (``kjv``, in-domain for the base model) and
held-out fortunes (``fortunes``, the fine-tuning domain), and evaluated per domain (ECE with its
95 % cluster-bootstrap interval, NLL, accuracy) before and after a temperature fitted on a separate
calibration set (KJV validation passages + other held-out fortunes).

Data (deterministic): all fortunes of 40..600 characters, index i % 5 == 0 -> test, == 1 ->
calibration, else training; KJV validation books -> calibration, KJV test books -> test.
Training: AdamW (lr, betas 0.9/0.95, no weight decay), constant lr after a 10 % warm-up, batches of
fortunes (BOS + text, at most --max-tokens tokens) drawn by a generator seeded per run, one thread.

Resumable: each run writes ``<out>/runs/<loss>-seed<k>.json`` (atomically) and is skipped when it
exists with the same settings; ``<out>/summary.md`` holds the aggregated table.

    .venv/bin/python benchmarks/train_bench.py --out bench-train [--seeds 3] [--steps 60] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tokcal
from tokcal import losses as L
from tokcal._io import atomic_write
from tokcal.calibrators import GroupTemperature, Temperature
from tokcal.demo import data
from tokcal.demo.run import load_model
from tokcal.sources.hf import collect_causal

LOSSES = ("cross_entropy", "focal", "flsd53", "adafocal", "dual_focal", "label_smoothing",
          "graduated_label_smoothing", "confidence_penalty", "mmce", "soft_binned_ece", "frequency_weighted_ce")
SETTINGS_KEYS = ("steps", "batch", "lr", "max_tokens", "n_eval", "n_calib", "bootstrap", "adafocal_every")
#: bumped when what a run records changes (older run files are then redone)
RECORD_VERSION = 2


def texts(n_eval: int, n_calib: int) -> dict[str, list[str]]:
    f = data.fortunes()
    test = [t for i, t in enumerate(f) if i % 5 == 0]
    calib = [t for i, t in enumerate(f) if i % 5 == 1]
    train = [t for i, t in enumerate(f) if i % 5 >= 2]
    return {"train": train, "test_fortunes": data._spread(test, n_eval), "calib_fortunes": data._spread(calib, n_calib),
            "test_kjv": data.kjv_passages("test", limit=n_eval), "calib_kjv": data.kjv_passages("validation",
                                                                                                limit=n_calib)}


def encode(tokenizer, batch: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    eos = tokenizer.eos_token_id
    ids = [[eos, *tokenizer(t, add_special_tokens=False)["input_ids"]][:max_tokens] for t in batch]
    width = max(len(x) for x in ids)
    inp = torch.full((len(ids), width), eos, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        inp[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    labels = torch.where(mask.bool(), inp, -100)
    shifted = torch.cat([labels[:, 1:], torch.full((len(ids), 1), -100)], dim=1)
    return inp, mask, shifted


def collect(model, tokenizer, kjv: list[str], fortunes: list[str]):
    with torch.inference_mode():
        return collect_causal(model, tokenizer, kjv + fortunes, top_k=32, batch_size=16, prepend_bos=True,
                              groups={"domain": ["kjv"] * len(kjv) + ["fortunes"] * len(fortunes)})


def domain_metrics(table, cal, bootstrap: int, seed: int) -> dict[str, Any]:
    ev = tokcal.evaluate(table, calibrator=cal, slices=["group:domain"], bootstrap=bootstrap, seed=seed).to_dict()
    out = {}
    for r in ev["slices"]["group:domain"]:
        out[r["value"]] = {"ece": r["ece"], "ece_ci": r["ece_ci"], "nll": r["nll"], "accuracy": r["accuracy"],
                           "n": r["n"]}
    return out


def make_loss(name: str, counts: np.ndarray):
    if name == "adafocal":
        return L.AdaFocal()
    if name == "frequency_weighted_ce":
        w = torch.as_tensor(L.frequency_weights(counts, alpha=0.5), dtype=torch.float32)
        return lambda z, y, **_: L.frequency_weighted_ce(z, y, w)
    simple = {"cross_entropy": lambda z, y, **_: L.cross_entropy(z, y),
              "focal": lambda z, y, **_: L.focal(z, y, 2.0), "flsd53": lambda z, y, **_: L.flsd53(z, y),
              "dual_focal": lambda z, y, **_: L.dual_focal(z, y, 2.0),
              "label_smoothing": lambda z, y, **_: L.label_smoothing(z, y, 0.1),
              "graduated_label_smoothing": lambda z, y, conf, **_: L.graduated_label_smoothing(z, y, conf),
              "confidence_penalty": lambda z, y, **_: L.confidence_penalty(z, y, 0.1),
              "mmce": lambda z, y, **_: L.cross_entropy_plus(z, y, "mmce", 1.0),
              "soft_binned_ece": lambda z, y, **_: L.cross_entropy_plus(z, y, "soft_binned_ece", 1.0)}
    return simple[name]


def run_one(name: str, seed: int, a: argparse.Namespace, corpus: dict[str, list[str]], counts: np.ndarray) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, tokenizer = load_model()
    base = copy.deepcopy(model).eval() if name == "graduated_label_smoothing" else None
    model.train()
    loss_fn = make_loss(name, counts)
    optim = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(1000 + seed)
    warm = max(1, a.steps // 10)
    losses = []
    for step in range(a.steps):
        for g in optim.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / warm)
        pick = torch.randint(0, len(corpus["train"]), (a.batch,), generator=gen).tolist()
        inp, mask, y = encode(tokenizer, [corpus["train"][i] for i in pick], a.max_tokens)
        logits = model(input_ids=inp, attention_mask=mask).logits
        kw = {}
        if base is not None:
            with torch.no_grad():
                kw["conf"] = torch.softmax(base(input_ids=inp, attention_mask=mask).logits, -1).max(-1).values
        loss = loss_fn(logits, y, **kw)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(loss.item())
        if isinstance(loss_fn, L.AdaFocal) and (step + 1) % a.adafocal_every == 0 and step + 1 < a.steps:
            model.eval()
            val = collect(model, tokenizer, [], corpus["calib_fortunes"][: a.n_calib // 2])
            model.train()
            from tokcal.metrics import reliability_bins
            from tokcal.probs import token_probs

            p = token_probs(val)
            loss_fn.update(reliability_bins(p.confidence[val.labeled], p.correct[val.labeled], bins=15,
                                            binning="mass"))
    model.eval()
    return {"loss": name, "seed": seed, "train_loss_first": losses[0] if losses else None,
            "train_loss_last": float(np.mean(losses[-5:])) if losses else None,
            **evaluate_model(model, tokenizer, corpus, a, seed),
            "adafocal_gammas": loss_fn.gammas.tolist() if isinstance(loss_fn, L.AdaFocal) else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def evaluate_model(model, tokenizer, corpus, a, seed) -> dict[str, Any]:
    test = collect(model, tokenizer, corpus["test_kjv"], corpus["test_fortunes"])
    calib = collect(model, tokenizer, corpus["calib_kjv"], corpus["calib_fortunes"])
    ts = Temperature().fit(calib)
    gts = GroupTemperature(by="domain").fit(calib)
    return {"temperature": ts.temperature, "domain_temperatures": dict(gts.temperatures),
            "raw": domain_metrics(test, None, a.bootstrap, seed), "ts": domain_metrics(test, ts, a.bootstrap, seed),
            "domain_ts": domain_metrics(test, gts, a.bootstrap, seed)}


def settings(a: argparse.Namespace) -> dict[str, Any]:
    return {"record_version": RECORD_VERSION, **{k: getattr(a, k) for k in SETTINGS_KEYS}}


def run_path(a, name: str, seed: int) -> Path:
    return Path(a.out) / "runs" / f"{name}-seed{seed}.json"


def load_done(path: Path, a) -> dict | None:
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return d if d.get("settings") == settings(a) else None


def summarize(results: list[dict], base: dict | None, a) -> str:
    """Markdown: per loss and domain, mean ± sd over seeds of ECE / NLL / accuracy, raw and after TS."""
    lines = [f"Budget per run: {a.steps} steps x {a.batch} fortunes (<= {a.max_tokens} tokens), lr {a.lr}; "
             f"test: {a.n_eval} KJV passages + {a.n_eval} fortunes; temperature fitted on {a.n_calib} + "
             f"{a.n_calib} others (TS: one for both domains; per-domain TS: one per domain). "
             "Mean ± sd over seeds; [..] = mean of the per-seed 95 % bootstrap ECE "
             "intervals (sequences resampled).", "",
             "| loss | seeds | domain | ECE | ECE after TS | ECE after per-domain TS | NLL | NLL after TS | "
             "NLL after per-domain TS | accuracy | T |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(xs: list[float], d: int = 4) -> str:
        xs = [x for x in xs if x is not None]
        if not xs:
            return "n/a"
        return f"{np.mean(xs):.{d}f}" + (f" ± {np.std(xs, ddof=1):.{d}f}" if len(xs) > 1 else "")

    def ci(rs: list[dict]) -> str:
        c = [r["ece_ci"] for r in rs if r.get("ece_ci") and None not in r["ece_ci"]]
        return f" [{np.mean([x[0] for x in c]):.4f}, {np.mean([x[1] for x in c]):.4f}]" if c else ""

    rows = ([("(no fine-tuning)", [base])] if base else []) + [
        (name, [r for r in results if r["loss"] == name]) for name in LOSSES]
    for name, rs in rows:
        if not rs:
            continue
        for dom in ("kjv", "fortunes"):
            raw = [r["raw"][dom] for r in rs]
            ts = [r["ts"][dom] for r in rs]
            gts = [r["domain_ts"][dom] for r in rs]
            lines.append(f"| {name} | {len(rs)} | {dom} | {ms([x['ece'] for x in raw])}{ci(raw)} | "
                         f"{ms([x['ece'] for x in ts])}{ci(ts)} | {ms([x['ece'] for x in gts])}{ci(gts)} | "
                         f"{ms([x['nll'] for x in raw], 3)} | {ms([x['nll'] for x in ts], 3)} | "
                         f"{ms([x['nll'] for x in gts], 3)} | {ms([x['accuracy'] for x in raw])} | "
                         f"{ms([r['temperature'] for r in rs], 3)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-train")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=100, help="test texts per domain")
    ap.add_argument("--n-calib", type=int, default=60, help="calibration texts per domain")
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--adafocal-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th run from the i-th (parallel workers); "
                    "the summary is written once every run is done")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 losses, 1 seed, 2 steps, tiny sets")
    a = ap.parse_args()
    if a.quick:
        a.seeds, a.steps, a.batch, a.max_tokens, a.n_eval, a.n_calib, a.bootstrap = 1, 2, 2, 32, 6, 6, 10
        a.losses, a.adafocal_every = "cross_entropy,adafocal", 1
    names = [x for x in a.losses.split(",") if x]
    unknown = sorted(set(names) - set(LOSSES))
    if unknown:
        raise SystemExit(f"unknown losses {unknown}; choose from {', '.join(LOSSES)}")
    torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    corpus = texts(a.n_eval, a.n_calib)
    _, tokenizer = load_model()
    counts = np.bincount(np.concatenate([tokenizer(t)["input_ids"] for t in corpus["train"]]),
                         minlength=len(tokenizer)).astype(float)
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)

    def cached(name: str, seed: int, fn) -> dict:
        path = run_path(a, name, seed)
        done = load_done(path, a)
        if done is not None:
            print(f"{name} seed {seed}: done earlier ({path})", flush=True)
            return done
        res = {**fn(), "settings": settings(a)}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(res, indent=1) + "\n"))
        r, t = res["raw"]["fortunes"], res["ts"]["fortunes"]
        print(f"{name} seed {seed}: fortunes ECE {r['ece']:.4f} -> {t['ece']:.4f} after TS, NLL {r['nll']:.3f}; "
              f"kjv ECE {res['raw']['kjv']['ece']:.4f}; {res['seconds']} s", flush=True)
        return res

    def base_run():
        t0 = time.perf_counter()
        model, tok = load_model()
        return {"loss": "(no fine-tuning)", "seed": 0, **evaluate_model(model, tok, corpus, a, 0),
                "seconds": round(time.perf_counter() - t0, 1)}

    shard, n_shards = (int(x) for x in a.shard.split("/"))
    plan = [("base", 0)] + [(name, seed) for seed in range(a.seeds) for name in names]
    for i, (name, seed) in enumerate(plan):
        if i % n_shards == shard:
            cached(name, seed, base_run if name == "base" else lambda n=name, s=seed: run_one(n, s, a, corpus, counts))
    done = {(n, s): load_done(run_path(a, n, s), a) for n, s in plan}
    if any(v is None for v in done.values()):
        print(f"shard {a.shard} finished; {sum(v is None for v in done.values())} runs left to other shards")
        return
    md = summarize([v for (n, _), v in done.items() if n != "base"], done[("base", 0)], a)
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(md))
    print(md)


if __name__ == "__main__":
    main()
