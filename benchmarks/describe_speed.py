"""How fast the LM writes item text: items per second for each batch size over the same items (greedy,
left-padded batches against one item at a time), no cache, with the machine's load average around each.

    python benchmarks/describe_speed.py --dataset ml-100k --n 32 --batch-sizes 1 32 --threads 1 \\
        --out benchmarks/results/describe_speed_ml-100k.json

It also checks that the batched answers equal the one-at-a-time answers (left padding changes nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

from llmrec import datasets, describe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--n", type=int, default=32, help="items (the catalogue's first N)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--lm", default=describe.DEFAULT_MODEL)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    command = "python benchmarks/describe_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = datasets.load(args.dataset, quiet=True).catalog.frame.head(args.n).to_dict("records")
    fields = [describe.item_fields(r) for r in rows]
    d = describe.Describer(args.lm, max_new_tokens=args.max_new_tokens, threads=args.threads, cache=False)
    runs, answers = [], {}
    for b in args.batch_sizes:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        out = []
        for s in range(0, len(fields), b):
            out += d.describe_batch(fields[s:s + b])
        sec = time.perf_counter() - t0
        answers[b] = out
        runs.append({"batch_size": b, "items": len(fields), "seconds": round(sec, 1),
                     "items_per_second": round(len(fields) / sec, 3),
                     "load_average_1_5_15_before_after": [[round(v, 2) for v in load_before],
                                                          [round(v, 2) for v in os.getloadavg()]]})
        print(json.dumps(runs[-1]), flush=True)
    first = answers[args.batch_sizes[0]]
    res = {"command": command, "date": dt.date.today().isoformat(), "dataset": args.dataset, "lm": args.lm,
           "max_new_tokens": args.max_new_tokens, "keyword_tokens": describe.KEYWORD_TOKENS,
           "threads": args.threads, "runs": runs,
           "batched_equals_one_at_a_time": all(answers[b] == first for b in args.batch_sizes),
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
