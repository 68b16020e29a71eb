"""The command line: a thin adapter over the Python API. Errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from . import __version__
from .config import json_default
from .errors import LLMRecError

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=json_default))



def _ks(spec: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise LLMRecError(f"-k expects comma-separated integers like 10,20, got {spec!r}") from None
    if not ks or min(ks) < 1:
        raise LLMRecError(f"-k values must be positive integers, got {spec!r}")
    return ks


# -- shared options ---------------------------------------------------------------------------------
def add_data_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data (a named data set, or your own files)")
    g.add_argument("--dataset", help="ml-100k, ml-1m, book-crossing or synthetic[-USERS-ITEMS-SEED]")
    g.add_argument("--interactions", metavar="FILE", help="interaction log (CSV, TSV, JSONL, Parquet)")
    g.add_argument("--items", metavar="FILE", help="item catalogue (CSV, TSV, JSONL, Parquet)")
    g.add_argument("--columns", metavar="MAP",
                   help="column mapping for the log, e.g. user_id=userId,item_id=movieId,timestamp=ts")
    g.add_argument("--item-columns", metavar="MAP", help="column mapping for the catalogue")
    g.add_argument("--unknown-items", choices=["error", "drop", "add"], default="error",
                   help="log items missing from the catalogue (default: error)")
    g = p.add_argument_group("cleaning (in this order; each step reports what it removed)")
    g.add_argument("--duplicates", choices=["keep", "drop", "error"], default="keep",
                   help="repeated user-item pairs: keep them (default), drop all but the latest, or stop "
                        "with their count")
    g.add_argument("--min-rating", type=float, default=None, metavar="X",
                   help="drop interactions rated below X (e.g. 1 drops Book-Crossing's implicit zeros)")
    g.add_argument("--k-core", type=int, default=None, metavar="K",
                   help="repeatedly drop users and items with fewer than K interactions")
    p.set_defaults(_data_required=required)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model name (see `llmrec models`; default itemknn, or zero-shot with --text)")
    p.add_argument("--encoder", default=None, metavar="NAME",
                   help="text encoder for models that encode (see `llmrec encoders`), a "
                        "sentence-transformers name or a local model folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable (values parsed as JSON)")
    p.add_argument("--seed", type=int, default=None, help="random seed for models that use one")


def data_options(args: argparse.Namespace) -> dict:
    """The data options given, as ``pipeline.load_data`` takes them (cleaning included)."""
    from .data import LOG_COLUMNS
    from .io import parse_column_map
    return {"dataset": args.dataset, "interactions": args.interactions, "items": args.items,
            "columns": parse_column_map(args.columns, LOG_COLUMNS),
            "item_columns": parse_column_map(args.item_columns), "unknown_items": args.unknown_items,
            "cleaning": cleaning_options(args)}


def load_data(args: argparse.Namespace):
    from . import pipeline
    if not (args.dataset or args.interactions):
        raise LLMRecError("no data: pass --dataset NAME or --interactions FILE [--items FILE]")
    return pipeline.load_data(**data_options(args), quiet=False)


def cleaning_options(args: argparse.Namespace) -> dict:
    """The cleaning options given (none: an empty dict), as a model card keeps them."""
    opts = {"duplicates": getattr(args, "duplicates", "keep"), "min_rating": getattr(args, "min_rating", None),
            "k_core": getattr(args, "k_core", None)}
    return {k: v for k, v in opts.items() if v not in (None, "keep")}


def build_model(args: argparse.Namespace):
    from . import pipeline
    from .config import parse_overrides
    return pipeline.build(args.model, parse_overrides(args.overrides), encoder=args.encoder, seed=args.seed,
                          text=getattr(args, "text", None) is not None)


def obtain(args: argparse.Namespace, default_dataset: str | None = None, text: bool = False):
    """The model this command answers with (a checkpoint, or a model fitted on the data options) and
    where it came from: ``pipeline.obtain`` over the options."""
    from . import pipeline
    from .config import parse_overrides
    return pipeline.obtain(model_dir=args.model_dir, model=args.model, overrides=parse_overrides(args.overrides),
                           encoder=args.encoder, seed=args.seed, text=text,
                           progress=not getattr(args, "json", False), default=default_dataset,
                           **data_options(args))


# -- commands ---------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from . import models
    if args.json:
        _print_json({"models": models.names()})
    else:
        print("\n".join(models.names()))
    return 0


def cmd_data_fetch(args) -> int:
    from . import datasets
    path = datasets.fetch(args.name)
    if args.json:
        _print_json({"dataset": args.name, "path": str(path)})
    else:
        print(f"{args.name}: {path}")
    return 0


def cmd_data_stats(args) -> int:
    if args.name and not args.dataset:
        args.dataset = args.name
    from .split import loo_order
    ds = load_data(args)
    stats = ds.stats()
    stats["leave_one_out_order"] = loo_order(ds.interactions)
    if ds.meta.get("cleaning"):
        stats["cleaning"] = ds.meta["cleaning"]
    if args.json:
        _print_json(stats)
    else:
        for k, v in stats.items():
            print(f"{k:>28}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:>28}: {v}")
    return 0


def _split(args, ds):
    from . import split
    return split.leave_one_out(ds) if args.split == "loo" else split.temporal(ds)


def _checkpoint_data(args, model):
    """The data a checkpoint is evaluated on: --dataset/--interactions if given, else the data its card
    names (a named data set or the files it was trained on, cleaned as they were)."""
    from . import pipeline
    ds = load_data(args) if args.dataset or args.interactions else \
        pipeline.checkpoint_data(model, cleaning_options(args))
    if len(ds.catalog) != len(model.catalog) or list(ds.catalog.ids.ids()) != list(model.catalog.ids.ids()):
        raise LLMRecError(f"the checkpoint was trained on another catalogue ({len(model.catalog)} items) "
                          f"than data set {ds.name!r} ({len(ds.catalog)} items)")
    return ds


def cmd_train(args) -> int:
    from . import evaluate, pipeline
    model = build_model(args)  # a bad config is refused before the data loads
    ds = load_data(args)
    sp = _split(args, ds)
    res: dict = {}

    def measure(m) -> dict:
        valid = evaluate.evaluate(m, sp, ds.n_users, ds.n_items, ks=(10, 20), stage="valid",
                                  progress=not args.json)
        res["test"] = test = evaluate.evaluate(m, sp, ds.n_users, ds.n_items, ks=(10, 20), stage="test",
                                               progress=not args.json)
        return {"protocol": test.protocol, "valid_metrics": valid.metrics, "test_metrics": test.metrics}

    card = pipeline.fit_card_save(model, ds, sp, args.out, progress=not args.json, measure=measure)
    out = {"dataset": ds.name, "model": model.name, "out": str(args.out), "fit_seconds": card["fit_seconds"],
           "protocol": card["protocol"], "valid_metrics": card["valid_metrics"], "metrics": card["test_metrics"]}
    if args.json:
        _print_json(out)
    else:
        print(f"trained {model.name} on {ds.name} in {card['fit_seconds']:.1f}s -> {args.out}")
        print(res["test"].table())
    return 0


def cmd_tune(args) -> int:
    from . import tune
    from .config import parse_overrides
    if not args.model:
        raise LLMRecError("tune needs --model (see `llmrec models`)")
    overrides = parse_overrides(args.overrides)
    if args.encoder:
        overrides["encoder"] = args.encoder
    space = None
    if args.space:
        try:
            space = json.loads(open(args.space, encoding="utf-8").read())
        except (OSError, json.JSONDecodeError) as e:
            raise LLMRecError(f"{args.space}: not a JSON search space ({e})") from None
    tune.search_space(args.model, space)  # a bad space is refused before the data loads
    ds = load_data(args)
    out = tune.tune(ds, _split(args, ds), args.model, trials=args.trials, max_minutes=args.max_minutes,
                    study=args.study, study_name=args.study_name, out=args.out, overrides=overrides,
                    space=space, trial_minutes=args.trial_minutes, seed=args.seed or 0,
                    progress=not args.json)
    if args.json:
        _print_json(out)
    else:
        print(f"study {out['study']} ({args.study}): {out['trials']} trials ({out['new_trials']} new), "
              f"{out['complete']} complete, {out['pruned']} pruned, {out['failed']} failed")
        print(f"best validation NDCG@10: {out['best_value']} with {json.dumps(out['best_params'])}")
        if args.out:
            print(f"best config trained -> {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluate
    from .rerank import check_diversity
    ks = _ks(args.k)
    check_diversity(args.diversity, "--diversity")  # before anything is fitted
    if args.model_dir:
        from .models import load_model
        model = load_model(args.model_dir)
        ds = _checkpoint_data(args, model)
        sp = _split(args, ds)
        fit_s = 0.0
    else:
        ds = load_data(args)
        sp = _split(args, ds)
        model = build_model(args)
        t0 = time.perf_counter()
        model.fit(ds, sp, progress=not args.json)
        fit_s = time.perf_counter() - t0
    res = evaluate.evaluate(model, sp, ds.n_users, ds.n_items, ks=ks, stage=args.stage,
                            progress=not args.json, beyond=args.beyond_accuracy, diversity=args.diversity)
    out = {"dataset": ds.name, "model": model.name, "protocol": res.protocol, "metrics": res.metrics,
           "users_evaluated": res.n_users, "candidates": res.n_candidates,
           "fit_seconds": round(fit_s, 3), "eval_seconds": round(res.seconds, 3), **res.extra}
    if ds.meta.get("cleaning"):
        out["cleaning"] = ds.meta["cleaning"]
    if args.json:
        _print_json(out)
    else:
        print(f"dataset: {ds.name}   model: {model.name}   fit {fit_s:.1f}s   eval {res.seconds:.1f}s")
        print(res.table())
    return 0


def _print_items(items: list[dict], explain: bool) -> None:
    for rank, it in enumerate(items, 1):
        print(f"{rank:>3}. {it['title']}  (id {it['item_id']}, score {it['score']:.4f})")
        if explain:
            _print_because(it["explanation"])


def _print_because(expl: dict) -> None:
    if expl.get("because"):
        print("      because: " + "; ".join(f"{b['title']} ({b['similarity']:.2f})" for b in expl["because"]))
    if expl.get("profile_words"):
        print("      closest words: " + ", ".join(f"{w['word']} ({w['similarity']:.2f})"
                                               for w in expl["profile_words"]))
    if expl.get("shared_tags"):
        print("      shared tags: " + ", ".join(expl["shared_tags"]))
    if "prompt" in expl:  # a generated item
        print(f"      generated: {expl.get('generated')}, log-prob {expl['score']:.3f}, from the prompt:")
        print("        " + expl["prompt"].replace("\n", "\n        "))


def cmd_recommend_text(args) -> int:
    """Free text (a profile), optionally mixed with a known user's history; works on a bare catalogue."""
    from .models import TextQueries
    from .rerank import check_diversity, pool
    if not (args.model_dir or args.dataset or args.interactions or args.items):
        raise LLMRecError("no catalogue: pass --items FILE (or --dataset / --model-dir)")
    diversity = check_diversity(args.diversity, "--diversity")
    model, _ = obtain(args, text=True)
    if not isinstance(model, TextQueries):
        raise LLMRecError(f"model {model.name!r} cannot recommend for free text; use --model zero-shot")
    hist = [list(model.catalog.ids.ids(model.history_of(args.user)))] if args.user else None
    k = pool(args.k, len(model.catalog)) if diversity else args.k
    recs = model.recommend_text([args.text], k=k, histories=hist, explain=args.explain)
    if diversity:
        recs = model.diversify(recs, args.k, diversity)
    items = recs.records(model.catalog)
    if args.json:
        _print_json({"text": args.text, "user_id": args.user, "model": model.name, "items": items})
    else:
        print(f"profile: {args.text!r}" + (f" + history of user {args.user}" if args.user else "")
              + f"; model {model.name} ({model.card_extra().get('encoder', '')})")
        _print_items(items, args.explain)
    return 0


def cmd_recommend_community(args) -> int:
    """A user with no history, from the people they are related to (and their text profile, if given)."""
    from . import community
    from .io import parse_column_map
    if not args.user:
        raise LLMRecError("--relations needs --user ID (the user to recommend for)")
    if not (args.model_dir or args.dataset or args.interactions):
        raise LLMRecError("no data: pass --dataset NAME or --interactions FILE [--items FILE]")
    model, _ = obtain(args, text=args.text is not None)
    known = {u for u in model.users.ids() if len(model.history_of(u))}
    if args.user in known:
        raise LLMRecError(f"user {args.user!r} has a history: recommend for them without --relations")
    rel = community.Relations.read(args.relations, known, parse_column_map(args.relation_columns,
                                                                           community.RELATION_COLUMNS),
                                   unknown_users=args.unknown_relations)
    related = rel.of(args.user)
    if not related and args.text is None:
        raise LLMRecError(f"user {args.user!r} has no history and no relations in {args.relations}; "
                          "add relations or a --text profile")
    recs = community.recommend(model, [related], k=args.k, texts=[args.text] if args.text else None,
                               text_weight=args.text_weight, explain=args.explain)
    items = recs.records(model.catalog)
    if args.json:
        _print_json({"user_id": args.user, "related_users": len(related), "relations_dropped": rel.dropped,
                     "text": args.text, "model": model.name, "items": items})
    else:
        print(f"user {args.user}: no history; {len(related)} related users"
              + (f" + profile {args.text!r}" if args.text else "") + f"; model {model.name}"
              + (f" ({rel.dropped} relation rows naming unknown users left out)" if rel.dropped else ""))
        for rank, it in enumerate(items, 1):
            print(f"{rank:>3}. {it['title']}  (id {it['item_id']}, score {it['score']:.4f})")
            if args.explain and it["explanation"].get("related_users"):
                print("      held by: " + ", ".join(it["explanation"]["related_users"]))
    return 0


def cmd_recommend(args) -> int:
    if args.relations:
        return cmd_recommend_community(args)
    if args.text is not None:
        return cmd_recommend_text(args)
    if not args.user:
        raise LLMRecError("pass --user ID (a known user) or --text \"...\" (a free-text profile)")
    if not (args.model_dir or args.dataset or args.interactions):
        raise LLMRecError("no data: pass --dataset NAME or --interactions FILE [--items FILE]")
    from .rerank import check_diversity
    diversity = check_diversity(args.diversity, "--diversity")  # before the model is fitted
    model, _ = obtain(args)
    recs = model.recommend(users=[args.user], k=args.k, explain=args.explain, diversity=diversity)
    items = recs.records(model.catalog)
    if args.json:
        _print_json({"user_id": args.user, "model": model.name, "items": items})
    else:
        hist = model.history_of(args.user)
        print(f"user {args.user}: {len(hist)} items in history; model {model.name}")
        _print_items(items, args.explain)
    return 0


def cmd_encoders(args) -> int:
    from . import encoders
    if args.json:
        _print_json({"encoders": encoders.describe()})
    else:
        for name, what in encoders.describe().items():
            print(f"{name:<18} {what}")
    return 0


def cmd_tags(args) -> int:
    """Choose tags for items from a vocabulary by embedding similarity and write them to the catalogue."""
    from . import encoders, text
    from .data import load_catalog
    from .io import parse_column_map
    catalog = load_catalog(args.items, parse_column_map(args.item_columns))
    vocab = text.load_vocabulary(args.vocab)
    enc = encoders.cached(args.encoder or encoders.auto(len(catalog), catalog.titles()))
    tagged, n = text.tag_catalog(catalog, vocab, enc, k=args.k, min_similarity=args.min_similarity,
                                 only_missing=not args.all)
    text.write_catalog(tagged, args.out)
    if args.json:
        _print_json({"items": len(catalog), "tagged": n, "out": str(args.out)})
    else:
        print(f"tagged {n:,} of {len(catalog):,} items from {len(vocab)} tags -> {args.out}")
    return 0


def cmd_describe(args) -> int:
    """An instruct LM writes a one-line description and keywords per item, written back to the catalogue."""
    from . import describe, text
    from .data import load_catalog
    from .io import parse_column_map
    if bool(args.items) == bool(args.dataset):
        raise LLMRecError("pass --items FILE or --dataset NAME (the catalogue to describe)")
    if args.items:
        catalog = load_catalog(args.items, parse_column_map(args.item_columns))
    else:
        from . import datasets
        catalog = datasets.load(args.dataset, quiet=args.json).catalog
    if not str(args.out).lower().endswith((".csv", ".tsv", ".jsonl", ".json", ".parquet")):
        raise LLMRecError(f"{args.out}: unknown catalogue format (use .csv, .tsv, .jsonl or .parquet)")
    d = describe.Describer(args.lm, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           threads=args.threads)
    t0 = time.perf_counter()
    described, n = describe.describe_catalog(catalog, d, only_missing=not args.all, progress=not args.json)
    text.write_catalog(described, args.out)
    out = {"items": len(catalog), "described": n, "seconds": round(time.perf_counter() - t0, 1),
           "cache": str(d.cache_path), "out": str(args.out)}
    if args.json:
        _print_json(out)
    else:
        print(f"described {n:,} of {len(catalog):,} items in {out['seconds']} s -> {args.out}")
    return 0


def cmd_demo(args) -> int:
    """The main job: fetch ml-100k, fit itemknn, evaluate it, recommend for one user; then a new user who
    describes their taste in one sentence gets films from the zero-shot language-model recommender."""
    from . import datasets, evaluate, models, split
    ds = datasets.load("ml-100k")
    print(f"ml-100k: {ds.n_users:,} users, {ds.n_items:,} items, {len(ds.interactions):,} interactions")
    sp = split.leave_one_out(ds)
    model = models.get("itemknn").fit(ds, sp)
    res = evaluate.evaluate(model, sp, ds.n_users, ds.n_items, ks=(10, 20))
    print(res.table())
    user = args.user
    full = models.get("itemknn").fit(ds)
    recs = full.recommend(users=[user], k=10, explain=True).records(full.catalog)
    hist = full.history_of(user)
    print(f"\nuser {user} watched {len(hist)} films, most recently: "
          + "; ".join(full.catalog.titles(hist[-3:])))
    for rank, it in enumerate(recs, 1):
        because = ", ".join(b["title"] for b in it["explanation"]["because"][:2])
        print(f"{rank:>3}. {it['title']:<45} score {it['score']:.3f}  because: {because}")
    print(f"\na new user, no history, says: {args.text!r}")
    zs = models.get("zero-shot").fit_catalog(ds.catalog)  # encoder auto: minilm-onnx for this catalogue
    _print_items(zs.recommend_text([args.text], k=5, explain=True).records(zs.catalog), explain=True)
    return 0


def _service_config(args):
    from .service import ServiceConfig
    lo, sep, hi = args.rating_scale.partition(":")
    try:
        lo_f, hi_f = float(lo), float(hi)
    except ValueError:
        raise LLMRecError(f"--rating-scale: expected MIN:MAX, e.g. 1:5, got {args.rating_scale!r}") from None
    return ServiceConfig(like_rating=args.like_rating, rating_min=lo_f, rating_max=hi_f,
                         max_clock_skew=args.clock_skew)


def _engine(args):
    """The engine ``serve`` and ``retrain`` run: a checkpoint, or a model fitted on the data options (the
    same options, cleaning included, as the other commands; default model zero-shot, data ml-100k)."""
    from . import pipeline, service
    config = _service_config(args)  # bad options fail before the model loads
    index = _index_settings(args)
    if index and not args.model_dir:
        args.overrides = [*args.overrides, *(f"{k}={json.dumps(v)}" for k, v in index.items())]
    model, source = obtain(args, default_dataset=pipeline.DEFAULT_DATASET, text=True)
    if index and args.model_dir:
        _reindex(model, index)
    data_dir = args.data_dir or service.default_data_dir(source)
    engine = service.open_engine(model, data_dir, source, config, database=_database(args))
    return engine, data_dir


def _database(args) -> str | None:
    """--database, else LLMREC_DATABASE, else None (SQLite in the data folder)."""
    return args.database or os.environ.get("LLMREC_DATABASE") or None


def _serve_workers(args) -> int:
    """``--workers N``: bind the port here and run N ``llmrec serve`` processes on it, each with its own
    model and the shared store; when one exits, the others are stopped and its exit code is returned."""
    import signal
    import socket
    import subprocess
    if not _database(args):
        raise LLMRecError("--workers: several processes need a shared store: give --database "
                          "postgresql://... (or LLMREC_DATABASE); over SQLite each would keep its own state")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise LLMRecError(f"--port: cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    sock.listen(2048)
    argv = [*args.argv, "--workers", "1", "--listen-fd", str(sock.fileno())]
    procs = [subprocess.Popen([sys.executable, "-m", "llmrec.cli", *argv], pass_fds=(sock.fileno(),))
             for _ in range(args.workers)]
    print(f"llmrec: {args.workers} worker processes on {args.host}:{args.port} "
          f"(pids {', '.join(str(p.pid) for p in procs)})", file=sys.stderr)

    asked = []  # a signal to stop: the workers' exit is then the expected one

    def stop(signum, frame):
        if signum is not None:
            asked.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = None
    while code is None:
        for p in procs:
            try:
                rc = p.wait(0.2)
            except subprocess.TimeoutExpired:
                continue
            code = rc
            break
    stop(None, None)
    for p in procs:
        p.wait()
    return 0 if asked else code if code >= 0 else 128 - code


def _index_settings(args) -> dict:
    """--index, --index-uri, --index-collection as zero-shot config keys (none given: {})."""
    given = {"index": args.index, "index_uri": args.index_uri, "index_collection": args.index_collection}
    if (args.index_uri or args.index_collection) and args.index not in (None, "milvus"):
        raise LLMRecError("--index-uri / --index-collection go with --index milvus")
    if args.index_uri or args.index_collection:
        given["index"] = "milvus"
    return {k: v for k, v in given.items() if v}


def _reindex(model, index: dict) -> None:
    """A checkpoint served on another item index than it was saved with: rebuilt from its vectors."""
    from .models.zeroshot import ZeroShot
    if not isinstance(model, ZeroShot):
        raise LLMRecError(f"--index: model {model.name!r} has no item index (zero-shot has)")
    current = {"index": model.config.index, "index_uri": model.config.index_uri,
               "index_collection": model.config.index_collection}
    if any(current[k] != v for k, v in index.items()):
        kind = index.pop("index", model.config.index)
        print(f"llmrec: rebuilding the item index as {kind} over {len(model.catalog):,} vectors", file=sys.stderr)
        model.reindex(kind, **index)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args) -> int:
    try:
        from .server import check_access, create_app, run
    except ImportError as e:
        raise LLMRecError(f"serving needs the 'serve' extra ({e}): pip install 'llmrec[serve]'") from None
    key = os.environ.get("LLMREC_API_KEY") or None
    check_access(key, args.protect_reads, args.public_user_data)  # before minutes of loading
    wildcard = args.host in ("0.0.0.0", "::", "")
    if wildcard and not args.allowed_host:
        hosts = ["*"]
    else:
        hosts = list(dict.fromkeys([*([] if wildcard else [args.host]), *LOOPBACK, *args.allowed_host]))
    if args.workers < 1:
        raise LLMRecError(f"--workers: expected at least 1, got {args.workers}")
    if args.workers > 1:
        return _serve_workers(args)
    engine, data_dir = _engine(args)
    app = create_app(engine, api_key=key, insecure=args.insecure, protect_reads=args.protect_reads,
                     public_user_data=args.public_user_data, allowed_hosts=hosts)
    writes = "need LLMREC_API_KEY" if key else ("OPEN (--insecure)" if args.insecure else
                                                 "disabled (set LLMREC_API_KEY or pass --insecure)")
    users = ("PUBLIC (--public-user-data)" if args.public_user_data else
             "need LLMREC_API_KEY" if key else "closed (set LLMREC_API_KEY or pass --public-user-data)")
    print(f"llmrec: serving {engine.source}: {len(engine.catalog):,} items, {len(engine.user_ids(10**9)):,} "
          f"users, {engine.store.count_events():,} stored events; state in {engine.store.location}\n"
          f"llmrec: writes {writes}; user data {users}; reads "
          f"{'need LLMREC_API_KEY' if args.protect_reads else 'open'}\n"
          f"llmrec: page http://{args.host}:{args.port}/  API docs http://{args.host}:{args.port}/docs",
          file=sys.stderr)
    if args.insecure and not key and args.host not in LOOPBACK:
        print(f"llmrec: WARNING: anyone who can reach {args.host} can write (--insecure)", file=sys.stderr)
    if hosts == ["*"]:
        print("llmrec: WARNING: any Host header is answered (DNS rebinding): name this server's host names "
              "with --allowed-host", file=sys.stderr)
    sock = None
    if args.listen_fd is not None:  # a worker of --workers: the parent's socket
        import socket
        sock = socket.socket(fileno=args.listen_fd)
    run(app, args.host, args.port, sock=sock)
    return 0


def cmd_retrain(args) -> int:
    engine, data_dir = _engine(args)
    res = engine.retrain(out=args.out, progress=not args.json)
    res["data_dir"] = str(data_dir)
    if args.json:
        _print_json(res)
    else:
        print(f"retrained {res['model']} on {res['interactions']:,} interactions of {res['users']:,} users "
              f"in {res['fit_seconds']}s -> {args.out}\nserve it: llmrec serve --model-dir {args.out} "
              f"--data-dir {data_dir}")
    return 0


def cmd_batch_recommend(args) -> int:
    from . import batch
    res = batch.recommend(args.model_dir, args.out, k=args.k, users=args.users, explain=args.explain,
                          engine=args.engine, address=args.address, num_cpus=args.num_cpus, workers=args.workers,
                          chunk_size=args.chunk_size, overwrite=args.overwrite, progress=not args.json)
    if args.json:
        _print_json(res)
    else:
        print(f"top-{res['k']} for {res['users']:,} users ({res['rows']:,} rows, {_chunks(res)}) "
              f"on {res['engine']} in {res['seconds']:.1f}s -> {res['out']}")
    return 0


def _chunks(res: dict) -> str:
    """"3 chunks, 1 resumed": what a batch job wrote, for its one-line summary."""
    resumed = f", {res['chunks_resumed']} resumed" if res["chunks_resumed"] else ""
    return f"{res['chunks']} chunk{'s' if res['chunks'] != 1 else ''}{resumed}"


def _batch_ray_options(s: argparse.ArgumentParser, output: bool = True) -> None:
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data actors (the 'ray' extra)")
    s.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray: auto (the cluster running here) or ray://HOST:PORT; default a local Ray")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: every core)")
    if output:
        s.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per CPU of the cluster)")
        s.add_argument("--overwrite", action="store_true", help="replace another job's results in --out")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_batch_encode(args) -> int:
    from . import batch_encode
    from .io import parse_column_map
    res = batch_encode.encode(args.out, encoder=args.encoder, items=args.items, dataset=args.dataset,
                              item_columns=parse_column_map(args.item_columns), template=args.template,
                              normalize=not args.no_normalize, engine=args.engine, address=args.address,
                              num_cpus=args.num_cpus, workers=args.workers, chunk_size=args.chunk_size,
                              overwrite=args.overwrite, progress=not args.json)
    if args.json:
        _print_json(res)
    else:
        print(f"{res['items']:,} item vectors ({res['encoder']}, {_chunks(res)}) on "
              f"{res['engine']} in {res['seconds']:.1f}s -> {res['out']}")
    return 0


def cmd_batch_evaluate(args) -> int:
    from . import batch_evaluate
    res = batch_evaluate.evaluate(args.model_dir, ks=_ks(args.k), stage=args.stage, engine=args.engine,
                                  shards=args.shards, address=args.address,
                                  num_cpus=args.num_cpus)
    if args.json:
        _print_json(res)
    else:
        print(f"model: {res['model']}   {res['engine']}, {res['shards']} shard(s)   {res['seconds']:.1f}s\n"
              f"protocol: {res['protocol']}\nusers evaluated: {res['users_evaluated']:,}; candidates ranked: "
              f"{res['candidates']:,}")
        for k, v in res["metrics"].items():
            print(f"{k:>12}  {v:.4f}")
    return 0


# -- parser -----------------------------------------------------------------------------------------
def _model_command(sub, name: str, help_: str, func: Handler) -> argparse.ArgumentParser:
    """A command over data and a model: the data, cleaning and model options, and --json."""
    s = sub.add_parser(name, help=help_)
    add_data_options(s)
    add_model_options(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=func)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmrec", description="Recommendations made by language models.")
    p.add_argument("--version", action="version", version=f"llmrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the models")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    d = sub.add_parser("data", help="fetch and inspect data sets").add_subparsers(dest="data_cmd",
                                                                                   required=True)
    s = d.add_parser("fetch", help="download a named data set into the cache")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_fetch)
    s = d.add_parser("stats", help="users, items, interactions, density of a data set")
    s.add_argument("name", nargs="?")
    add_data_options(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_stats)

    s = _model_command(sub, "train", "train a model on the train split and save a checkpoint", cmd_train)
    s.add_argument("--out", required=True, help="checkpoint folder")
    s.add_argument("--split", choices=["loo", "temporal"], default="loo")

    s = _model_command(sub, "tune", "search a model's hyper-parameters on validation NDCG@10 (Optuna)", cmd_tune)
    s.add_argument("--trials", type=int, default=20, help="trials in the study in all (those done count)")
    s.add_argument("--max-minutes", type=float, default=0.0, help="this call's time budget (0 = none)")
    s.add_argument("--trial-minutes", type=float, default=0.0,
                   help="training budget of each trial, for models with max_minutes (0 = none)")
    s.add_argument("--study", default="tune.db", help="SQLite file of the study (a second call resumes it)")
    s.add_argument("--study-name", default=None, help="default DATASET__MODEL")
    s.add_argument("--space", default=None, metavar="FILE",
                   help='JSON search space instead of the model\'s, e.g. {"neighbors": ["int", 5, 400, true]}')
    s.add_argument("--out", default=None, help="train the best config to this checkpoint folder")
    s.add_argument("--split", choices=["loo", "temporal"], default="loo")

    s = _model_command(sub, "evaluate", "fit a model and evaluate it (full ranking, leave-one-out)", cmd_evaluate)
    s.add_argument("--model-dir", help="evaluate a saved checkpoint instead of fitting --model")
    s.add_argument("-k", default="10,20", help="cut-offs, e.g. 10,20 (default)")
    s.add_argument("--split", choices=["loo", "temporal"], default="loo")
    s.add_argument("--stage", choices=["test", "valid"], default="test")
    s.add_argument("--beyond-accuracy", action="store_true",
                   help="add intra-list diversity, novelty, popularity (ARP) and short-head share")
    s.add_argument("--diversity", type=float, default=0.0, metavar="LAMBDA",
                   help="evaluate with MMR re-ranking: 0 (off, default) to 1")

    s = _model_command(sub, "recommend", "top-k items for a user", cmd_recommend)
    s.add_argument("--model-dir", help="recommend from a saved checkpoint")
    s.add_argument("--user", help="external user id")
    s.add_argument("--text", help="a free-text profile (zero-shot); with --user, mixed with the history")
    s.add_argument("--relations", metavar="FILE",
                   help="user-user relations (user_id, related_id[, weight]): --user has no history and is "
                        "recommended from the people they are related to")
    s.add_argument("--relation-columns", metavar="MAP", help="column mapping for the relation file")
    s.add_argument("--unknown-relations", choices=["error", "drop"], default="error",
                   help="a relation to a user with no history: stop (default) or leave the row out")
    s.add_argument("--text-weight", type=float, default=0.5,
                   help="with --relations and --text: the profile's share of the mix (default 0.5)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--explain", action="store_true", help="say why each item is recommended")
    s.add_argument("--diversity", type=float, default=0.0, metavar="LAMBDA",
                   help="MMR re-ranking for diversity: 0 (off, default) to 1")

    b = sub.add_parser("batch", help="batch stages over a checkpoint, on this process or Ray").add_subparsers(
        dest="batch_cmd", required=True)
    s = b.add_parser("recommend", help="top-k for every known user (or a list) of a checkpoint, as Parquet")
    s.add_argument("--model-dir", required=True, help="the checkpoint")
    s.add_argument("--out", required=True, metavar="FILE_OR_FOLDER",
                   help="a folder of part files, or one file ending .parquet")
    s.add_argument("--users", metavar="FILE", help="user ids, one per line (default: every known user)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--explain", action="store_true", help="add a reason column (a JSON string)")
    s.add_argument("--chunk-size", type=int, default=1000, help="users per part file (default 1000)")
    _batch_ray_options(s)
    s.set_defaults(func=cmd_batch_recommend)
    s = b.add_parser("encode", help="every item text of a catalogue as a vector, as Parquet part files")
    s.add_argument("--items", metavar="FILE_OR_FOLDER",
                   help="catalogue: a file (CSV, TSV, JSONL, Parquet) or a Parquet folder / URI (file://, s3://)")
    s.add_argument("--dataset", help="or a named data set's catalogue")
    s.add_argument("--item-columns", metavar="MAP", help="column mapping for the catalogue")
    s.add_argument("--encoder", required=True, metavar="NAME", help="text encoder (see `llmrec encoders`)")
    s.add_argument("--template", default=None, help="item text template (default: zero-shot's)")
    s.add_argument("--no-normalize", action="store_true",
                   help="raw vectors (for metric=dot / euclidean); default L2-normalised")
    s.add_argument("--out", required=True, metavar="FOLDER", help="folder of part files")
    s.add_argument("--chunk-size", type=int, default=10_000, help="items per part file (default 10000)")
    _batch_ray_options(s)
    s.set_defaults(func=cmd_batch_encode)
    s = b.add_parser("evaluate", help="evaluate a checkpoint with its users sharded (the evaluate command's figures)")
    s.add_argument("--model-dir", required=True, help="the checkpoint (evaluated on the data its card names)")
    s.add_argument("-k", default="10,20", help="cut-offs, e.g. 10,20 (default)")
    s.add_argument("--stage", choices=["test", "valid"], default="test")
    s.add_argument("--shards", type=int, default=None,
                   help="user shards (local: default 1; ray: one actor each, default one per CPU)")
    _batch_ray_options(s, output=False)
    s.set_defaults(func=cmd_batch_evaluate)

    s = sub.add_parser("encoders", help="list the built-in text encoders")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_encoders)

    s = sub.add_parser("tags", help="choose tags for items from a vocabulary (embedding similarity)")
    s.add_argument("--items", required=True, metavar="FILE", help="item catalogue")
    s.add_argument("--item-columns", metavar="MAP", help="column mapping for the catalogue")
    s.add_argument("--vocab", required=True, metavar="FILE", help="tag vocabulary, one tag a line")
    s.add_argument("--out", required=True, metavar="FILE", help="catalogue with tags (.csv/.tsv/.jsonl/.parquet)")
    s.add_argument("--encoder", default=None, metavar="NAME",
                   help="text encoder (default: by the catalogue's language and size, as zero-shot's auto)")
    s.add_argument("-k", type=int, default=3, help="tags per item (default 3)")
    s.add_argument("--min-similarity", type=float, default=0.0)
    s.add_argument("--all", action="store_true", help="re-tag items that already have tags")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_tags)

    s = sub.add_parser("describe", help="an instruct LM writes a description and keywords for each item")
    s.add_argument("--items", metavar="FILE", help="item catalogue (CSV, TSV, JSONL, Parquet)")
    s.add_argument("--item-columns", metavar="MAP", help="column mapping for the catalogue")
    s.add_argument("--dataset", help="a named data set's catalogue instead of --items")
    s.add_argument("--out", required=True, metavar="FILE", help="catalogue with description and tags "
                                                                "(.csv/.tsv/.jsonl/.parquet)")
    s.add_argument("--lm", default="smollm2-135m", metavar="NAME",
                   help="causal instruct LM: smollm2-135m (packaged) or a local folder / Hugging Face name")
    s.add_argument("--max-new-tokens", type=int, default=32, help="description length cap in tokens (default 32)")
    s.add_argument("--batch-size", type=int, default=32, help="items generated together (default 32)")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    s.add_argument("--all", action="store_true", help="describe items that already have a description")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_describe)

    s = sub.add_parser("demo", help="ml-100k: itemknn evaluated and recommending; zero-shot for a new user")
    s.add_argument("--user", default="196")
    s.add_argument("--text", default="I have been into space adventures and robots lately",
                   help="a new user's interests, for the zero-shot part")
    s.set_defaults(func=cmd_demo)

    for name, help_, func in (("serve", "start the HTTP service and web page (default: ml-100k)", cmd_serve),
                              ("retrain", "fold the service's stored events into a new checkpoint",
                               cmd_retrain)):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--model-dir", help="serve a saved checkpoint")
        add_data_options(s, required=False)  # default: ml-100k
        add_model_options(s)  # default model: zero-shot
        s.add_argument("--data-dir", help="where the service keeps its SQLite state (default: per source, "
                                          "under the user data folder); with --database, its secret key")
        s.add_argument("--database", metavar="URL",
                       help="keep the state in Postgres (postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, or "
                            "LLMREC_DATABASE), shared by replicas; default: SQLite in --data-dir")
        s.add_argument("--rating-scale", default="0:10", metavar="MIN:MAX",
                       help="accepted event values (default 0:10)")
        s.add_argument("--like-rating", type=float, default=3.0,
                       help="a rating at or above this is positive, below it a dislike (default 3)")
        s.add_argument("--clock-skew", type=float, default=300.0, metavar="SECONDS",
                       help="how far ahead of the server's clock an event's timestamp may be (default 300)")
        s.add_argument("--index", choices=["exact", "hnsw", "ivf", "milvus"], default=None,
                       help="zero-shot item index (default: the model's; a checkpoint is re-indexed)")
        s.add_argument("--index-uri", default=None, metavar="URI",
                       help="milvus: a Milvus Lite path (.db) or a server address (http://host:19530); "
                            "token in LLMREC_MILVUS_TOKEN")
        s.add_argument("--index-collection", default=None, metavar="NAME", help="milvus: the collection")
        s.set_defaults(func=func)
        if name == "serve":
            s.add_argument("--host", default="127.0.0.1")
            s.add_argument("--port", type=int, default=8000)
            s.add_argument("--insecure", action="store_true",
                           help="allow writes without an API key (LLMREC_API_KEY)")
            s.add_argument("--protect-reads", action="store_true",
                           help="every read needs the API key too (recommendations for a history or text, items)")
            s.add_argument("--public-user-data", action="store_true",
                           help="for demos: the user list, histories, events and recommendations for a user_id "
                                "without the key (by default they need it)")
            s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                           help="a Host name to answer besides the --host address and loopback (repeatable); "
                                "other Host headers get 400 (DNS rebinding)")
            s.add_argument("--workers", type=int, default=1, metavar="N",
                           help="N server processes on the port, over the shared --database (default 1)")
            s.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
        else:
            s.add_argument("--out", required=True, help="checkpoint folder to write")
            s.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "json", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return args.func(args)
    except LLMRecError as e:
        print(f"llmrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
