"""Cost growth with the catalogue: synthetic data sets of 10k, 100k and 1M items (10 events per item, half as
many users as items), and for itemknn, zero-shot and sasrec: fit and evaluation seconds, peak memory, query
p50 / p99, plus zero-shot's encoding rate and index build. Each (model, size) runs in its own process, so
peak memory is its own. Writes benchmarks/results/scale.json and benchmarks/results/curves/scale.png.

    python benchmarks/scale.py                                   # everything (about an hour on 2 cores)
    python benchmarks/scale.py --items 10000 100000 --models itemknn

Evaluation is the project's protocol (full ranking over every item, history excluded) on a fixed random
sample of test users (``--eval-users``, seed 0): the cost of ranking every item for one user is what grows
with the catalogue. Query latency: one ``recommend`` call per user (k=10) for ``--queries`` users, after a
warm-up; sasrec and zero-shot search an index above their thresholds (sasrec: ``ANN_ABOVE`` items;
zero-shot: ``--zeroshot-index``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
MODELS = ("itemknn", "zero-shot", "sasrec")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(model_name: str, n_items: int, args) -> dict:
    """The measurements of one model on one catalogue size, in this process."""
    from llmrec import datasets, evaluate, models, split
    n_users = max(2000, n_items // 2)
    name = f"synthetic-{n_users}-{n_items}-0-{10 * n_items}"
    t0 = time.perf_counter()
    ds = datasets.load(name, quiet=True)
    sp = split.leave_one_out(ds)
    out: dict = {"model": model_name, "items": ds.n_items, "users": ds.n_users,
                 "interactions": len(ds.interactions), "dataset": name,
                 "data_seconds": round(time.perf_counter() - t0, 2)}
    config: dict = {}
    if model_name == "sasrec":
        config = {"threads": 1, "epochs": args.sasrec_epochs, "max_minutes": args.sasrec_minutes,
                  "eval_users": 1000, "patience": 100}
    elif model_name == "itemknn":
        config = {"threads": 1}
    elif model_name == "zero-shot":
        config = {"index": args.zeroshot_index, "encoder": args.zeroshot_encoder, "cache": False}  # encode
    model = models.get(model_name, config)
    t0 = time.perf_counter()
    model.fit(ds, sp, progress=False)
    out["fit_seconds"] = round(time.perf_counter() - t0, 2)
    out["config"] = {k: v for k, v in model.config.__dict__.items() if isinstance(v, (int, float, str, bool))}
    if model_name == "zero-shot":
        out["encoder"] = model.encoder_name
        out["encode_seconds"] = round(model.encode_seconds, 2)
        out["encode_items_per_s"] = round(ds.n_items / max(model.encode_seconds, 1e-9), 1)
        out["cache_hits"] = int(model.cache_hits)
        out.update(_index_cost(model.item_vectors, args.zeroshot_index))
    extra = model.benchmark_extra()
    out.update({k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool, dict))})
    users = np.sort(np.random.default_rng(0).choice(sp.test_users, min(args.eval_users, len(sp.test_users)),
                                                    replace=False))
    res = evaluate.evaluate(model, sp, ds.n_users, ds.n_items, ks=(10,), users=users, progress=False)
    out["eval_seconds"] = round(res.seconds, 2)
    out["eval_users"] = res.n_users
    out["eval_seconds_per_user"] = round(res.seconds / max(1, res.n_users), 5)
    out["metrics"] = {k: round(v, 4) for k, v in res.metrics.items() if k in ("HR@10", "NDCG@10")}
    model.set_histories(sp.test_context.histories(ds.n_users))
    ids = ds.users.ids(users[:args.queries + 20])
    lat = []
    for j, u in enumerate(ids):
        t = time.perf_counter()
        model.recommend(users=[u], k=10)
        if j >= 20:  # warm-up: lazily built indexes and caches
            lat.append(time.perf_counter() - t)
    ms = np.array(lat) * 1e3
    out["query_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
    out["query_p99_ms"] = round(float(np.percentile(ms, 99)), 3)
    out["peak_memory_mb"] = round(peak_mb(), 1)
    return out


def _index_cost(vectors: np.ndarray, kind: str) -> dict:
    """Build seconds, memory and query time of the index kind over the catalogue's vectors, and its
    recall@10 against exact search on 200 item vectors used as queries."""
    from llmrec import index as vindex
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    idx = vindex.make(kind, "cosine").add(vectors)
    build = time.perf_counter() - t0
    rss1 = _rss_mb()
    q = vectors[np.random.default_rng(1).choice(len(vectors), min(200, len(vectors)), replace=False)]
    exact_ids, _ = vindex.make("exact", "cosine").add(vectors).search(q, 10)
    lat = []
    for row in q:
        t = time.perf_counter()
        ids, _ = idx.search(row[None, :], 10)
        lat.append(time.perf_counter() - t)
    got, _ = idx.search(q, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact_ids)]))
    ms = np.array(lat) * 1e3
    return {"index": kind, "index_build_seconds": round(build, 2), "index_memory_mb": round(rss1 - rss0, 1),
            "index_query_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "index_query_p99_ms": round(float(np.percentile(ms, 99)), 3),
            "index_recall_at_10": round(recall, 4)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("fit_seconds", "fit s"), ("eval_seconds_per_user", "evaluation s per user (all items ranked)"),
              ("peak_memory_mb", "peak memory MB"), ("query_p99_ms", "recommend p99 ms"),
              ("encode_items_per_s", "zero-shot: items encoded per s"),
              ("index_build_seconds", "zero-shot: index build s")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.ravel(), panels):
        for m in MODELS:
            pts = sorted((r["items"], r[key]) for r in rows if r["model"] == m and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("items")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def growth(rows: list[dict]) -> dict:
    """Per model and measure, the exponent b of cost ~ items^b between the smallest and largest size (1 is
    linear, 2 would be items^2)."""
    out: dict = {}
    for m in MODELS:
        rs = sorted((r for r in rows if r["model"] == m), key=lambda r: r["items"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        for key in ("fit_seconds", "eval_seconds_per_user", "peak_memory_mb", "query_p99_ms", "encode_seconds",
                    "index_build_seconds", "index_query_p99_ms"):
            if lo.get(key) and hi.get(key):
                out.setdefault(m, {})[key] = round(float(np.log(hi[key] / lo[key]) / np.log(hi["items"] / lo["items"])),
                                                   2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--eval-users", type=int, default=1000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--zeroshot-index", default="hnsw")
    p.add_argument("--zeroshot-encoder", default="auto",
                   help="auto picks by the catalogue's language and size (encoders.auto)")
    p.add_argument("--sasrec-epochs", type=int, default=1)
    p.add_argument("--sasrec-minutes", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    p.add_argument("--update", action="store_true",
                   help="keep the rows of --out that this run does not measure again (a partial re-run)")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "ITEMS"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        args.result.write_text(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return 0
    rows, failures = [], []
    load0 = os.getloadavg()
    for n in args.items:
        for m in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                result = Path(tmp) / "r.json"
                cmd = [sys.executable, __file__, "--one", m, str(n), "--result", str(result),
                       "--eval-users", str(args.eval_users), "--queries", str(args.queries),
                       "--zeroshot-index", args.zeroshot_index, "--zeroshot-encoder", args.zeroshot_encoder,
                       "--sasrec-epochs", str(args.sasrec_epochs),
                       "--sasrec-minutes", str(args.sasrec_minutes)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True)
                if proc.returncode != 0 or not result.exists():
                    failures.append({"model": m, "items": n, "returncode": proc.returncode,
                                     "stderr": proc.stderr[-2000:]})
                    print(f"{m:>9} {n:>9,} items: FAILED ({proc.returncode})\n{proc.stderr[-800:]}", flush=True)
                    continue
                r = json.loads(result.read_text())
                r["wall_seconds"] = round(time.perf_counter() - t0, 1)
                r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                rows.append(r)
                enc = f"  encode {r['encode_items_per_s']:.0f}/s" if "encode_items_per_s" in r else ""
                print(f"{m:>9} {n:>9,} items: fit {r['fit_seconds']:8.1f} s  eval "
                      f"{r['eval_seconds_per_user'] * 1e3:7.2f} ms/user  peak {r['peak_memory_mb']:7.0f} MB  "
                      f"query p99 {r['query_p99_ms']:7.2f} ms{enc}", flush=True)
    commands = ["python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])]
    if args.update and args.out.exists():
        old = json.loads(args.out.read_text())
        done = {(r["model"], r["dataset"]) for r in rows}
        rows = [r for r in old["rows"] if (r["model"], r["dataset"]) not in done] + rows
        rows.sort(key=lambda r: (r["items"], MODELS.index(r["model"])))
        commands = old.get("commands", [old.get("command")]) + commands
    out = {"benchmark": "scale", "rows": rows, "failures": failures, "growth_exponents": growth(rows),
           "protocol": ("synthetic-U-I-0-E with U = max(2000, I/2) users and E = 10 I events; leave-one-out; "
                        f"evaluation: full ranking over every item for {args.eval_users} test users (seed 0); "
                        f"query latency: {args.queries} single recommend calls after 20 warm-up calls; "
                        "each (model, size) in its own process"),
           "commands": commands,
           "date": dt.date.today().isoformat(), "loadavg_before": [round(x, 2) for x in load0],
           "cpus": os.cpu_count(), "machine": f"{platform.machine()}, python {platform.python_version()}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    plot(rows, args.out.parent / "curves" / f"{args.out.stem}.png")
    print(json.dumps(out["growth_exponents"], indent=1))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
