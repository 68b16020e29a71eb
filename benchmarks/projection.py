"""A projection to a catalogue of 100M items and a log of 1B events, every number derived from the
figures measured here (benchmarks/results/*.json) and the assumptions named below (arguments).

Per stage: the worker-hours (one thread per worker, as the measurements were made), the workers needed to
finish within ``--hours``, and what each worker must hold. Cost growth follows the exponents measured in
``scale.json`` (cost ~ items^b between the sizes measured) from the largest measured size; where a cost was
measured at one size only, it is scaled linearly and the row says so. The measurements come from 2 shared
cores at the load averages their files record: a quiet cluster core is faster, so the hours are an upper
bound for the same code.

    python benchmarks/projection.py   # -> benchmarks/results/projection.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GB = 1e9


def _read(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _row(rows: list[dict], **match) -> dict:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    raise SystemExit(f"no row {match} in the results: run its benchmark first")


def grow(value: float, at: float, to: float, b: float) -> float:
    """``value`` measured at size ``at``, at size ``to`` when cost ~ size^b."""
    return value * (to / at) ** b


def stage(name: str, worker_seconds: float, hours: float, per_worker: dict, derivation: str,
          parallel: bool = True, workers: int | None = None) -> dict:
    """A stage's cost; ``parallel``: shared by workers (else one process, whatever the window);
    ``workers``: a count the stage chose itself."""
    if workers is None:
        workers = max(1, math.ceil(worker_seconds / (hours * 3600))) if parallel else 1
    return {"stage": name, "worker_hours": round(worker_seconds / 3600, 1), "workers_for_window": workers,
            "hours_with_those_workers": round(worker_seconds / workers / 3600, 2), "per_worker": per_worker,
            "derivation": derivation}


def project(items: float, events: float, events_per_user: float, eval_users: float, hours: float) -> dict:
    scale, idx1m, idxbc = _read("scale.json"), _read("index_synthetic_1m.json"), _read("index_book-crossing.json")
    stages_file, data, batch, ddp = (_read("batch_stages.json"), _read("data_scale.json"),
                                     _read("batch_recommend.json"), _read("ddp_ml-100k.json"))
    users = events / events_per_user
    b = scale["growth_exponents"]
    zs = _row(scale["rows"], model="zero-shot", items=100_000)
    knn = _row(scale["rows"], model="itemknn", items=1_000_000)
    dim = zs["encoder_dim"]

    # -- sizes -------------------------------------------------------------------------------------------
    big = max(stages_file["encode"], key=lambda r: r["items"])
    vec_bytes = items * dim * 4
    parquet_bytes = items * big["parquet_bytes_per_item"]
    flat = _row(idx1m["results"], factory="IVF4000,Flat")
    sq8 = _row(idx1m["results"], factory="IVF4000,SQ8")
    hnsw = _row(idxbc["results"], factory="HNSW32")
    index = {name: round(r["index_mb"] * 1e6 / r["n"] * items / GB, 1)
             for name, r in (("IVF,Flat", flat), ("IVF,SQ8", sq8), ("HNSW32", hnsw))}
    log_bytes = events * data["generate"][-1]["memory_per_interaction_bytes"]
    sizes = {"item_vectors_float32_gb": round(vec_bytes / GB, 1),
             "item_vectors_parquet_gb": round(parquet_bytes / GB, 1),
             "index_gb": index, "log_in_memory_gb": round(log_bytes / GB, 1), "users": int(users),
             "derivation": f"{dim}-d float32 vectors ({zs['encoder']}); Parquet bytes per item from batch "
                           f"encode of {big['items']:,} items; index bytes per vector from "
                           f"index_synthetic_1m.json (IVF, 1M vectors) and index_book-crossing.json (HNSW32, "
                           f"{hnsw['n']:,} vectors); {data['generate'][-1]['memory_per_interaction_bytes']} bytes "
                           f"an event once loaded (data_scale.json); users = events / {events_per_user:g}"}

    out = []
    # -- encode ------------------------------------------------------------------------------------------
    rate = zs["encode_items_per_s"]  # one thread, the encoder auto picks at this size
    par = big["ray"]["items_per_second"] / (big["ray"]["workers"] * big["local"]["items_per_second"])
    secs = grow(zs["encode_seconds"], zs["items"], items, b["zero-shot"]["encode_seconds"]) / min(1.0, par)
    out.append(stage("encode (batch encode, Ray actors)", secs, hours,
                     {"cpu": 1, "memory_gb": round(zs["peak_memory_mb"] / 1e3, 1),
                      "reads": "its chunks' rows of the catalogue (Parquet, shared storage)",
                      "writes": f"part files of {big['parquet_bytes_per_item'] * big['chunk_size'] / 1e6:.0f} "
                                "MB"},
                     f"{rate:.0f} items/s a thread ({zs['encoder']}, scale.json, 100k items), grown with "
                     f"b={b['zero-shot']['encode_seconds']}; Ray's parallel efficiency {par:.2f} on "
                     f"{big['ray']['workers']} actors ({big['dataset']}, batch_stages.json) "
                     f"applied when below 1"))
    # -- index -------------------------------------------------------------------------------------------
    secs = grow(sq8["build_seconds"], sq8["n"], items, 1.0)
    out.append(stage("IVF,SQ8 index build (one process)", secs, hours,
                     {"cpu": 1, "memory_gb": round((vec_bytes + index["IVF,SQ8"] * GB) / GB, 1)},
                     f"{sq8['build_seconds']} s for {sq8['n']:,} vectors (index_synthetic_1m.json), scaled "
                     "linearly (k-means trained on a sample, adding is linear; measured at one size)",
                     parallel=False))
    hb = zs["index_build_seconds"]
    secs = grow(hb, zs["items"], items, b["zero-shot"]["index_build_seconds"])
    out.append(stage("HNSW32 index build (one process)", secs, hours,
                     {"cpu": 1, "memory_gb": round((vec_bytes + index["HNSW32"] * GB) / GB, 1)},
                     f"{hb} s at 100k items (scale.json), grown with b={b['zero-shot']['index_build_seconds']}",
                     parallel=False))
    # -- batch recommend ---------------------------------------------------------------------------------
    q_ms = grow(sq8["query_ms_p50"], sq8["n"], items, b["zero-shot"]["index_query_p99_ms"])
    z100k = next(m for r in batch["runs"] if r["users"] == 100_000 for m in r["models"] if m["model"] == "zero-shot")
    per_user_10k = 1 / (z100k["ray"]["users_per_second"] / z100k["ray"]["workers"])
    secs = users * (q_ms / 1e3 + per_user_10k)
    out.append(stage("batch recommend, zero-shot over the IVF,SQ8 index", secs, hours,
                     {"cpu": 1, "memory_gb": round(index["IVF,SQ8"] + vec_bytes / GB, 1),
                      "reads": "the checkpoint folder (shared storage)", "note":
                      "every actor loads the whole checkpoint (vectors and index): at this size, a node per "
                      "actor or a sharded index"},
                     f"IVF,SQ8 query p50 {sq8['query_ms_p50']} ms at 1M vectors grown with "
                     f"b={b['zero-shot']['index_query_p99_ms']} -> {q_ms:.2f} ms, plus the per-user cost of a Ray "
                     f"actor at 10k items ({per_user_10k * 1e3:.3f} ms, batch_recommend.json)"))
    # -- evaluation ----------------------------------------------------------------------------------------
    neighbours = knn["config"]["neighbors"]
    e_ms = grow(knn["eval_seconds_per_user"], knn["items"], items, b["itemknn"]["eval_seconds_per_user"]) * 1e3
    csv10m = _row(data["load"], format="csv", lines=10_000_000)
    scan_s = events * csv10m["seconds"] / csv10m["lines"]
    rank_s = eval_users * e_ms / 1e3
    # each shard scans the whole log: the workers that fit ranking and one scan in the window
    w = max(1, math.ceil(rank_s / max(hours * 3600 - scan_s, 1.0)))
    secs = rank_s + w * scan_s
    ev = stage("sharded evaluation, itemknn, full ranking", secs, hours,
               {"cpu": 1, "memory_gb": round((log_bytes / w + neighbours * 8 * items) / GB, 1),
                "reads": "the whole log once (keeping its users' rows)"},
               f"{eval_users:,.0f} sampled test users; full ranking {knn['eval_seconds_per_user'] * 1e3:.2f} ms a user "
               f"at 1M items grown with b={b['itemknn']['eval_seconds_per_user']} -> {e_ms:.0f} ms; each shard scans "
               f"the log at the CSV loader's rate ({csv10m['seconds']} s per {csv10m['lines']:,} lines, "
               f"data_scale.json; a Parquet log's rate was not measured) = {scan_s / 3600:.1f} h a shard, repeated by "
               "every shard; memory: its share of the "
               f"log (28 B an event) and the model's {neighbours} neighbours an item (8 B each)", workers=w)
    out.append(ev)
    # -- training ------------------------------------------------------------------------------------------
    one = _row(ddp["runs"], workers=1, dropout=0.0)
    two = _row(ddp["runs"], workers=2, dropout=0.0)
    train_events = 100_000 - 2 * 943  # ml-100k less each user's validation and test targets
    per_event = one["seconds_per_epoch"] / train_events
    eff = one["seconds_per_epoch"] / (2 * two["seconds_per_epoch"])
    secs = events * per_event / eff
    sas = _row(scale["rows"], model="sasrec", items=1_000_000)
    table = items * sas["config"]["embedding_size"] * 4  # the item embeddings, float32
    out.append(stage("sasrec training, one epoch, DDP", secs, hours,
                     {"cpu": 1, "memory_gb": round((log_bytes + 4 * table) / GB, 1),
                      "note": "every rank loads the log and holds the item table with its gradient and two "
                              "Adam moments (4 copies); the run folder on shared storage"},
                     f"{one['seconds_per_epoch']} s an epoch of ml-100k's {train_events:,} training events on "
                     f"1 worker, {two['seconds_per_epoch']} s on 2 (efficiency {eff:.2f}, ddp_ml-100k.json), "
                     "linear in events, the efficiency kept at more workers (measured at 2 only); measured with "
                     "the full softmax over 1,682 items: the sampled softmax used above 50,000 items scores a "
                     f"fixed {sas['config']['negatives']} shared negatives an event, not measured against it here"))
    return {"target": {"items": items, "events": events, "users": users, "window_hours": hours,
                       "eval_users": eval_users},
            "sizes": sizes, "stages": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=float, default=1e8)
    p.add_argument("--events", type=float, default=1e9)
    p.add_argument("--events-per-user", type=float, default=20.0, help="users = events / this (assumed)")
    p.add_argument("--eval-users", type=float, default=1e6, help="test users sampled for evaluation (assumed)")
    p.add_argument("--hours", type=float, default=4.0, help="the window each stage should fit in")
    p.add_argument("--result", type=Path, default=RESULTS / "projection.json")
    args = p.parse_args(argv)
    out = {"command": "python benchmarks/projection.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": dt.date.today().isoformat(),
           "notes": "worker_hours: one thread per worker at the measured rates (2 shared cores, loads as "
                    "recorded in each source file); workers_for_window: workers to finish within window_hours",
           **project(args.items, args.events, args.events_per_user, args.eval_users, args.hours)}
    args.result.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
