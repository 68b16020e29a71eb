"""Load on loopback: POST /recommend at concurrency 1 and 32 against a served catalogue (ml-1m by default),
and the same app's empty endpoints in the same run, as the framework's ceiling. Writes
benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py                       # ml-1m, the default model, 6 s per phase
    python benchmarks/serve_load.py --model popular --seconds 4

The server is a subprocess (uvicorn, one worker, as `llmrec serve` runs it); the load generator is this
process: asyncio with raw keep-alive HTTP/1.1 connections, one per concurrent client, so it costs the shared
CPU as little as a Python client can. Latency is measured per request from send to the full response.
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

import numpy as np

RESULTS = Path(__file__).parent / "results"


def serve(args) -> None:
    """The server side: the real app plus two empty endpoints, under uvicorn like `llmrec serve`."""
    t_start = time.perf_counter()
    from llmrec import pipeline, service
    from llmrec.server import create_app, run
    if args.model_dir:  # a saved checkpoint: what a restart of a large service loads
        model, source = pipeline.obtain(model_dir=args.model_dir)
    else:
        model, source = pipeline.obtain(dataset=args.dataset, model=args.model, text=True)
    engine = service.open_engine(model, args.data_dir, source)
    app = create_app(engine, insecure=True, public_user_data=True)  # the bodies ask for user ids
    ready_s = time.perf_counter() - t_start  # model loaded (or fitted), store replayed, app made
    # the engine alone, no HTTP: CPU and wall time per recommend call, for the split in the results
    users = engine.user_ids(300)
    for u in users[:20]:
        engine.recommend(user_id=u, k=10)
    cpu, wall = time.process_time(), time.perf_counter()
    for u in users:
        engine.recommend(user_id=u, k=10)
    cost = {"engine_ready_seconds": round(ready_s, 2),
            "engine_recommend_cpu_ms": round((time.process_time() - cpu) / len(users) * 1e3, 3),
            "engine_recommend_wall_ms": round((time.perf_counter() - wall) / len(users) * 1e3, 3)}
    ix = getattr(model, "index", None)
    if getattr(ix, "kind", "exact") != "exact":  # the served queries' recall@10 against exact search
        from llmrec import index as vindex
        hist = [engine.catalog.ids.indices([i["item_id"] for i in engine.history(u)["items"]]) for u in users]
        q = model.user_vectors(hist)
        want = vindex.make("exact", ix.metric).add(model.item_vectors).search(q, 10, exclude=hist)[0]
        cost.update(ann_recall_at_10=round(vindex.recall_at_k(ix.search(q, 10, exclude=hist)[0], want), 4),
                    ann_recall_queries=len(users), ann_index=ix.kind, ann_params=ix.params)
    (Path(args.data_dir) / "engine.json").write_text(json.dumps(cost))

    @app.post("/_empty")
    def empty_sync() -> dict:  # a plain `def` route (run in the thread pool)
        return {}

    @app.post("/_empty_async")
    async def empty_async() -> dict:
        return {}

    run(app, "127.0.0.1", args.port)


async def _one_client(port, path, bodies, until, warm_until, lat, errors, method="POST"):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = random.randrange(len(bodies))
    try:
        while True:
            now = time.perf_counter()
            if now >= until:
                break
            body = bodies[i % len(bodies)]
            i += 1
            if method == "GET":
                req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            else:
                req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode())
            if t0 >= warm_until:
                lat.append(t1 - t0)
    finally:
        writer.close()


async def _phase(port, path, bodies, concurrency, seconds, warmup):
    lat, errors = [], []
    start = time.perf_counter()
    warm_until, until = start + warmup, start + warmup + seconds
    await asyncio.gather(*[_one_client(port, path, bodies, until, warm_until, lat, errors)
                           for _ in range(concurrency)])
    return _stats(path, concurrency, seconds, lat, errors)


async def _mixed(port, user_bodies, text_bodies, text_clients, seconds, warmup):
    """``text_clients`` connections sending free-text queries back to back, one sending user queries and
    one polling /health, at the same time: what a slow text query costs everyone else."""
    start = time.perf_counter()
    warm_until, until = start + warmup, start + warmup + seconds
    lat = {k: ([], []) for k in ("text", "user", "health")}
    await asyncio.gather(
        *[_one_client(port, "/recommend", text_bodies, until, warm_until, *lat["text"])
          for _ in range(text_clients)],
        _one_client(port, "/recommend", user_bodies, until, warm_until, *lat["user"]),
        _one_client(port, "/health", [b""], until, warm_until, *lat["health"], method="GET"))
    return {k: _stats(f"{k} (mixed: {text_clients} text clients, 1 user client, 1 health client)", 1,
                      seconds, *v) for k, v in lat.items()}


async def _phase_get(port, path, seconds, warmup):
    lat, errors = [], []
    start = time.perf_counter()
    await _one_client(port, path, [b""], start + warmup + seconds, start + warmup, lat, errors, method="GET")
    return _stats(f"{path} (quiet)", 1, seconds, lat, errors)


def _stats(path, concurrency, seconds, lat, errors) -> dict:
    ms = np.array(lat) * 1e3

    def pct(q):  # None where no request finished inside the phase
        return round(float(np.percentile(ms, q)), 2) if len(ms) else None
    return {"endpoint": path, "concurrency": concurrency, "requests": len(lat), "seconds": seconds,
            "throughput_rps": round(len(lat) / seconds, 1), "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "max_ms": pct(100), "errors": len(errors), "error_sample": errors[:3]}


WRK_LUA = """
local bodies = {%s}
local i = math.random(#bodies)
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "errors": %%d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _pin_client() -> None:
    """Move this process (and the clients it starts) off CPU 0, which the server has."""
    others = set(range(os.cpu_count() or 1)) - {0}
    if others:
        os.sched_setaffinity(0, others)


def _wrk_phase(port, path, bodies, concurrency, seconds, warmup):
    """The same phase driven by wrk (C, epoll): it leaves the shared CPU to the server."""
    lua = WRK_LUA % (", ".join("[[" + b.decode() + "]]" for b in bodies), path)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    threads = min(2, concurrency, len(os.sched_getaffinity(0)))
    base = ["wrk", "-t", str(threads), "-c", str(concurrency), "-s", f.name, "--timeout", "5s",
            f"http://127.0.0.1:{port}"]
    try:
        subprocess.run(base[:1] + ["-d", f"{max(1, round(warmup))}s"] + base[1:], capture_output=True,
                       check=True)
        out = subprocess.run(base[:1] + ["-d", f"{round(seconds)}s"] + base[1:], capture_output=True,
                             text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    w = json.loads(out.split("WRKJSON", 1)[1])
    secs = w["duration_us"] / 1e6
    return {"endpoint": path, "concurrency": concurrency, "requests": w["requests"],
            "seconds": round(secs, 2),
            "throughput_rps": round(w["requests"] / secs, 1), "p50_ms": w["p50_us"] / 1e3,
            "p90_ms": w["p90_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3, "max_ms": w["max_us"] / 1e3,
            "errors": w["errors"], "error_sample": []}


def _wait(port, proc, timeout=300):
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("server did not start")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--model", default=None, help="default: the service's default model")
    p.add_argument("--model-dir", default=None,
                   help="serve this checkpoint (trained on --dataset, whose users the bodies name)")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator: wrk when installed (auto), else an asyncio Python client")
    p.add_argument("--pin", action="store_true",
                   help="server on CPU 0, load generator on the other CPUs (so the client does not preempt "
                        "the server; what a separate client machine gives)")
    p.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args)
        return 0

    from llmrec import pipeline
    from llmrec.datasets import load
    model = args.model or pipeline.DEFAULT_TEXT_MODEL
    client = ("wrk" if shutil.which("wrk") else "python") if args.client == "auto" else args.client

    def phase(path, bodies, c, seconds):
        if client == "wrk":
            return _wrk_phase(port, path, bodies, c, seconds, args.warmup)
        return asyncio.run(_phase(port, path, bodies, c, seconds, args.warmup))
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="llmrec-serve-load-")
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--dataset", args.dataset,
           "--model", model, "--data-dir", data_dir] + (["--model-dir", args.model_dir] if args.model_dir else [])
    t0 = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, {0})) if args.pin else None
    proc = subprocess.Popen(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, preexec_fn=pin)
    if args.pin:
        _pin_client()
    try:
        health = _wait(port, proc)
        startup_s = time.perf_counter() - t0
        users = list(load(args.dataset, quiet=True).users.ids())
        rng = random.Random(0)
        rec_bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in rng.sample(users, min(1000, len(users)))]
        explain_bodies = [json.dumps({"user_id": u, "k": 10, "explain": True}).encode()
                          for u in rng.sample(users, 200)]
        load_before = os.getloadavg()
        phases = []
        for c in args.concurrency:
            for path, bodies in (("/_empty", rec_bodies), ("/_empty_async", rec_bodies),
                                 ("/recommend", rec_bodies)):
                r = phase(path, bodies, c, args.seconds)
                phases.append(r)
                print(f"{path:<14} c={c:<3} {r['throughput_rps']:>8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}", flush=True)
        r = phase("/recommend", explain_bodies, 1, args.seconds / 2)
        r["endpoint"] = "/recommend explain=true"
        phases.append(r)
        print(f"recommend+explain c=1 {r['throughput_rps']:.1f} req/s p50 {r['p50_ms']} ms", flush=True)
        if health["text_queries"]:  # the Python client: one process drives the three kinds at once
            words = ["space", "love", "war", "robots", "family", "music", "crime", "history", "magic", "sea"]
            text_bodies = [json.dumps({"text": f"films about {a} and {b}, number {j}", "k": 10}).encode()
                           for j, (a, b) in enumerate(zip(rng.choices(words, k=5000), rng.choices(words, k=5000)))]
            quiet = asyncio.run(_phase_get(port, "/health", args.seconds / 2, args.warmup))
            mixed = asyncio.run(_mixed(port, rec_bodies, text_bodies, 3, args.seconds, args.warmup))
            phases += [quiet, *mixed.values()]
            print(f"/health quiet p99 {quiet['p99_ms']:.2f} ms; with 3 text clients p99 "
                  f"{mixed['health']['p99_ms']:.2f} ms (user queries p99 {mixed['user']['p99_ms']:.2f} ms, "
                  f"text p50 {mixed['text']['p50_ms']:.1f} ms)", flush=True)
        load_after = os.getloadavg()
        engine_cost = json.loads((Path(data_dir) / "engine.json").read_text())
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)

    def get(path, c):
        return next(x for x in phases if x["endpoint"] == path and x["concurrency"] == c)

    top = max(args.concurrency)
    rec, empty = get("/recommend", top), get("/_empty", top)
    empty_async = get("/_empty_async", top)
    out = {
        "benchmark": "serve_load", "dataset": args.dataset, "model": health["model"],
        "items": health["items"], "users": health["users"],
        "client": client,
        "protocol": (f"uvicorn, 1 worker, httptools + asyncio loop, on 127.0.0.1; load from {client} in another "
                     f"process with N keep-alive connections each sending POST requests back to "
                     f"back; {args.warmup:g} s warm-up then {args.seconds:g} s measured per phase; "
                     f"/recommend bodies {{user_id, k: 10}} over 1,000 random users; /_empty and "
                     f"/_empty_async return {{}} and ignore the same bodies (sync and async route)"
                     + ("; server pinned to CPU 0, client to the others" if args.pin else "")),
        "phases": phases,
        "summary": {
            f"recommend_c{top}_p99_ms": rec["p99_ms"],
            f"recommend_c{top}_rps": rec["throughput_rps"],
            f"empty_c{top}_rps": empty["throughput_rps"],
            f"empty_async_c{top}_rps": empty_async["throughput_rps"],
            "recommend_over_empty": round(rec["throughput_rps"] / empty["throughput_rps"], 3),
            "recommend_over_empty_async": round(rec["throughput_rps"] / empty_async["throughput_rps"], 3),
            "target_p99_under_50ms": rec["p99_ms"] < 50.0,
            "target_half_of_empty": rec["throughput_rps"] >= 0.5 * empty["throughput_rps"],
            **({"health_p99_quiet_ms": quiet["p99_ms"], "health_p99_with_text_load_ms": mixed["health"]["p99_ms"],
                "user_p99_with_text_load_ms": mixed["user"]["p99_ms"],
                "text_p50_with_text_load_ms": mixed["text"]["p50_ms"]} if health["text_queries"] else {}),
        },
        "engine_alone": engine_cost,
        "server_startup_seconds": round(startup_s, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "command": "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, python {platform.python_version()}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
