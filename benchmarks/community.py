"""Community cold start on a synthetic social graph: users whose whole history is hidden, recommended by
popularity, from the people they are related to, from their one-sentence profile, and from both.

    python benchmarks/community.py --users 3000 --items 600 --friends 5 --seeds 0 1 2 \\
        --out benchmarks/results/community_synthetic.json

The generator (``llmrec.synthetic.make(friends=N)``) relates each user to N others, 80% of them sharing
the user's first favourite topic, and writes a profile that names one of the user's two favourite topics.
A quarter of the users (those with any interaction) are held out: their interactions are removed before
fitting, and the target is the item they interacted with last, ranked over every item (nothing excluded:
they have no history). Relations naming a held-out user count for nothing (an empty history).
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

import numpy as np

from llmrec import community, models, synthetic


def rows_for(seed: int, args) -> list[dict]:
    ds = synthetic.make(args.users, args.items, seed=seed, friends=args.friends)
    train, targets = community.hold_out_users(ds, args.share, seed=seed)
    pairs = ds.meta["relations"]
    rel = community.Relations.from_pairs(pairs)
    profiles = ds.meta["profiles"]
    pop = models.get("popular").fit(train, progress=False)
    knn = models.get("itemknn", threads=1).fit(train, progress=False)
    zs = models.get("zero-shot", encoder=args.encoder).fit(train, progress=False)
    runs = [("popular", pop, None, None), ("itemknn + relations", knn, rel, None),
            ("zero-shot + relations", zs, rel, None), ("zero-shot + profile text", zs, None, profiles),
            ("zero-shot + relations + profile text", zs, rel, profiles)]
    out = []
    for name, m, r, t in runs:
        t0 = time.perf_counter()
        metrics = community.evaluate_cold(m, targets, r, t, text_weight=args.text_weight)
        out.append({"seed": seed, "method": name, **metrics, "seconds": round(time.perf_counter() - t0, 3)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--friends", type=int, default=5)
    p.add_argument("--share", type=float, default=0.25, help="share of users held out")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoder", default="minilm-onnx")
    p.add_argument("--text-weight", type=float, default=0.5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    command = "python benchmarks/community.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()
    runs = [r for seed in args.seeds for r in rows_for(seed, args)]
    summary = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        summary[name] = {k: round(float(np.mean([r[k] for r in mine])), 4)
                         for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")}
    out = {"command": command, "date": dt.date.today().isoformat(),
           "data": f"synthetic users={args.users} items={args.items} friends={args.friends}, seeds {args.seeds}",
           "protocol": (f"{args.share:.0%} of the users held out with their whole history hidden; target: "
                        "the item each interacted with last, ranked over all items, nothing excluded"),
           "text_weight": args.text_weight, "encoder": args.encoder, "mean_over_seeds": summary, "runs": runs,
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_average_1_5_15_before_after": [[round(v, 2) for v in load_before],
                                                [round(v, 2) for v in os.getloadavg()]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for name, m in summary.items():
        print(f"{name:<40} HR@10 {m['HR@10']:.4f}  NDCG@10 {m['NDCG@10']:.4f}  HR@20 {m['HR@20']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
