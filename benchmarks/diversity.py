"""The accuracy / diversity trade-off of MMR re-ranking (``recommend(diversity=lambda)``): one model fitted
once, then evaluated on the test split at each lambda with the beyond-accuracy metrics. One JSON file, and
its Markdown table written into README.md between ``<!-- diversity:start -->`` and ``<!-- diversity:end -->``.

    nice -n 10 python benchmarks/diversity.py --dataset ml-1m --model itemknn --set neighbors=20 --set threads=1
    python benchmarks/diversity.py --table-only    # rewrite the README table from the results file
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from llmrec import __version__, datasets, evaluate, models, split
from llmrec.config import parse_overrides, to_dict

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- diversity:start -->", "<!-- diversity:end -->"
COLUMNS = ["HR@10", "NDCG@10", "Coverage@10", "ILD@10", "Novelty@10", "ARP@10", "Head@10"]


def table(result: dict) -> str:
    lines = ["| diversity | " + " | ".join(COLUMNS) + " | eval s |", "|---" * (len(COLUMNS) + 2) + "|"]
    for row in result["rows"]:
        m = row["metrics"]
        lines.append(f"| {row['diversity']:g} | " + " | ".join(f"{m[c]:.4f}" if c != "ARP@10" else f"{m[c]:.1f}"
                                                        for c in COLUMNS) + f" | {row['eval_seconds']:.1f} |")
    return "\n".join(lines)


def write_readme(result: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:a] + "\n" + table(result) + "\n" + text[b:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--model", default="itemknn")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lambdas", default="0,0.1,0.3,0.5,0.7")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--table-only", action="store_true", help="rewrite the README table from --out and stop")
    args = p.parse_args(argv)
    path = args.out or RESULTS / f"diversity_{args.dataset}.json"
    if args.table_only:
        write_readme(json.loads(path.read_text()))
        return 0
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    ds = datasets.load(args.dataset)
    sp = split.leave_one_out(ds)
    load_before = os.getloadavg()
    model = models.get(args.model, parse_overrides(args.overrides))
    t0 = time.perf_counter()
    model.fit(ds, sp, progress=False)
    fit_s = time.perf_counter() - t0
    rows, res = [], None
    for lam in (float(x) for x in args.lambdas.split(",")):
        res = evaluate.evaluate(model, sp, ds.n_users, ds.n_items, ks=(10,), stage="test", beyond=True,
                                diversity=lam, progress=False)
        rows.append({"diversity": lam, "metrics": {k: round(v, 4) for k, v in res.metrics.items()},
                     "eval_seconds": round(res.seconds, 1)})
        print(f"diversity {lam:g}: " + ", ".join(f"{c} {res.metrics[c]:.4f}" for c in COLUMNS), flush=True)
    out = {"dataset": ds.name, "model": args.model, "config": to_dict(model.config), "protocol": res.protocol,
           "item_vectors": res.extra["item_vectors"], "users_evaluated": res.n_users, "rows": rows,
           "fit_seconds": round(fit_s, 1),
           "load_average_1_5_15_before_after": [[round(v, 2) for v in load_before],
                                                [round(v, 2) for v in os.getloadavg()]],
           "command": command, "date": dt.date.today().isoformat(), "llmrec_version": __version__}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
