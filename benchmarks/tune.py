"""What tuning finds: an Optuna study (``llmrec.tune.tune``) over a model's SEARCH_SPACE on validation
NDCG@10, then the best config and the defaults each trained once more under the same per-trial budget and
evaluated on the test split (which the search never reads). One JSON file under benchmarks/results/.

    nice -n 10 python benchmarks/tune.py --dataset ml-100k --model sasrec --trials 12 --max-minutes 40 \\
        --trial-minutes 3 --set threads=1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from llmrec import __version__, datasets, evaluate, models, split, tune
from llmrec.config import parse_overrides, to_dict

RESULTS = Path(__file__).parent / "results"


def test_figures(ds, sp, name: str, cfg: dict) -> dict:
    m = models.get(name, cfg)
    t0 = time.perf_counter()
    m.fit(ds, sp, progress=False)
    fit_s = time.perf_counter() - t0
    res = evaluate.evaluate(m, sp, ds.n_users, ds.n_items, ks=(10, 20), stage="test", progress=False)
    out = {"config": to_dict(m.config), "valid_NDCG@10": round(tune.valid_ndcg10(m, ds, sp), 4),
           "metrics": {k: round(v, 4) for k, v in res.metrics.items()}, "fit_seconds": round(fit_s, 1)}
    extra = m.benchmark_extra()  # the torch models' training summary
    if "training" in extra:
        out["training"] = extra["training"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="sasrec")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--max-minutes", type=float, default=40.0)
    p.add_argument("--trial-minutes", type=float, default=3.0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--study", type=Path, default=None, help="SQLite file (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    overrides = parse_overrides(args.overrides)
    ds = datasets.load(args.dataset)
    sp = split.leave_one_out(ds)
    study = args.study or Path(tempfile.mkdtemp(prefix="llmrec-tune-")) / "study.db"
    load_before = os.getloadavg()
    s = tune.tune(ds, sp, args.model, trials=args.trials, max_minutes=args.max_minutes, study=study,
                  overrides=overrides, trial_minutes=args.trial_minutes, progress=True)
    budget = dict(overrides, max_minutes=args.trial_minutes) if args.trial_minutes else dict(overrides)
    tuned = test_figures(ds, sp, args.model, dict(budget, **s["best_params"]))
    defaults = test_figures(ds, sp, args.model, budget)
    out = {"dataset": ds.name, "model": args.model, "protocol": sp.protocol + "; test split read only for the "
           "two final fits", "study": s, "tuned": tuned, "defaults": defaults,
           "test_NDCG@10_tuned_minus_defaults": round(tuned["metrics"]["NDCG@10"] - defaults["metrics"]["NDCG@10"], 4),
           "budget": f"each trial and each final fit trains at most {args.trial_minutes:g} minutes; the study "
                     f"at most {args.max_minutes:g} minutes, checked between trials",
           "load_average_1_5_15_before_after": [[round(v, 2) for v in load_before],
                                                [round(v, 2) for v in os.getloadavg()]],
           "command": command, "date": dt.date.today().isoformat(), "llmrec_version": __version__}
    path = args.out or RESULTS / f"tune_{ds.name}__{args.model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"tuned {tuned['metrics']['NDCG@10']:.4f} vs defaults {defaults['metrics']['NDCG@10']:.4f} test "
          f"NDCG@10 ({s['complete']} complete, {s['pruned']} pruned) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
