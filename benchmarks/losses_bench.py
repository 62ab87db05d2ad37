"""Speed and memory of tokcal.losses, forward + backward, against PyTorch's own losses in the same run.

Logits [N, V] = [8 x 512, 50 000] float32 (0.82 GB), labels uniform. Each entry is timed as
``loss(logits, labels).backward()`` (the gradient buffer cleared outside the timer), repeated
round-robin over all entries so load on a shared machine hits every entry alike; the median is
reported as a ratio to its reference measured in the same rounds:

* losses that read only the gold probability (focal, FLSD-53, AdaFocal, frequency-weighted CE):
  ``F.cross_entropy`` (target <= 1.3x);
* losses that read the whole distribution (label smoothing, graduated LS, confidence penalty, dual
  focal): ``F.cross_entropy(label_smoothing=0.1)`` (target <= 1.3x);
* the auxiliary terms: what a term adds, ``cross_entropy_plus(term)`` minus tokcal's
  ``cross_entropy`` (the same fused pass without the term), in units of ``F.cross_entropy`` (target
  <= +0.30 CE); their own table also gives ``cross_entropy_plus(term)`` / ``F.cross_entropy``;
* the naive formulas (log-softmax then the paper's expression) for scale.

Peak memory: each entry once more in a fresh child process, the peak resident size (VmHWM, reset just
before the call) after the backward minus
the resident size with the logits and their (zeroed) gradient allocated, in units of one [N, V]
float32 tensor; "extra" is that minus ``F.cross_entropy``'s (target: never above +1).

    .venv/bin/python benchmarks/losses_bench.py [--quick] [--rows 4096] [--vocab 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from tokcal import losses as L


def _naive_focal(z, y, gamma=2.0):
    lp = F.log_softmax(z, dim=-1).gather(1, y[:, None])[:, 0]
    return (-(1 - lp.exp()) ** gamma * lp).mean()


def _naive_confidence_penalty(z, y, beta=0.1):
    lp = F.log_softmax(z, dim=-1)
    h = -(lp.exp() * lp).sum(1)
    return (F.nll_loss(lp, y, reduction="none") - beta * h).mean()


def _naive_dual_focal(z, y, gamma=5.0):
    lp = F.log_softmax(z, dim=-1)
    p = lp.exp()
    lpy = lp.gather(1, y[:, None])[:, 0]
    pj = torch.where(p < lpy.exp()[:, None], p, 0.0).max(1).values
    return (-(1 - lpy.exp() + pj) ** gamma * lpy).mean()


def entries(n: int, v: int) -> dict[str, tuple]:
    """name -> (loss(z, y), reference name or None, kind)."""
    g = torch.Generator().manual_seed(1)
    weights = torch.as_tensor(L.frequency_weights(np.random.default_rng(0).zipf(1.3, v).astype(float)),
                              dtype=torch.float32)
    conf = torch.rand(n, generator=g)
    ada = L.AdaFocal()
    ada.gammas = np.linspace(-1.0, 4.0, ada.bins)
    return {
        "F.cross_entropy": (lambda z, y: F.cross_entropy(z, y), None, "reference"),
        "F.cross_entropy(label_smoothing=0.1)": (lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1), None,
                                                 "reference"),
        "cross_entropy": (lambda z, y: L.cross_entropy(z, y), "F.cross_entropy", "gold"),
        "focal": (lambda z, y: L.focal(z, y, 2.0), "F.cross_entropy", "gold"),
        "flsd53": (lambda z, y: L.flsd53(z, y), "F.cross_entropy", "gold"),
        "AdaFocal": (lambda z, y: ada(z, y), "F.cross_entropy", "gold"),
        "frequency_weighted_ce": (lambda z, y: L.frequency_weighted_ce(z, y, weights), "F.cross_entropy", "gold"),
        "label_smoothing": (lambda z, y: L.label_smoothing(z, y, 0.1), "F.cross_entropy(label_smoothing=0.1)",
                            "full"),
        "graduated_label_smoothing": (lambda z, y: L.graduated_label_smoothing(z, y, conf[: len(y)]),
                                      "F.cross_entropy(label_smoothing=0.1)", "full"),
        "confidence_penalty": (lambda z, y: L.confidence_penalty(z, y, 0.1), "F.cross_entropy(label_smoothing=0.1)",
                               "full"),
        "dual_focal": (lambda z, y: L.dual_focal(z, y, 5.0), "F.cross_entropy(label_smoothing=0.1)", "full"),
        "CE + mmce": (lambda z, y: L.cross_entropy_plus(z, y, "mmce", 1.0), "cross_entropy", "term"),
        "CE + soft_binned_ece": (lambda z, y: L.cross_entropy_plus(z, y, "soft_binned_ece", 1.0),
                                 "cross_entropy", "term"),
        "naive focal": (_naive_focal, "F.cross_entropy", "naive"),
        "naive confidence_penalty": (_naive_confidence_penalty, "F.cross_entropy(label_smoothing=0.1)", "naive"),
        "naive dual_focal": (_naive_dual_focal, "F.cross_entropy(label_smoothing=0.1)", "naive"),
    }


def make_inputs(n: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.empty(n, v)
    torch.randn(n, v, generator=g, out=z)
    z.mul_(3.0)
    z.requires_grad_(True)
    y = torch.randint(0, v, (n,), generator=g)
    return z, y


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_memory(name: str, n: int, v: int) -> None:
    """In a fresh process: peak RSS of one forward + backward above the inputs and their gradient."""
    z, y = make_inputs(n, v)
    z.grad = torch.zeros_like(z)  # the gradient buffer counts as input: every loss needs one
    fn = entries(n, v)[name][0]
    fn(z[:4].detach().requires_grad_(), y[:4]).backward()  # first-call allocations outside the measure
    base = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak resident size (VmHWM) to the current one
        f.write("5")
    fn(z, y).backward()
    peak = _peak_bytes()
    print(json.dumps({"name": name, "extra_bytes": peak - base}))


def selected(n: int, v: int, only: str | None) -> dict[str, tuple]:
    table = entries(n, v)
    if not only:
        return table
    keep = {x.strip() for x in only.split(",")}
    unknown = keep - set(table)
    if unknown:
        raise SystemExit(f"unknown entries {sorted(unknown)}; choose from {', '.join(table)}")
    # the references always run, and tokcal's cross_entropy with a term (what the term adds is over it)
    refs = {"cross_entropy"} if any(table[k][2] == "term" for k in keep) else set()
    return {k: e for k, e in table.items() if e[2] == "reference" or k in keep | refs}


def time_all(n: int, v: int, repeat: int, only: str | None = None) -> dict[str, list[float]]:
    z, y = make_inputs(n, v)
    table = selected(n, v, only)
    times: dict[str, list[float]] = {k: [] for k in table}
    for fn, _, _ in table.values():  # warm-up
        fn(z[:64], y[:64]).backward()
    for _ in range(repeat):
        for name, (fn, _, _) in table.items():
            z.grad = None
            t0 = time.perf_counter()
            fn(z, y).backward()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8 * 512)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 256 x 2000, 2 repeats")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--only", help="comma-separated entries to run (the two references always run)")
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.rows, a.vocab, a.repeat = 256, 2000, 2
    if a.child_memory:
        child_memory(a.child_memory, a.rows, a.vocab)
        return
    print(f"tokcal.losses: N={a.rows} x V={a.vocab} float32, forward + backward, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {a.repeat} round-robin rounds")
    times = time_all(a.rows, a.vocab, a.repeat, a.only)
    med = {k: statistics.median(t) for k, t in times.items()}
    nv_bytes = a.rows * a.vocab * 4
    mem: dict[str, float | None] = {}
    if not a.no_memory:
        for name in times:
            out = subprocess.run([sys.executable, __file__, "--rows", str(a.rows), "--vocab", str(a.vocab),
                                  "--child-memory", name], capture_output=True, text=True, check=True)
            b = json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"]
            mem[name] = None if b is None else b / nv_bytes
    ce = med["F.cross_entropy"]
    ce_mem = mem.get("F.cross_entropy")

    def memory(name: str) -> tuple[str, str]:
        m = mem.get(name)
        if m is None:
            return "", ""
        return f"{m:.2f}", "" if ce_mem is None else f"{m - ce_mem:+.2f}"

    table = selected(a.rows, a.vocab, a.only)
    print("\n| loss | kind | seconds | reference | x reference | target | peak extra [N,V] | vs CE's peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, ref, kind) in table.items():
        if kind == "term":
            continue
        mtxt, dm = memory(name)
        if kind == "reference":
            print(f"| {name} | {kind} | {med[name]:.3f} | | {med[name] / ce:.2f}x CE | | {mtxt} | {dm} |")
            continue
        target = "<= 1.3x" if kind != "naive" else ""
        print(f"| {name} | {kind} | {med[name]:.3f} | {ref} | {med[name] / med[ref]:.2f}x | {target} | {mtxt} | {dm} |")
    terms = [name for name, e in table.items() if e[2] == "term"]
    if terms:
        print("\nAuxiliary terms: the cost of a term is cross_entropy_plus(term) minus tokcal's cross_entropy "
              "(the same pass without the term), in units of F.cross_entropy's time.\n")
        print("| loss | seconds | cross_entropy seconds | term adds (target <= +0.30 CE) | x F.cross_entropy | "
              "peak extra [N,V] | vs CE's peak |")
        print("|---|---|---|---|---|---|---|")
        for name in terms:
            mtxt, dm = memory(name)
            base = med[table[name][1]]
            print(f"| {name} | {med[name]:.3f} | {base:.3f} | {(med[name] - base) / ce:+.2f} CE | "
                  f"{med[name] / ce:.2f}x | {mtxt} | {dm} |")


if __name__ == "__main__":
    main()
