"""Run models on named data sets with the leave-one-out, full-ranking protocol and write one JSON file per
(dataset, model) under benchmarks/results/. Then regenerate the README table with benchmarks/table.py.

    python benchmarks/run.py --dataset ml-100k ml-1m --model popular itemknn
    python benchmarks/run.py --dataset ml-1m --model sasrec --set sasrec.epochs=50
    python benchmarks/run.py --dataset ml-100k --model itemknn --select itemknn.neighbors=20,40,80,0
    python benchmarks/run.py --dataset ml-1m --model popular --beyond   # + ILD, novelty, popularity

``--select MODEL.KEY=V1,V2,...`` is a grid search (``llmrec.tune.select``, the validation score
``llmrec tune`` uses): the model is fitted once per value and the one with the highest validation NDCG@10
(the first listed on a tie) is fitted again and tested; only its test figures are written, beside every
value's validation NDCG@10. The test split is read for the chosen value only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import sys
from pathlib import Path

from llmrec import __version__, datasets, evaluate, models, pipeline, split, tune
from llmrec.config import parse_overrides

RESULTS = Path(__file__).parent / "results"


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sample_users(sp, n: int, seed: int):
    """A fixed random sample of ``n`` test users (internal indices, sorted), or None for all."""
    if not n or n >= len(sp.test_users):
        return None
    import numpy as np
    return np.sort(np.random.default_rng(seed).choice(sp.test_users, n, replace=False))


def with_catalogue(ds, path: Path):
    """``ds`` with its catalogue replaced by the file's, which must hold the same item ids (any order)."""
    from dataclasses import replace

    from llmrec.data import Catalog, load_catalog
    from llmrec.errors import DataError
    cat = load_catalog(path)
    ids = list(ds.catalog.ids.ids())
    if set(cat.ids.ids()) != set(ids):
        raise DataError(f"the catalogue's item ids are not those of {ds.name}", path=str(path))
    frame = cat.frame.set_index("item_id").loc[ids].reset_index()
    out = replace(ds, catalog=Catalog(frame=frame, ids=ds.catalog.ids.copy()))
    out.meta = {**ds.meta, "items_file": str(path)}
    return out


def run_one(ds, sp, model_name: str, overrides: dict, ks=(10, 20), tag: str | None = None,
            command: str = "", sample: int = 0, sample_seed: int = 0,
            checkpoint_dir: Path | None = None, beyond: bool = False) -> dict:
    model = models.get(model_name, overrides)
    users = sample_users(sp, sample, sample_seed)
    folder = checkpoint_dir / f"{ds.name}__{tag or model_name}" if checkpoint_dir is not None else None
    load_before = os.getloadavg()
    fit_s = pipeline.fit_card_save(model, ds, sp, folder)["fit_seconds"]
    res = evaluate.evaluate(model, sp, ds.n_users, ds.n_items, ks=ks, stage="test", users=users, beyond=beyond)
    valid = evaluate.evaluate(model, sp, ds.n_users, ds.n_items, ks=(10,), stage="valid",
                              progress=False, users=users)
    out = {
        "dataset": ds.name, "model": tag or model_name, "protocol": res.protocol,
        "metrics": {k: round(v, 4) for k, v in res.metrics.items()},
        "valid_metrics": {k: round(v, 4) for k, v in valid.metrics.items()},
        "users_evaluated": res.n_users, "candidates": res.n_candidates,
        "config": json.loads(json.dumps(model.config.__dict__, default=str)),
        "fit_seconds": round(fit_s, 2), "eval_seconds": round(res.seconds, 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "load_average_1_5_15_before_after": [[round(v, 2) for v in load_before],
                                             [round(v, 2) for v in os.getloadavg()]],
        "command": command, "date": dt.date.today().isoformat(), "llmrec_version": __version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    }
    if "items_file" in ds.meta:
        out["items_file"] = ds.meta["items_file"]
    if users is not None:
        out["users_sample"] = {"size": int(len(users)), "seed": sample_seed,
                               "of_test_users": int(len(sp.test_users)),
                               "how": "numpy default_rng(seed).choice(test users, size, no replacement)"}
    out.update(res.extra)  # beyond accuracy: which item vectors ILD was measured in
    out.update(model.benchmark_extra())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", default=["ml-100k", "ml-1m"])
    p.add_argument("--model", nargs="+", default=["popular", "itemknn"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="MODEL.KEY=VALUE")
    p.add_argument("--select", action="append", default=[], metavar="MODEL.KEY=V1,V2,...",
                   help="choose one setting on validation NDCG@10 among these values")
    p.add_argument("--tag", default=None, help="result name instead of the model name (one model)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="each model is saved here as a checkpoint; trained ones keep their per-epoch state, "
                        "history and curve here too (and resume)")
    p.add_argument("--sample-users", type=int, default=0, metavar="N",
                   help="evaluate a fixed random sample of N test users (slow generative models)")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--beyond", action="store_true",
                   help="add intra-list diversity, novelty, ARP and short-head share (evaluate's beyond=True)")
    p.add_argument("--items", type=Path, default=None, metavar="FILE",
                   help="a catalogue that replaces the data set's, same item ids (e.g. from llmrec describe)")
    args = p.parse_args(argv)
    per_model: dict[str, dict] = {}
    for key, value in parse_overrides(args.overrides).items():
        m, _, k = key.partition(".")
        per_model.setdefault(m, {})[k] = value
    selections: dict[str, tuple[str, list]] = {}
    for spec in args.select:
        key, _, vals = spec.partition("=")
        m, _, k = key.partition(".")
        if not (m and k and vals):
            p.error(f"--select {spec!r}: expected MODEL.KEY=V1,V2,...")
        selections[m] = (k, [json.loads(v) for v in vals.split(",")])
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.dataset:
        ds = datasets.load(name)
        if args.items is not None:
            ds = with_catalogue(ds, args.items)
        sp = split.leave_one_out(ds)
        for m in args.model:
            over = dict(per_model.get(m, {}))
            key = None
            if m in selections:
                key, values = selections[m]
                chosen, tried = tune.select(ds, sp, m, key, values, over,
                                            users=sample_users(sp, args.sample_users, args.sample_seed))
                over[key] = chosen
            r = run_one(ds, sp, m, over, tag=args.tag, command=command, sample=args.sample_users,
                        sample_seed=args.sample_seed, checkpoint_dir=args.checkpoint_dir, beyond=args.beyond)
            if key:
                r["selection"] = {"key": key, "valid_NDCG@10": {v: round(x, 4) for v, x in tried.items()},
                                  "chosen": r["config"][key],
                                  "rule": "highest validation NDCG@10, the first listed on a tie; the test "
                                          "figures of the others are not kept"}
            path = args.out / f"{ds.name}__{r['model']}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n")
            tmp.replace(path)
            print(f"{ds.name:>8} {r['model']:<18} HR@10 {r['metrics']['HR@10']:.4f} "
                  f"NDCG@10 {r['metrics']['NDCG@10']:.4f}  fit {r['fit_seconds']:.1f}s "
                  f"eval {r['eval_seconds']:.1f}s  -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
