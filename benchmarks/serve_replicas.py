"""Replicas over Postgres beside one process over SQLite, in one run: POST /recommend at concurrency 32 and
the events written per second (batches of 100 and single events), acknowledged after COMMIT. Writes
benchmarks/results/serve_replicas.json.

    python benchmarks/serve_replicas.py                  # ml-1m, the default model, 6 s per phase
    python benchmarks/serve_replicas.py --seconds 3 --model itemknn

Each configuration is real `llmrec serve` processes: SQLite (1 process), Postgres with 1 replica, Postgres
with 2 replicas (two processes, each taking half the client connections, as a round-robin load balancer
would). Postgres is a throwaway cluster started here (tests/pgkit.py: initdb in a temporary folder). The
load generator is serve_load.py's asyncio client in this process; server, Postgres and client share the
machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_load import RESULTS, _one_client, _stats, _wait  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _spread(ports, path, bodies, concurrency, seconds, warmup, label):
    """``concurrency`` connections spread round-robin over ``ports``."""
    lat, errors = [], []
    start = time.perf_counter()
    warm_until, until = start + warmup, start + warmup + seconds
    await asyncio.gather(*[_one_client(ports[c % len(ports)], path, bodies, until, warm_until, lat, errors)
                           for c in range(concurrency)])
    return _stats(label, concurrency, seconds, lat, errors)


def _feed_lag(ports, items, n=100) -> dict:
    """An event through the first replica, then the second polled until the user's history holds it: the
    time from the first's answer to the second's, ``n`` times (a new user each)."""
    import httpx
    import numpy as np
    lags = []
    with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}") as a, \
            httpx.Client(base_url=f"http://127.0.0.1:{ports[1]}") as b:
        for j in range(n):
            user, item = f"lag-{j}", items[j % len(items)]
            assert a.post("/events", json={"user_id": user, "item_id": item, "type": "like"}).status_code == 200
            t0 = time.perf_counter()
            while b.get(f"/users/{user}/history").status_code != 200:
                assert time.perf_counter() - t0 < 10, "the second replica never saw the event"
            lags.append(time.perf_counter() - t0)
    ms = np.array(lags) * 1e3
    return {"samples": n, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
            "how": "POST /events to replica 1 answered, then GET /users/{id}/history on replica 2 until 200"}


def _start(args, port, data_dir, database):
    cmd = [sys.executable, "-m", "llmrec.cli", "serve", "--dataset", args.dataset, "--data-dir", data_dir,
           "--port", str(port), "--insecure", "--public-user-data",
           *(["--model", args.model] if args.model else []), *(["--database", database] if database else [])]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "TQDM_DISABLE": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--model", default=None, help="default: the service's default model")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", default=str(RESULTS / "serve_replicas.json"))
    args = p.parse_args(argv)

    from pgkit import Cluster

    from llmrec.datasets import load
    ds = load(args.dataset, quiet=True)
    users, items = list(ds.users.ids()), list(ds.catalog.ids.ids())
    rng = random.Random(0)
    rec_bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in rng.sample(users, min(1000, len(users)))]
    one_bodies = [json.dumps({"user_id": rng.choice(users), "item_id": rng.choice(items), "type": "view"}).encode()
                  for _ in range(2000)]
    batch_bodies = [json.dumps([{"user_id": rng.choice(users), "item_id": rng.choice(items), "type": "view"}
                                for _ in range(100)]).encode() for _ in range(200)]
    cluster = Cluster()
    configs = [("sqlite", 1), ("postgres", 1), ("postgres", 2)]
    results, health = [], {}
    load_before = os.getloadavg()
    try:
        for backend, replicas in configs:
            database = cluster.new_database() if backend == "postgres" else None
            data_dir = tempfile.mkdtemp(prefix="llmrec-replicas-")
            ports = [_free_port() for _ in range(replicas)]
            procs = []
            try:
                for port in ports:  # one after the other: the first migrates the new database
                    procs.append(_start(args, port, data_dir, database))
                    health = _wait(port, procs[-1])
                label = f"{backend}, {replicas} process{'es' if replicas > 1 else ''}"
                rows = []
                for path, bodies, c, name, per in (
                        ("/recommend", rec_bodies, args.concurrency, "recommend", 1),
                        ("/events", batch_bodies, 4, "events, batches of 100", 100),
                        ("/events", one_bodies, args.concurrency, "events, one per request", 1)):
                    r = asyncio.run(_spread(ports, path, bodies, c, args.seconds, args.warmup, f"{path} ({name})"))
                    r["events_per_s"] = round(r["throughput_rps"] * per, 1) if path == "/events" else None
                    rows.append(r)
                    print(f"{label:<24} {name:<24} c={c:<3} {r['throughput_rps']:>8.1f} req/s "
                          f"p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms errors {r['errors']}"
                          + (f"  {r['events_per_s']:,.0f} events/s" if r["events_per_s"] else ""), flush=True)
                lag = _feed_lag(ports, items) if replicas > 1 else None
                if lag:
                    print(f"{label:<24} feed lag p50 {lag['p50_ms']} ms p99 {lag['p99_ms']} ms", flush=True)
                results.append({"backend": backend, "replicas": replicas, "phases": rows, "feed_lag": lag,
                                "loadavg_after": [round(x, 2) for x in os.getloadavg()]})
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        cluster.destroy()

    def get(backend, replicas, name):
        cfg = next(r for r in results if (r["backend"], r["replicas"]) == (backend, replicas))
        return next(x for x in cfg["phases"] if name in x["endpoint"])
    summary = {}
    for backend, replicas in configs:
        key = f"{backend}_{replicas}"
        rec = get(backend, replicas, "recommend")
        summary[f"{key}_recommend_c{args.concurrency}"] = {k: rec[k] for k in ("throughput_rps", "p50_ms", "p99_ms")}
        summary[f"{key}_events_per_s_batched"] = get(backend, replicas, "batches")["events_per_s"]
        summary[f"{key}_events_per_s_single_c{args.concurrency}"] = get(backend, replicas, "one per")["events_per_s"]
    summary["feed_lag_ms"] = next(r["feed_lag"] for r in results if r["feed_lag"])
    out = {
        "benchmark": "serve_replicas", "dataset": args.dataset, "model": health.get("model"),
        "items": health.get("items"), "users": health.get("users"),
        "protocol": (f"real `llmrec serve` processes on 127.0.0.1 (uvicorn, 1 worker each); SQLite in one "
                     f"process, then a throwaway Postgres {cluster.bin.parent.name} cluster with 1 and 2 replicas "
                     f"(connections round-robin over the replicas); asyncio client in another process, "
                     f"keep-alive connections sending back to back; {args.warmup:g} s warm-up then "
                     f"{args.seconds:g} s measured per phase; /recommend {{user_id, k: 10}} over 1,000 random "
                     f"users at concurrency {args.concurrency}; /events: 100 view events per request at "
                     f"concurrency 4, and one per request at concurrency {args.concurrency}, each answered "
                     f"after its transaction commits"),
        "configs": results,
        "summary": summary,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "command": "python benchmarks/serve_replicas.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, python {platform.python_version()}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
