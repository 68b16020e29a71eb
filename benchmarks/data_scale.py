"""Data at scale: the synthetic generator's seconds and peak memory for 10k, 100k and 1M items (and 1M items
with 10M events), and loading a generated CSV / JSONL log of 1M and 10M lines in chunks (seconds, peak
memory, bytes per interaction of the loaded arrays). Each case runs in its own process, so each peak is its
own. Writes benchmarks/results/data_scale.json and prints a Markdown table.

    OMP_NUM_THREADS=1 python benchmarks/data_scale.py --baseline-src ../main/src
    python benchmarks/data_scale.py --generate 100000:10000:2000000 --load 1000000:csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GENERATE = ["100000:10000:2000000", "100000:100000:2000000", "100000:1000000:2000000", "500000:1000000:10000000"]
LOAD = ["1000000:csv", "10000000:csv", "1000000:jsonl", "10000000:jsonl"]
BASELINE_MAX_JSONL = 1_000_000  # a whole-file JSONL reader keeps a dict per line: ~9 GB at 10M lines


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_generate(users: int, items: int, events: int) -> dict:
    from llmrec import synthetic
    base = _rss_mb()
    t0 = time.perf_counter()
    ds = synthetic.make(users, items, seed=0, n_events=events)
    sec = time.perf_counter() - t0
    return {"dataset": ds.name, "users": users, "items": items, "events": len(ds.interactions),
            "seconds": round(sec, 2), "peak_rss_mb": round(_rss_mb()), "rss_after_imports_mb": round(base),
            **{k: v for k, v in ds.memory().items()}}


def child_load(lines: int, folder: str, fmt: str) -> dict:
    import numpy as np
    import pandas as pd

    from llmrec import data
    path = Path(folder) / f"log_{lines}.{fmt}"
    if not path.exists():  # written in pieces, so the writer's own memory stays small
        rng = np.random.default_rng(0)
        with open(path, "w") as f:
            if fmt == "csv":
                f.write("user_id,item_id,timestamp,rating\n")
            rows = lines - 1 if fmt == "csv" else lines
            for start in range(0, rows, 1_000_000):
                n = min(1_000_000, rows - start)
                df = pd.DataFrame({"user_id": rng.integers(0, lines // 20, n), "item_id": rng.integers(0, 10**6, n),
                                   "timestamp": start + np.arange(n), "rating": rng.integers(1, 6, n)})
                if fmt == "csv":
                    df.to_csv(f, header=False, index=False)
                else:
                    df["user_id"] = "u" + df["user_id"].astype(str)  # string ids, number items
                    df.to_json(f, orient="records", lines=True)
        return {"written": str(path)}
    base = _rss_mb()
    t0 = time.perf_counter()
    ds = data.load_files(path)
    sec = time.perf_counter() - t0
    inter = ds.interactions
    arrays = sum(a.nbytes for a in (inter.user, inter.item, inter.timestamp, inter.value))
    return {"format": fmt, "lines": lines, "file_mb": round(path.stat().st_size / 2**20), "interactions": len(inter),
            "users": ds.n_users, "items": ds.n_items, "seconds": round(sec, 2), "peak_rss_mb": round(_rss_mb()),
            "rss_after_imports_mb": round(base), "memory_interactions_bytes": int(arrays),
            "memory_per_interaction_bytes": round(arrays / len(inter), 2), "llmrec": data.__file__}


def _run(args: list[str], src: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=src) if src else None
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generate", nargs="*", default=GENERATE, metavar="USERS:ITEMS:EVENTS")
    p.add_argument("--load", nargs="*", default=LOAD, metavar="LINES:FORMAT")
    p.add_argument("--baseline-src", metavar="DIR",
                   help="also load each CSV with the llmrec source tree in DIR (e.g. an older checkout's src)")
    p.add_argument("--out", type=Path, default=RESULTS / "data_scale.json")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        res = (child_generate(*map(int, rest)) if kind == "generate" else child_load(int(rest[0]), rest[1], rest[2]))
        print(json.dumps(res))
        return 0
    gen, load, baseline = [], [], []
    for case in args.generate:
        gen.append(_run(["generate", *case.split(":")]))
        print(json.dumps(gen[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.load:
            lines, fmt = case.split(":")
            _run(["load", lines, tmp, fmt])
            load.append(_run(["load", lines, tmp, fmt]))
            print(json.dumps(load[-1]), flush=True)
            if args.baseline_src and (fmt != "jsonl" or int(lines) <= BASELINE_MAX_JSONL):
                baseline.append(_run(["load", lines, tmp, fmt], src=args.baseline_src))
                print(json.dumps(baseline[-1]), flush=True)
    out = {"what": "synthetic generation and chunked CSV loading: seconds and peak resident memory, "
                   "one process per case (peak_rss_mb includes the interpreter and imports: "
                   "rss_after_imports_mb)",
           "generate": gen, "load": load,
           **({"load_baseline": baseline, "baseline_src": args.baseline_src,
               "baseline_note": f"JSONL above {BASELINE_MAX_JSONL:,} lines is not loaded with the baseline: a "
                                "whole-file reader keeps a dict per line"} if baseline else {}),
           "load_average_1min_at_end": round(os.getloadavg()[0], 1),
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
           "date": dt.date.today().isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared), python {platform.python_version()}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print("\n| generate | users | items | events | seconds | peak MB |\n|---|---|---|---|---|---|")
    for r in gen:
        print(f"| {r['dataset']} | {r['users']:,} | {r['items']:,} | {r['events']:,} | {r['seconds']} | "
              f"{r['peak_rss_mb']:,} |")
    print("\n| load | lines | MB | seconds | peak MB | bytes/interaction |\n|---|---|---|---|---|---|")
    for r in load + baseline:
        who = "baseline" if r in baseline else "chunked"
        print(f"| {r['format']} {who} | {r['lines']:,} | {r['file_mb']} | {r['seconds']} | {r['peak_rss_mb']:,} | "
              f"{r['memory_per_interaction_bytes']} |")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
