"""Vector indexes at catalogue scale: build seconds, memory, recall@10 against the exact index and query
latency, on real text embeddings and on synthetic vectors. Writes benchmarks/results/index.json.

    OMP_NUM_THREADS=1 python benchmarks/index.py                 # real + synthetic 10k, 100k, 1M
    OMP_NUM_THREADS=1 python benchmarks/index.py --sizes 10000 100000 --skip-real
    OMP_NUM_THREADS=1 python benchmarks/index.py --milvus --zero-shot ml-1m --sizes 100000 \
        --out benchmarks/results/index_milvus.json                 # the milvus kind (Milvus Lite)

Real: every Book-Crossing item text (title, year, author, publisher) encoded with the large-catalogue
encoder (``encoders.auto``), streamed into ``cache_dir()/bench/book-crossing.<encoder>.npy`` (not in git;
a rerun reads it back). Queries: ``--queries`` pooled users, each the normalised mean of two random items'
vectors (what a zero-shot user vector is). Synthetic: 384-d vectors around 1,000 Gaussian centres.
Recall@10 is the share of the exact top 10 found; latency p50/p99 is per single query, timed one by one.
Memory: the index's size (its FAISS file, or the exact index's array), the growth of this process's
resident memory over the build, and its peak RSS (which includes the vectors and the exact index).

``--milvus``: the milvus kind instead (a Milvus Lite store in a temporary folder; FLAT, HNSW and IVF_FLAT
collections), and per set the two ways of excluding a history (``overfetch``, ``filter``) at several
history lengths: ms per query (20 queries, one a call) and recall@10 against the exact index with the same
exclusion. ``--zero-shot DATASET``: the real set is that data set's zero-shot item vectors (the default
encoder) and the queries its users' vectors with their own histories excluded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from llmrec import __version__, encoders, index, milvus_index

RESULTS = Path(__file__).parent / "results"
HNSW_EF = (64, 128, 256, 512, 1024)
NPROBE = (8, 16, 32, 64, 128, 256)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def real_embeddings(encoder: str) -> np.ndarray:
    """Book-Crossing's item texts encoded with ``encoder``, memory-mapped from the data cache."""
    from llmrec import datasets
    from llmrec.text import item_texts
    path = datasets.cache_dir() / "bench" / f"book-crossing.{encoder}.npy"
    if not path.exists():
        texts = item_texts(datasets.load("book-crossing").catalog)
        enc = encoders.cached(encoder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), enc.dim))
        enc.encode(texts, out=out, progress=True)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def synthetic(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x[s:s + m] = centres[rng.integers(0, 1000, m)] + 0.5 * rng.standard_normal((m, d)).astype(np.float32)
    return encoders.l2_normalize(x, inplace=True)


def pooled_queries(x: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(x), (n, 2))
    return encoders.l2_normalize(x[pairs[:, 0]] + x[pairs[:, 1]])


def latency_ms(ix: index.Index, q: np.ndarray, n: int = 200) -> tuple[float, float]:
    times = []
    for row in q[:n]:
        t0 = time.perf_counter()
        ix.search(row[None], 10)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def index_mb(ix: index.Index) -> float:
    """The index's size: its array (exact) or its FAISS file, written to a temporary file (serialising
    it in memory would double a 1M-vector index in this process's peak)."""
    if isinstance(ix, index.ExactIndex):
        return ix.vectors.nbytes / 2 ** 20
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return ix.save(Path(tmp) / "ix").stat().st_size / 2 ** 20


def measure(name: str, x: np.ndarray, q: np.ndarray, exact_ids: np.ndarray, kind: str, build: dict,
            sweep: tuple[str, tuple[int, ...]] | None) -> list[dict]:
    """Build once with ``build`` params, then search at each value of the swept search parameter."""
    gc.collect()
    rss0, t0 = rss_mb(), time.perf_counter()
    ix = index.make(kind, **build).add(x)
    build_s, rss_growth = time.perf_counter() - t0, rss_mb() - rss0
    rows = []
    for value in (sweep[1] if sweep else (None,)):
        if sweep:
            ix.tune(**{sweep[0]: value})
        ids, _ = ix.search(q, 10)
        p50, p99 = latency_ms(ix, q)
        row = {"set": name, "n": len(x), "kind": kind, **build, **({sweep[0]: value} if sweep else {}),
               "factory": ix.factory_string(len(x), x.shape[1]) if kind != "exact" else "exact",
               "build_seconds": round(build_s, 1), "index_mb": round(index_mb(ix), 1),
               "rss_growth_during_build_mb": round(rss_growth),
               "estimate_mb": round(index.estimate_bytes(
                   kind, len(x), x.shape[1], build.get("hnsw_m", 32), build.get("quantizer", "flat"),
                   nlist=ix.nlist_for(len(x)) if kind == "ivf" else 1) / 2 ** 20, 1),
               "recall_at_10": round(index.recall_at_k(ids, exact_ids), 4),
               "query_ms_p50": round(p50, 3), "query_ms_p99": round(p99, 3),
               "peak_rss_mb": round(peak_rss_mb()), "load_average_1min": round(os.getloadavg()[0], 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    del ix
    return rows


def run_set(name: str, x: np.ndarray, n_queries: int, full_sweep: bool, hnsw: bool = True) -> list[dict]:
    x = np.ascontiguousarray(x, np.float32)
    q = pooled_queries(x, n_queries)
    t0 = time.perf_counter()
    exact = index.make("exact").add(x)
    exact_ids, _ = exact.search(q, 10)
    p50, p99 = latency_ms(exact, q, 50)
    rows = [{"set": name, "n": len(x), "kind": "exact", "factory": "exact",
             "build_seconds": 0.0, "index_mb": round(index_mb(exact), 1),
             "exact_search_seconds_all_queries": round(time.perf_counter() - t0, 1),
             "exact_batch_queries": exact.batch_size, "recall_at_10": 1.0,
             "query_ms_p50": round(p50, 3), "query_ms_p99": round(p99, 3), "peak_rss_mb": round(peak_rss_mb()),
             "load_average_1min": round(os.getloadavg()[0], 1)}]
    print(json.dumps(rows[0]), flush=True)
    del exact
    ef = HNSW_EF if full_sweep else (128, 256)
    npr = NPROBE if full_sweep else (16, 32)
    if hnsw:
        rows += measure(name, x, q, exact_ids, "hnsw", {"hnsw_m": 32, "ef_construction": 80},
                        ("ef_search", ef))
    rows += measure(name, x, q, exact_ids, "ivf", {"quantizer": "flat"}, ("nprobe", npr))
    rows += measure(name, x, q, exact_ids, "ivf", {"quantizer": "sq8"}, ("nprobe", npr))
    return rows


MILVUS_BUILDS = (("FLAT", {}, None), ("HNSW", {"M": 32, "efConstruction": 80}, ("ef", (64, 256))),
                 ("IVF_FLAT", {}, ("nprobe", (16, 64))))
HISTORY_LENGTHS = (10, 100, 1000, 10000)


def milvus_set(name: str, x: np.ndarray, q: np.ndarray, exclude: list | None, latency_n: int,
               types: tuple[str, ...], exclusion_n: int = 20) -> list[dict]:
    """The milvus kind on one set: build seconds, recall@10 against exact (with ``exclude`` when given),
    per-query latency; then overfetch against filter exclusion on the FLAT collection."""
    import shutil
    import tempfile
    x = np.ascontiguousarray(x, np.float32)
    exact = index.make("exact").add(x)
    exact_ids, _ = exact.search(q, 10, exclude=exclude)
    p50, p99 = latency_ms(exact, q, min(50, latency_n))
    rows = [{"set": name, "n": len(x), "kind": "exact", "recall_at_10": 1.0, "query_ms_p50": round(p50, 3),
             "query_ms_p99": round(p99, 3), "load_average_1min": round(os.getloadavg()[0], 1)}]
    print(json.dumps(rows[0]), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="llmrec-bench-milvus-"))
    try:
        for index_type, build, sweep in MILVUS_BUILDS:
            if index_type not in types:
                continue
            build = dict(build, nlist=int(4 * np.sqrt(len(x)))) if index_type == "IVF_FLAT" else build
            t0 = time.perf_counter()
            ix = index.make("milvus", uri=tmp / f"{index_type}.db", index_type=index_type, build_params=build)
            ix.add(x)
            if index_type != "FLAT":
                milvus_index.wait_for_lite_indexes(ix)
            build_s = time.perf_counter() - t0
            for value in (sweep[1] if sweep else (None,)):
                ix.search_params = {sweep[0]: value} if sweep else {}
                t0 = time.perf_counter()
                ids, _ = ix.search(q, 10, exclude=exclude)
                batch_ms = (time.perf_counter() - t0) * 1000 / len(q)
                p50, p99 = latency_ms(ix, q, latency_n)
                row = {"set": name, "n": len(x), "kind": "milvus", "index_type": index_type, **build,
                       **({sweep[0]: value} if sweep else {}), "build_seconds": round(build_s, 1),
                       "recall_at_10": round(index.recall_at_k(ids, exact_ids), 4),
                       "histories_excluded": exclude is not None,
                       "batch_ms_per_query": round(batch_ms, 2), "query_ms_p50": round(p50, 3),
                       "query_ms_p99": round(p99, 3), "peak_rss_mb": round(peak_rss_mb()),
                       "load_average_1min": round(os.getloadavg()[0], 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
            if index_type == "FLAT" and exclusion_n:
                rows += exclusion_rows(name, ix, exact, q, exclusion_n)
            ix.close()
            shutil.rmtree(tmp / f"{index_type}.db", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def exclusion_rows(name: str, ix, exact: index.ExactIndex, q: np.ndarray, n_queries: int = 20) -> list[dict]:
    """Overfetch against filter at each history length: ms per query (one a call), recall@10 against
    exact search with the same exclusion (1.0 = exclusion exact)."""
    rng = np.random.default_rng(2)
    rows = []
    for length in HISTORY_LENGTHS:
        if length >= len(exact.vectors) - 10:
            continue
        ex = [rng.choice(len(exact.vectors), length, replace=False) for _ in range(n_queries)]
        want, _ = exact.search(q[:n_queries], 10, exclude=ex)
        for mode in ("overfetch", "filter"):
            ix.exclusion = mode
            got, times = [], []
            for r in range(n_queries):
                t0 = time.perf_counter()
                got.append(ix.search(q[r:r + 1], 10, exclude=ex[r:r + 1])[0][0])
                times.append((time.perf_counter() - t0) * 1000)
            row = {"set": name, "n": len(exact.vectors), "kind": "milvus", "index_type": ix.index_type,
                   "exclusion": mode, "history_length": length, "queries": n_queries,
                   "recall_at_10": round(index.recall_at_k(np.stack(got), want), 4),
                   "query_ms_p50": round(float(np.percentile(times, 50)), 2),
                   "query_ms_p99": round(float(np.percentile(times, 99)), 2),
                   "load_average_1min": round(os.getloadavg()[0], 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    ix.exclusion = "auto"
    return rows


def zero_shot_set(dataset: str, n_queries: int) -> tuple[np.ndarray, np.ndarray, list, str]:
    """A data set's zero-shot item vectors (default encoder), and ``n_queries`` users' vectors with
    their histories."""
    from llmrec import datasets, models
    ds = datasets.load(dataset)
    m = models.get("zero-shot").fit(ds, progress=False)
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(ds.n_users, min(n_queries, ds.n_users), replace=False))
    hist = [m._histories[u] for u in users]
    return m.item_vectors, m.user_vectors(hist), hist, m.encoder_name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--encoder", default=encoders.auto(10 ** 6))
    p.add_argument("--hnsw-max", type=int, default=10 ** 7,
                   help="synthetic sets above this size skip HNSW (its single-thread build is the slow part)")
    p.add_argument("--out", type=Path, default=RESULTS / "index.json")
    p.add_argument("--milvus", action="store_true", help="measure the milvus kind (see above)")
    p.add_argument("--milvus-types", nargs="*", default=["FLAT", "HNSW", "IVF_FLAT"])
    p.add_argument("--zero-shot", metavar="DATASET", help="with --milvus: the real set from this data set")
    p.add_argument("--latency-queries", type=int, default=200, help="queries timed one by one")
    p.add_argument("--exclusion-queries", type=int, default=20,
                   help="with --milvus: queries per history length and exclusion mode (0: none)")
    args = p.parse_args(argv)
    rows: list[dict] = []
    if args.milvus:
        return milvus_main(args, argv)
    if not args.skip_real:
        rows += run_set(f"book-crossing {args.encoder}", real_embeddings(args.encoder), args.queries, True)
    for n in args.sizes:
        rows += run_set(f"synthetic-{n}", synthetic(n), args.queries, False, hnsw=n <= args.hnsw_max)
    return write(args, argv, rows, "vector indexes: build seconds, index MB, recall@10 against exact, per-query "
                 "latency", f"{args.queries} pooled users (normalised mean of two random items' vectors); "
                 "latency over the first 200 (exact: 50), one query a call")


def milvus_main(args, argv) -> int:
    rows: list[dict] = []
    types = tuple(args.milvus_types)
    queries = f"{args.queries} pooled users (normalised mean of two random items' vectors)"
    if args.zero_shot:
        x, q, hist, enc = zero_shot_set(args.zero_shot, args.queries)
        rows += milvus_set(f"{args.zero_shot} zero-shot {enc}", x, q, hist, args.latency_queries, types,
                           args.exclusion_queries)
        queries = (f"{args.zero_shot}: {len(q)} users' zero-shot vectors with their histories excluded; "
                   f"synthetic sets: " + queries)
    for n in args.sizes:
        x = synthetic(n)
        rows += milvus_set(f"synthetic-{n}", x, pooled_queries(x, args.queries), None,
                           args.latency_queries, types, args.exclusion_queries)
    return write(args, argv, rows, "the milvus index kind on Milvus Lite (in-process, pure Python with FAISS "
                 "segment indexes): build seconds, recall@10 against exact, per-query latency, and exclusion "
                 "by overfetch vs filter", queries + f"; latency over the first {args.latency_queries}, one "
                 "query a call; batch_ms_per_query: every query in one search call")


def write(args, argv, rows: list[dict], what: str, queries: str) -> int:
    out = {"what": what,
           "queries": queries,
           "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count(), "results": rows,
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
           "date": dt.date.today().isoformat(), "llmrec_version": __version__,
           "load_average_1min_at_end": round(os.getloadavg()[0], 1),
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared), python {platform.python_version()}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
