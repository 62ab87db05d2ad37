"""Log-prob import benchmark: ``read_logprobs`` on an OpenAI chat JSONL log vs bare JSON parsing.

    .venv/bin/python benchmarks/logprobs_bench.py                  # 300k positions (~140 MB log)
    .venv/bin/python benchmarks/logprobs_bench.py --positions 2000000
    .venv/bin/python benchmarks/logprobs_bench.py --quick          # tiny smoke run (CI)

The log has one chat completion per line, 50 positions per response, 5 alternatives per position,
every token with its UTF-8 ``bytes`` (what ``logprobs=true, top_logprobs=5`` returns). Each reader
runs in a fresh process pinned to one core (``sched_setaffinity``), so its peak RSS is its own:
``json.loads`` / ``orjson.loads`` of every line (the floor: parsing alone, nothing kept) and tokcal
(parse, token identity by bytes, positions into compact arrays, the TokenTable). Throughput is per
CPU second of that one process (``time.process_time``; the wall time is printed too and is what a
busy machine adds). "x floor" = tokcal CPU time / orjson-only CPU time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path


def make_log(path: Path, positions: int, per_line: int = 50, alts: int = 5, seed: int = 0) -> int:
    rng = random.Random(seed)
    words = "the and of to in God said earth light heaven was there be unto them".split()
    vocab = [" " + w for w in words] + [f" w{i}" for i in range(4000)] + ["é", "—", "🙂", "\n"]
    n_lines = max(1, positions // per_line)
    with open(path, "w") as f:
        for line in range(n_lines):
            content = []
            for _ in range(per_line):
                toks = rng.sample(vocab, alts)
                lps = sorted((-rng.expovariate(1.0) for _ in range(alts)), reverse=True)
                top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in zip(toks, lps, strict=True)]
                content.append({"token": toks[0], "logprob": lps[0], "bytes": list(toks[0].encode()),
                                "top_logprobs": top})
            resp = {"id": f"chatcmpl-{line}", "object": "chat.completion", "created": 1700000000,
                    "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                                 "logprobs": {"content": content, "refusal": None}, "finish_reason": "length"}]}
            f.write(json.dumps(resp) + "\n")
    return n_lines * per_line


def _pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    os.environ["NUMBA_NUM_THREADS"] = "1"


def _parse_only(path: str, which: str, q) -> None:
    _pin()
    loads = json.loads
    if which == "orjson":
        import orjson

        loads = orjson.loads
    t, c = time.perf_counter(), time.process_time()
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            n += len(loads(raw)["choices"][0]["logprobs"]["content"])
    q.put((time.perf_counter() - t, time.process_time() - c, n,
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _tokcal(path: str, q) -> None:
    _pin()
    from tokcal.sources.logprobs import read_logprobs

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    table = read_logprobs(path, format="openai-chat", vocab_size=100_000)
    q.put((time.perf_counter() - t, time.process_time() - c, len(table),
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss0))


def _run(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=300_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_pos = 5_000 if args.quick else args.positions
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chat.jsonl"
        n = make_log(path, n_pos)
        size_mb = path.stat().st_size / 2**20
        print(f"log: {n:,} positions, {size_mb:.1f} MB, 5 alternatives with bytes, one core per reader")
        rows = []
        base = None
        for name, target, extra in (("json.loads only (floor)", _parse_only, ("json",)),
                                    ("orjson.loads only (floor)", _parse_only, ("orjson",)),
                                    ("tokcal read_logprobs", _tokcal, ())):
            try:
                sec, cpu, cnt, rss, *rest = _run(target, str(path), *extra)
            except Exception as e:  # noqa: BLE001 - a missing optional parser is reported, not fatal
                print(f"{name}: skipped ({e})")
                continue
            if name.startswith("orjson"):
                base = cpu
            note = f"after imports {rest[0]:.0f} MB" if rest else ""
            rows.append((name, cnt, sec, cpu, rss, note))
        print(f"{'reader':28s} {'positions':>10s} {'wall s':>7s} {'CPU s':>7s} {'positions/CPU-s':>16s} "
              f"{'x floor':>8s} {'peak RSS MB':>12s}")
        for name, cnt, sec, cpu, rss, note in rows:
            ratio = f"{cpu / base:.1f}x" if base and name.startswith("tokcal") else ""
            print(f"{name:28s} {cnt:>10,} {sec:>7.2f} {cpu:>7.2f} {cnt / cpu:>16,.0f} {ratio:>8s} {rss:>12.0f}  {note}")


if __name__ == "__main__":
    sys.exit(main())
