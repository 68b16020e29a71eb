"""Render benchmarks/results/*.json as a Markdown table and write it into README.md between the markers
``<!-- results:start -->`` and ``<!-- results:end -->``.

    python benchmarks/table.py           # rewrite the README table
    python benchmarks/table.py --print   # print it only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
ORDER = ["popular", "itemknn"]


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def render(results_dir: Path = ROOT / "benchmarks" / "results") -> str:
    rows = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    rows = [r for r in rows if "metrics" in r]  # e.g. encoders_throughput.json is another kind of result
    rows.sort(key=lambda r: (r["dataset"], ORDER.index(r["model"]) if r["model"] in ORDER else 99,
                             r["model"]))
    head = ("| dataset | model | HR@10 | NDCG@10 | HR@20 | NDCG@20 | ILD@10 | Novelty@10 | Head@10 | users | fit s "
            "| eval s | peak MB | notes |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m = r["metrics"]
        notes = [r["notes"]] if r.get("notes") else []
        if r.get("config", {}).get("decoding") == "exhaustive":
            notes.append("decoding=exhaustive: every item scored by its code's log-probability, no beam search "
                         "(invalid items impossible)")
        if "users_sample" in r:
            us = r["users_sample"]
            notes.append(f"fixed random sample of {us['size']} of {us['of_test_users']} users (seed {us['seed']})")
        if "invalid_rate" in r:
            notes.append(f"invalid_rate {r['invalid_rate']:.3f} (unconstrained "
                         f"{r.get('invalid_rate_unconstrained', float('nan')):.3f})")
        if "layers_used" in r and r.get("train_seconds") is not None:
            epochs = r.get("training") or {}  # every epoch's training seconds, resumed calls included
            trained = (f"{epochs['epochs_run']} epochs in {epochs['train_seconds']:.0f} s" if epochs
                       else "no training")
            notes.append(f"{r['layers_used']} LM layers, {trained}, ranking p50 {r['latency_ms_p50']:.0f} ms a user")
        if r.get("stopped_by_time_budget"):
            notes.append("training cut by its time budget")
        workers = [m["worker_peak_memory_mb"] for m in r.get("members", []) if "worker_peak_memory_mb" in m]
        if workers:
            notes.append(f"members trained in {len(workers)} worker processes, peak MB "
                         + " / ".join(f"{w:.0f}" for w in workers))
        if r.get("selection"):
            sel = r["selection"]
            notes.append(f"{sel['key']}={sel['chosen']} chosen on validation NDCG@10 among "
                         f"{', '.join(sel['valid_NDCG@10'])} (peak MB over every candidate)")
        if r.get("item_vectors"):
            notes.append(f"ILD over {r['item_vectors']}")
        if r.get("note"):
            notes.append("see `note` in its JSON")
        notes = "; ".join(notes)
        lines.append(f"| {r['dataset']} | {r['model']} | {_fmt(m.get('HR@10'))} | {_fmt(m.get('NDCG@10'))} | "
                     f"{_fmt(m.get('HR@20'))} | {_fmt(m.get('NDCG@20'))} | {_fmt(m.get('ILD@10'))} | "
                     f"{_fmt(m.get('Novelty@10'))} | {_fmt(m.get('Head@10'))} | {r.get('users_evaluated', '')} | "
                     f"{r['fit_seconds']:.1f} | {r['eval_seconds']:.1f} | {r['peak_memory_mb']:.0f} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--print", action="store_true")
    args = p.parse_args()
    table = render()
    if args.print:
        print(table)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:a] + "\n" + table + "\n" + text[b:])


if __name__ == "__main__":
    main()
