"""Batch recommend throughput (users/s) of the local and Ray engines, and that both write the same rows.

Each model is fitted on all of a data set's interactions and saved as a checkpoint; then
``llmrec.batch.recommend`` writes the top-k of every known user, once with the local engine (this process)
and once with the Ray engine (a local Ray of ``--workers`` CPUs, one actor per CPU, each loading the
checkpoint once). Ray is started before the timed Ray run and its start is timed apart; the Ray run's
seconds include starting the actors and loading the checkpoint in each. The two outputs are compared:
same users, items and order, scores within 1e-5.

    OMP_NUM_THREADS=1 python benchmarks/batch_recommend.py --dataset ml-1m synthetic-100000-10000-0 \\
        --model itemknn zero-shot sasrec --workers 2

The machine's load averages before and after each run are recorded: other work on the same cores lowers
the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec import __version__, batch, datasets, models, pipeline

CONFIGS = {"itemknn": {"threads": 1}, "zero-shot": {}, "sasrec": {"epochs": 1, "threads": 1, "max_history": 50}}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_model(ds, name: str, work: Path, k: int, workers: int, chunk_size: int) -> dict:
    ck = work / name
    t = time.perf_counter()
    pipeline.fit_card_save(models.get(name, CONFIGS.get(name, {})), ds, None, ck, progress=False)
    row: dict = {"model": name, "config": CONFIGS.get(name, {}),
                 "fit_and_save_seconds": round(time.perf_counter() - t, 1)}
    for engine in ("local", "ray"):
        before = _load()
        res = batch.recommend(ck, work / f"{name}-{engine}", k=k, engine=engine, workers=workers,
                              chunk_size=chunk_size, overwrite=True)
        row[engine] = {"seconds": res["seconds"], "users_per_second": res["users_per_second"],
                       "workers": res["workers"], "rows": res["rows"], "chunks": res["chunks"],
                       "load_average_1_5_15_before_after": [before, _load()]}
    a, b = pd.read_parquet(work / f"{name}-local"), pd.read_parquet(work / f"{name}-ray")
    same = a.drop(columns="score").equals(b.drop(columns="score"))
    row["identical"] = bool(same and np.allclose(a.score, b.score, rtol=0, atol=1e-5))
    row["max_score_difference"] = float(np.abs(a.score.to_numpy() - b.score.to_numpy()).max()) if same else None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", default=["ml-1m"])
    p.add_argument("--model", nargs="+", default=["itemknn", "zero-shot"], choices=sorted(CONFIGS))
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray, one actor each")
    p.add_argument("--chunk-size", type=int, default=batch.CHUNK_SIZE)
    p.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "batch_recommend.json")
    args = p.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/batch_recommend.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="llmrec-batch-"))
    runs = []
    try:
        t = time.perf_counter()
        ray, _ = batch.connect(num_cpus=args.workers)
        ray_start = time.perf_counter() - t
        try:
            for name in args.dataset:
                ds = datasets.load(name, quiet=True)
                runs.append({"dataset": ds.name, "users": ds.n_users, "items": ds.n_items,
                             "interactions": len(ds.interactions),
                             "models": [run_model(ds, m, work / ds.name, args.k, args.workers, args.chunk_size)
                                        for m in args.model]})
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"command": command, "date": dt.date.today().isoformat(), "llmrec_version": __version__,
           "ray_version": ray.__version__, "k": args.k, "chunk_size": args.chunk_size,
           "ray_start_seconds": round(ray_start, 1),
           "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, python {platform.python_version()}",
           "notes": "users/s over every known user, from loading the checkpoint to the last part file; the Ray "
                    "run starts its actors (each loads the checkpoint) inside the timed part, Ray itself before "
                    "it (ray_start_seconds). identical: same users, items and order, scores within 1e-5.",
           "runs": runs}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0 if all(r["identical"] for run in runs for r in run["models"]) else 1


if __name__ == "__main__":
    sys.exit(main())
