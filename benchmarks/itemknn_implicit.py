"""llmrec's itemknn against implicit's CosineRecommender with the same neighbour count, side by side, on
the same split (llmrec.split.leave_one_out) and through the same full-ranking evaluator (every item with
an interaction ranked, the history excluded), so the candidate set and the ranking rule are identical
and only the similarities and their scoring differ. Each (data set, library) runs in its own process,
so peak memory (max RSS, data loading included) does not mix. implicit is a benchmark-only dependency:
``pip install -e .[bench]``.

implicit's all_pairs_knn counts the item itself among its K neighbours (the diagonal is kept; it only
scores items already in the history, which are excluded), so K = N + 1 gives it the same N other items
as llmrec's ``neighbors=N``; the literal K = N is run too.

    OMP_NUM_THREADS=1 python benchmarks/itemknn_implicit.py --dataset ml-1m book-crossing --threads 1

llmrec's similarity kernel is compiled by numba on first use and cached on disk; the script compiles it
before the timed runs (the seconds it took are in the results file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _SimilarityScorer:
    """An item-item similarity matrix as a scorer for llmrec's evaluator: a history's rows summed,
    exactly as llmrec's itemknn scores (a repeated item counts twice)."""

    def __init__(self, sim):
        self.sim = sim.tocsr().astype("float32")

    def score_histories(self, histories):
        import numpy as np
        import scipy.sparse as sp
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
        h = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)),
                          shape=(len(histories), self.sim.shape[0]))
        return (h @ self.sim).toarray()


def worker(library: str, dataset: str, neighbors: int, threads: int) -> dict:
    """Load, split, fit and evaluate one library's model in this process; figures as a dict."""
    import numpy as np
    import scipy.sparse as sp

    from llmrec import datasets, evaluate, models, split
    ds = datasets.load(dataset, quiet=True)
    sp_ = split.leave_one_out(ds)
    loaded_mb = peak_mb()
    t0 = time.perf_counter()
    if library == "llmrec":
        model = models.get("itemknn", neighbors=neighbors, threads=threads).fit(ds, sp_, progress=False)
        scorer, nnz, config = model, model.sim.nnz, {"neighbors": neighbors, "shrinkage": 0.0, "threads": threads}
    else:
        from implicit.nearest_neighbours import CosineRecommender
        k = neighbors + (1 if library == "implicit-k+1" else 0)
        x = sp.csr_matrix((np.ones(len(sp_.train), np.float32), (sp_.train.user, sp_.train.item)),
                          shape=(ds.n_users, ds.n_items))
        x.sum_duplicates()
        x.data[:] = 1.0  # binary, as llmrec's itemknn sees it
        rec = CosineRecommender(K=k, num_threads=threads)
        rec.fit(x, show_progress=False)
        scorer, config = _SimilarityScorer(rec.similarity), {"K": k, "num_threads": threads}
        nnz = int(rec.similarity.nnz)
    fit_s = time.perf_counter() - t0
    res = evaluate.evaluate(scorer, sp_, ds.n_users, ds.n_items, ks=(10, 20), stage="test", progress=False)
    return {"library": library, "dataset": dataset, "config": config, "similarity_nnz": nnz,
            "metrics": {k: round(v, 4) for k, v in res.metrics.items()},
            "metrics_exact": {k: res.metrics[k] for k in ("HR@10", "NDCG@10")},
            "users_evaluated": res.n_users, "candidates": res.n_candidates,
            "fit_seconds": round(fit_s, 2), "eval_seconds": round(res.seconds, 2),
            "fit_plus_eval_seconds": round(fit_s + res.seconds, 2),
            "peak_memory_mb": round(peak_mb(), 1), "memory_after_loading_mb": round(loaded_mb, 1),
            "protocol": res.protocol}


def run_in_subprocess(library: str, dataset: str, neighbors: int, threads: int) -> dict:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--worker", library, dataset, str(neighbors), str(threads)],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_wall_seconds"] = round(time.perf_counter() - t0, 2)
    load_after = os.getloadavg()
    r["load_average_before_after"] = [round(load_before[0], 2), round(load_after[0], 2)]
    r["load_average_1_5_15_before"] = [round(v, 2) for v in load_before]
    r["load_average_1_5_15_after"] = [round(v, 2) for v in load_after]
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", default=["ml-1m", "book-crossing"])
    p.add_argument("--neighbors", type=int, default=None, help="default: llmrec's itemknn default")
    p.add_argument("--libraries", nargs="+", default=["llmrec", "implicit-k+1", "implicit"],
                   choices=["llmrec", "implicit-k+1", "implicit"])
    p.add_argument("--out", type=Path, default=RESULTS / "itemknn_vs_implicit.json")
    p.add_argument("--threads", type=int, default=1, help="threads for both libraries' fit (default 1)")
    p.add_argument("--worker", nargs=4, metavar=("LIBRARY", "DATASET", "NEIGHBORS", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        lib, ds, n, t = args.worker
        print(json.dumps(worker(lib, ds, int(n), int(t))), flush=True)
        return 0
    import implicit

    from llmrec import __version__
    from llmrec.models.itemknn import ItemKNNConfig, warm_up
    n = ItemKNNConfig().neighbors if args.neighbors is None else args.neighbors
    compile_s = warm_up()  # numba compiles the kernel once and caches it on disk: not timed in the runs
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    runs, load_start = [], os.getloadavg()
    for ds in args.dataset:
        for lib in args.libraries:
            r = run_in_subprocess(lib, ds, n, args.threads)
            runs.append(r)
            print(f"{ds:>14} {lib:<13} HR@10 {r['metrics']['HR@10']:.4f} NDCG@10 {r['metrics']['NDCG@10']:.4f} "
                  f"fit {r['fit_seconds']:.1f}s eval {r['eval_seconds']:.1f}s peak {r['peak_memory_mb']:.0f} MB "
                  f"(load {r['load_average_before_after']})", flush=True)
    comparison = {}
    for ds in args.dataset:
        ours = next((r for r in runs if r["dataset"] == ds and r["library"] == "llmrec"), None)
        for r in runs:
            if ours is None or r["dataset"] != ds or r is ours:
                continue
            comparison[f"{ds}: llmrec - {r['library']}"] = {
                "HR@10": round(ours["metrics_exact"]["HR@10"] - r["metrics_exact"]["HR@10"], 5),
                "NDCG@10": round(ours["metrics_exact"]["NDCG@10"] - r["metrics_exact"]["NDCG@10"], 5),
                "fit_plus_eval_seconds": round(ours["fit_plus_eval_seconds"] - r["fit_plus_eval_seconds"], 2),
                "fit_seconds": round(ours["fit_seconds"] - r["fit_seconds"], 2),
                "peak_memory_mb": round(ours["peak_memory_mb"] - r["peak_memory_mb"], 1)}
    out = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "neighbors": n, "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                                       "llmrec threads": args.threads, "implicit num_threads": args.threads},
           "llmrec_kernel_compile_seconds": compile_s,
           "how": __doc__.strip().split("\n\n")[0].replace("\n", " "),
           "llmrec_version": __version__, "implicit_version": implicit.__version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
           "load_average_1_5_15_start_end": [[round(v, 2) for v in load_start],
                                             [round(v, 2) for v in os.getloadavg()]],
           "runs": runs, "llmrec_minus_other": comparison}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
