"""Fit one model on a named data set and save it as a checkpoint, with what the fit cost in a JSON file:
the large-catalogue service benchmark (serve_load.py --model-dir) starts from such a checkpoint.

    LLMREC_THREADS=2 python benchmarks/fit_checkpoint.py --dataset synthetic-500000-1000000-0-10000000 \\
        --model zero-shot --set index=hnsw --set encoder=minilm-l3-onnx-int8 --set cache=false --out runs/zs1m \\
        --result benchmarks/results/fit_zero-shot_synthetic_1m.json
    python benchmarks/fit_checkpoint.py --reindex ivf --from-checkpoint runs/zs1m --out runs/zs1m-ivf \
        --result benchmarks/results/fit_zero-shot_synthetic_1m_ivf.json

``--reindex KIND --from-checkpoint DIR``: a saved zero-shot model's index rebuilt as KIND over its
vectors (no encoding; the encoding's cost is in the first checkpoint's results file) and tuned as at fit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from llmrec import datasets, models
from llmrec.config import parse_overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--from-checkpoint", type=Path, help="with --reindex: the saved model to re-index")
    p.add_argument("--reindex", choices=["exact", "hnsw", "ivf", "milvus"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--result", type=Path, required=True, help="JSON file for the fit's figures")
    args = p.parse_args(argv)
    if bool(args.reindex) != bool(args.from_checkpoint) or bool(args.reindex) == bool(args.dataset and args.model):
        p.error("give --dataset and --model, or --reindex with --from-checkpoint")
    command = "python benchmarks/fit_checkpoint.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.reindex:
        return reindex(args, command)
    load_before = os.getloadavg()
    t = time.perf_counter()
    ds = datasets.load(args.dataset, quiet=True)
    data_s = time.perf_counter() - t
    m = models.get(args.model, parse_overrides(args.overrides))
    t = time.perf_counter()
    m.fit(ds, progress=False)
    fit_s = time.perf_counter() - t
    out = {"command": command, "date": dt.date.today().isoformat(), "dataset": ds.name, "items": ds.n_items,
           "users": ds.n_users,
           "interactions": len(ds.interactions), "model": args.model,
           "data_seconds": round(data_s, 1), "fit_seconds": round(fit_s, 1),
           "threads": os.environ.get("LLMREC_THREADS"),
           **{k: v for k, v in m.benchmark_extra().items() if k != "notes"}}
    if getattr(m, "encode_seconds", 0):
        out["encode_items_per_s"] = round(ds.n_items / m.encode_seconds, 1)
    t = time.perf_counter()
    m.save(args.out, card={"dataset": ds.name})
    out["save_seconds"] = round(time.perf_counter() - t, 1)
    return _write(args.result, out, load_before)


def _write(path: Path, out: dict, load_before) -> int:
    """The figures with peak memory, load averages and the machine, written to ``path`` and printed."""
    out["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["load_average_1_5_15_before_after"] = [[round(v, 2) for v in load_before],
                                               [round(v, 2) for v in os.getloadavg()]]
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


def reindex(args, command: str) -> int:
    from llmrec.models import load_model
    load_before = os.getloadavg()
    t = time.perf_counter()
    m = load_model(args.from_checkpoint)
    load_s = time.perf_counter() - t
    from llmrec.models.zeroshot import ZeroShot
    if not isinstance(m, ZeroShot):
        sys.exit(f"--reindex: {args.from_checkpoint} holds a {m.name} model; only zero-shot has an item index")
    t = time.perf_counter()
    tuning = m.reindex(args.reindex)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    m.save(args.out, card={"dataset": m.card.get("dataset")})
    out = {"command": command, "date": dt.date.today().isoformat(), "from_checkpoint": str(args.from_checkpoint),
           "items": len(m.catalog), "index": args.reindex, "load_seconds": round(load_s, 1),
           "index_build_and_tune_seconds": round(build_s, 1), "index_tuning": tuning,
           "save_seconds": round(time.perf_counter() - t, 1)}
    return _write(args.result, out, load_before)


if __name__ == "__main__":
    sys.exit(main())
