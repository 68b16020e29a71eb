"""Data-parallel training against one process: sasrec fitted for a few epochs with workers=1 and workers=2
(DistributedDataParallel over gloo, each worker threads=1, batch_size global), seconds per training epoch
(validation excluded) and validation NDCG@10 per epoch, with the machine's load averages around each fit.

    python benchmarks/ddp.py --dataset ml-100k --epochs 2 --dropout 0.0 0.2 \\
        --result benchmarks/results/ddp_ml-100k.json

With dropout=0 the two fits should agree to float rounding (the gradients are the same up to the order of
float sums); with dropout > 0 each worker draws its own masks, so they agree only as two draws do.
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

from llmrec import datasets, models, split
from llmrec.config import parse_overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="sasrec", choices=["sasrec", "textseq"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dropout", type=float, nargs="+", default=[0.2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)
    command = "python benchmarks/ddp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ds = datasets.load(args.dataset, quiet=True)
    sp = split.leave_one_out(ds)
    base = {"batch_size": 32, "threads": 1, "device": "cpu", **parse_overrides(args.overrides),
            "epochs": args.epochs}
    runs = []
    for dropout in args.dropout:
        for w in args.workers:
            cfg = {**base, "dropout": dropout, "workers": w}
            load_before = os.getloadavg()
            t = time.perf_counter()
            m = models.get(args.model, cfg).fit(ds, sp, progress=False)
            fit_s = time.perf_counter() - t
            r = m.result
            runs.append({"workers": w, "dropout": dropout, "seconds_per_epoch": round(r.seconds_per_epoch, 2),
                         "fit_seconds": round(fit_s, 1),
                         "valid_ndcg10": [h.get("valid_ndcg10") for h in r.history],
                         "loss": [h["loss"] for h in r.history],
                         "load_average_1_5_15_before_after": [[round(v, 2) for v in load_before],
                                                              [round(v, 2) for v in os.getloadavg()]]})
            print(json.dumps(runs[-1]), flush=True)
    out = {"command": command, "date": dt.date.today().isoformat(), "dataset": ds.name, "model": args.model,
           "config": {k: v for k, v in base.items()},
           "note": "batch_size is global (each of W workers trains on batch_size / W rows of every batch); "
                   "seconds_per_epoch counts training only (validation runs on rank 0 between epochs); "
                   "fit_seconds includes starting the worker processes and validation",
           "runs": runs,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, "
                      f"python {platform.python_version()}"}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
