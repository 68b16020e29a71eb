"""Encoding throughput of every encoder backend, measured side by side in one run on the same texts, and
the fast paths' agreement with the sentence-transformers reference. Writes
benchmarks/results/encoders_throughput.json and prints a Markdown table.

    python benchmarks/encoders.py                      # 1,000 ml-1m item texts, 2 interleaved rounds
    python benchmarks/encoders.py --n 300 --encoders minilm minilm-onnx
    LLMREC_THREADS=2 python benchmarks/encoders.py --n 400 --encoders minilm minilm-onnx-int8 minilm-l3-onnx \
        minilm-l3-onnx-int8 use-multilingual     # the large-catalogue candidates (run on a quiet machine)

Rounds are interleaved (every backend once per round) and the best round is kept, so that a machine
shared with other jobs disturbs every backend alike; no embedding cache is used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from llmrec import __version__, datasets, encoders
from llmrec.text import item_texts

RESULTS = Path(__file__).parent / "results"
DEFAULT = ["minilm", "minilm-onnx", "minilm-onnx-int8", "minilm-l3-onnx", "minilm-l3-onnx-int8", "e5-small",
           "use-multilingual", "smollm2"]
# each fast path against the model it approximates (the same weights at full precision)
REFERENCE = {"minilm-onnx": "minilm", "minilm-onnx-int8": "minilm", "minilm-l3-onnx-int8": "minilm-l3-onnx"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", default=DEFAULT)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--n", type=int, default=1000, help="texts to encode (the catalogue's first n)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "encoders_throughput.json")
    args = p.parse_args(argv)
    texts = item_texts(datasets.load(args.dataset).catalog)[:args.n]
    load_start = round(os.getloadavg()[0], 1)
    loaded, load_s = {}, {}
    for name in args.encoders:
        t0 = time.perf_counter()
        loaded[name] = encoders.get(name)
        load_s[name] = time.perf_counter() - t0
        loaded[name].encode(texts[:32], progress=False)  # warm up
    best: dict[str, float] = {n: float("inf") for n in loaded}
    vecs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, enc in loaded.items():
            t0 = time.perf_counter()
            vecs[name] = enc.encode(texts, progress=False)
            sec = time.perf_counter() - t0
            best[name] = min(best[name], sec)
            print(f"round {r + 1}: {name:<18} {len(texts) / sec:8.1f} texts/s", flush=True)
    rows = []
    for name, enc in loaded.items():
        row = {"encoder": name, "key": enc.key, "dim": enc.dim, "texts_per_second": round(len(texts) / best[name], 1),
               "best_seconds": round(best[name], 2), "load_seconds": round(load_s[name], 1)}
        ref = REFERENCE.get(name)
        if ref in vecs:
            cos = (vecs[name] * vecs[ref]).sum(1)
            row.update(reference=ref, cosine_vs_reference_min=round(float(cos.min()), 5),
                       cosine_vs_reference_mean=round(float(cos.mean()), 5),
                       speedup_vs_reference=round(best[ref] / best[name], 2))
        if "minilm" in best and name != "minilm":
            row["speedup_vs_minilm"] = round(best["minilm"] / best[name], 2)
        rows.append(row)
    out = {"what": "encoding throughput, texts/s, best of interleaved rounds, no cache",
           "texts": f"first {len(texts)} item texts of {args.dataset} (default template), "
                    f"mean {np.mean([len(t) for t in texts]):.0f} characters",
           "threads": int(os.environ.get("LLMREC_THREADS", 0)) or min(4, os.cpu_count() or 1),
           "rounds": args.rounds, "load_average_1min_at_start": load_start,
           "load_average_1min_at_end": round(os.getloadavg()[0], 1), "results": rows,
           "large_catalogue_default": encoders.auto(10 ** 6),
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
           "date": dt.date.today().isoformat(), "llmrec_version": __version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared), python {platform.python_version()}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    print("\n| encoder | dim | texts/s | vs minilm | cosine vs its reference (min / mean) |\n|---|---|---|---|---|")
    for r in rows:
        cos = (f"{r['cosine_vs_reference_min']:.4f} / {r['cosine_vs_reference_mean']:.4f} ({r['reference']})"
               if "cosine_vs_reference_min" in r else "")
        sp = f"{r['speedup_vs_minilm']:.2f}x" if "speedup_vs_minilm" in r else ""
        print(f"| {r['encoder']} | {r['dim']} | {r['texts_per_second']:.1f} | {sp} | {cos} |")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
