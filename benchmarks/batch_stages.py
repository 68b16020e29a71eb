"""Batch encode and sharded evaluation, local engine against Ray, and that both give the same results.

Encode: every item text of a catalogue (the zero-shot template) into Parquet part files, once with the
local engine and once on a local Ray of ``--workers`` CPUs (one actor per CPU, each loading the encoder);
items/s from planning to the last part file; vectors compared (max absolute difference). A named data set's
catalogue is read by the driver; ``--parquet`` writes it first as a hive-partitioned Parquet folder and
encodes from its ``file://`` URI (the actors read their own rows).

Evaluate: a checkpoint fitted on the leave-one-out train split, evaluated in process
(``evaluate.evaluate``), by ``batch_evaluate`` locally in one shard and on Ray with one shard per worker;
the metrics compared.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/batch_stages.py --encode ml-1m:minilm-onnx \\
        synthetic-1000-100000-0:minilm-l3-onnx-int8 --parquet --evaluate ml-1m:itemknn ml-1m:sasrec --workers 2
    ... --encode --evaluate ml-1m:itemknn ml-1m:sasrec --update   # rerun some rows, keep the others

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

from llmrec import __version__, batch, batch_encode, batch_evaluate, datasets, evaluate, models, pipeline, split

CONFIGS = {"itemknn": {"threads": 1}, "sasrec": {"epochs": 1, "threads": 1, "max_history": 50}}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _vectors(folder: Path) -> tuple[list, np.ndarray]:
    t = pd.read_parquet(folder)
    return t.item_id.tolist(), np.stack(t.vector.to_numpy())


def run_encode(spec: str, work: Path, workers: int, chunk_size: int, parquet: bool) -> dict:
    name, encoder = spec.split(":", 1)
    ds = datasets.load(name, quiet=True)
    chunk_size = min(chunk_size, -(-ds.n_items // (2 * workers)))  # at least two chunks an actor
    row: dict = {"dataset": ds.name, "items": ds.n_items, "encoder": encoder, "chunk_size": chunk_size}
    source: dict = {"dataset": name}
    if parquet:
        import pyarrow as pa
        import pyarrow.dataset as pads
        folder = work / f"{name}-items"
        frame = ds.catalog.frame.assign(bucket=np.arange(ds.n_items) % 8)
        pads.write_dataset(pa.Table.from_pandas(frame, preserve_index=False), folder, format="parquet",
                           partitioning=["bucket"], partitioning_flavor="hive")
        source = {"items": f"file://{folder}"}
        row["source"] = "a hive-partitioned Parquet folder (bucket=0..7) read through its file:// URI"
    else:
        row["source"] = "the named data set's catalogue, read by the driver"
    for engine in ("local", "ray"):
        before = _load()
        res = batch_encode.encode(work / f"{name}-{engine}", encoder=encoder, engine=engine, workers=workers,
                                  chunk_size=chunk_size, overwrite=True, **source)
        row[engine] = {"seconds": res["seconds"], "items_per_second": res["items_per_second"],
                       "workers": res["workers"], "chunks": res["chunks"],
                       "load_average_1_5_15_before_after": [before, _load()]}
    (ia, a), (ib, b) = _vectors(work / f"{name}-local"), _vectors(work / f"{name}-ray")
    row["same_items"] = ia == ib
    row["max_vector_difference"] = float(np.abs(a - b).max()) if ia == ib else None
    row["identical"] = bool(ia == ib and row["max_vector_difference"] <= 1e-5)
    row["vector_bytes_per_item"] = int(a.shape[1] * 4)
    row["parquet_bytes_per_item"] = round(sum(p.stat().st_size for p in (work / f"{name}-local").glob("part-*"))
                                          / ds.n_items, 1)
    return row


def run_evaluate(spec: str, work: Path, workers: int) -> dict:
    name, model_name = spec.split(":", 1)
    ds = datasets.load(name, quiet=True)
    sp = split.leave_one_out(ds)
    ck = work / f"{name}-{model_name}"
    pipeline.fit_card_save(models.get(model_name, CONFIGS.get(model_name, {})), ds, sp, ck, progress=False)
    row: dict = {"dataset": ds.name, "model": model_name, "config": CONFIGS.get(model_name, {})}
    before = _load()
    t = time.perf_counter()
    ref = evaluate.evaluate(models.load_model(ck), sp, ds.n_users, ds.n_items, ks=(10, 20), progress=False)
    row["in_process"] = {"seconds": round(time.perf_counter() - t, 3), "users": ref.n_users,
                         "metrics": ref.metrics, "load_average_1_5_15_before_after": [before, _load()],
                         "note": "checkpoint loaded and split made before the timer"}
    for engine, shards in (("local", 1), ("ray", workers)):
        before = _load()
        res = batch_evaluate.evaluate(ck, engine=engine, shards=shards)
        diff = max(abs(res["metrics"][k] - v) for k, v in ref.metrics.items())
        row[f"{engine}_{shards}_shards"] = {
            "seconds": res["seconds"], "users_per_second": round(res["users_evaluated"] / res["seconds"], 1),
            "max_metric_difference_vs_in_process": diff, "load_average_1_5_15_before_after": [before, _load()]}
    row["identical"] = all(v["max_metric_difference_vs_in_process"] <= 1e-9 for k, v in row.items()
                           if k.endswith("_shards"))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encode", nargs="*", default=["ml-1m:minilm-onnx"], metavar="DATASET:ENCODER")
    p.add_argument("--parquet", action="store_true",
                   help="encode catalogues of more than 10,000 items from a partitioned Parquet folder")
    p.add_argument("--evaluate", nargs="*", default=["ml-1m:itemknn"], metavar="DATASET:MODEL")
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray, one actor each")
    p.add_argument("--chunk-size", type=int, default=batch_encode.CHUNK_SIZE,
                   help="items per part file, at most (smaller where the catalogue would give an actor less than "
                        "two chunks)")
    p.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "batch_stages.json")
    p.add_argument("--update", action="store_true",
                   help="keep the result file's other rows (replace only the rows run now)")
    args = p.parse_args(argv)
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/batch_stages.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="llmrec-stages-"))
    encode_rows, eval_rows = [], []
    try:
        t = time.perf_counter()
        ray, _ = batch.connect(num_cpus=args.workers)
        ray_start = time.perf_counter() - t
        try:
            for spec in args.encode:
                big = datasets.load(spec.split(":", 1)[0], quiet=True).n_items > 10_000
                encode_rows.append(run_encode(spec, work, args.workers, args.chunk_size, args.parquet and big))
                print(json.dumps(encode_rows[-1]), flush=True)
            for spec in args.evaluate:
                eval_rows.append(run_evaluate(spec, work, args.workers))
                print(json.dumps(eval_rows[-1]), flush=True)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commands = [command]
    if args.update and args.result.exists():
        old = json.loads(args.result.read_text())
        commands = old.get("commands", []) + commands
        encode_rows += [r for r in old["encode"] if (r["dataset"], r["encoder"]) not in
                        {(n["dataset"], n["encoder"]) for n in encode_rows}]
        eval_rows += [r for r in old["evaluate"] if (r["dataset"], r["model"]) not in
                      {(n["dataset"], n["model"]) for n in eval_rows}]
    out = {"commands": commands, "date": dt.date.today().isoformat(), "llmrec_version": __version__,
           "ray_version": ray.__version__, "chunk_size": args.chunk_size, "workers": args.workers,
           "ray_start_seconds": round(ray_start, 1),
           "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, python {platform.python_version()}",
           "notes": "encode: items/s from planning the chunks to the last part file, the Ray run's actors "
                    "starting (each loads the encoder) inside the timed part, Ray itself before it "
                    "(ray_start_seconds); one thread per worker. evaluate: the in-process evaluator against "
                    "batch_evaluate (each shard loads the checkpoint and reads its users' rows inside the "
                    "timed part). identical: encode vectors within 1e-5, evaluate metrics within 1e-9.",
           "encode": encode_rows, "evaluate": eval_rows}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(out, indent=1) + "\n")
    return 0 if all(r["identical"] for r in encode_rows + eval_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
