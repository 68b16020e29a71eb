"""Sharded evaluation of a checkpoint: the same figures as ``llmrec evaluate --model-dir`` (leave-one-out,
full ranking, history excluded), with the checkpoint's users cut into shards, each evaluated by its own
worker that reads only its users' interactions.

Why it is exact: leave-one-out splits each user's history on its own (time order, ties in file order,
which a filtered read keeps), the per-user cleaning steps (duplicates, minimum rating) act on each user's
rows alone, and a user's scores depend on their history only. The one global fact, the candidate items
(every item with an interaction), is the union of the shards' items, gathered before any ranking. Each
shard returns sums (hits, NDCG, MRR gains) and its top-k item sets; the driver divides by the users and
counts the union of the top-k sets for coverage. Refused, with the reason: a k-core (a global fixpoint)
and a log without timestamps (its order is one global random permutation).

Engines: ``local`` (the shards one after another in this process; one shard reads the whole log, as the
in-process evaluator does) and ``ray`` (one Ray actor per shard, one CPU each; the actors keep their
shard between the two rounds, candidates then sums).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import batch
from .errors import LLMRecError


def data_source(model) -> tuple[dict, dict]:
    """Where the checkpoint's data is (its card: a named data set or files) and its cleaning options."""
    card = model.card or {}
    source = card.get("data") or ({"dataset": card["dataset"]} if card.get("dataset") else None)
    if not source or not (source.get("dataset") or source.get("interactions")):
        raise LLMRecError("the checkpoint names no interaction log (trained on a catalogue alone?): nothing to "
                          "evaluate")
    cleaning = dict(card.get("cleaning_options") or {})
    if cleaning.get("k_core"):
        raise LLMRecError("the checkpoint's data was cleaned with a k-core, which depends on every user: "
                          "evaluate it in one process (llmrec evaluate --model-dir)")
    return source, cleaning


def shard_frames(source: dict, users: set[str]) -> Iterator:
    """The log's rows of ``users`` (external ids), in file order, as frames: a file or Parquet data set
    read chunk by chunk and filtered, or a named data set."""
    import pandas as pd
    if source.get("dataset"):
        from . import datasets
        ds = datasets.load(source["dataset"], quiet=True)
        inter = ds.interactions
        keep = np.isin(inter.user, ds.users.indices(u for u in ds.users.ids() if u in users))
        frame = {"user_id": ds.users.ids(inter.user[keep]), "item_id": ds.catalog.ids.ids(inter.item[keep]),
                 "timestamp": inter.timestamp[keep], "value": inter.value[keep]}
        if inter.event is not None:
            frame["event"] = inter.event[keep]
        yield pd.DataFrame(frame)
        return
    from .io import iter_chunks
    for chunk in iter_chunks(source["interactions"], columns=source.get("columns")):
        keep = chunk["user_id"].astype(str).isin(users).to_numpy()
        yield chunk[keep]


class Shard:
    """One shard's users (``start:stop`` of the checkpoint's): ``items()`` reads, cleans and splits their
    interactions and returns the items in them (for the candidates), ``sums(candidates, ks)`` their
    metric sums. Ray runs it as an actor, keeping the shard between the two calls; the local engine calls
    it directly."""

    def __init__(self, model_dir: str, start: int, stop: int, stage: str, threads: int | None = None):
        self.model_dir, self.start, self.stop, self.stage, self.threads = model_dir, start, stop, stage, threads

    def items(self) -> np.ndarray:
        """Load the checkpoint, read, clean and split this shard's users' rows; the items they interacted
        with (for the candidates). An error here reaches the caller as itself (on Ray, as a task's cause)."""
        import sys

        from . import clean, split
        from .data import build_from_chunks
        from .evaluate import stage_targets
        from .models import load_model
        if self.threads:
            batch._limit_threads(self.threads)
        self.model = model = load_model(self.model_dir)
        if self.threads and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(self.threads)
        source, cleaning = data_source(model)
        users = set(model.users.ids()[self.start:self.stop].tolist())
        ds = build_from_chunks("shard", shard_frames(source, users), model.catalog.frame,
                               unknown_items=source.get("unknown_items", "error"))
        ds, _ = clean.apply(ds, duplicates=cleaning.get("duplicates", "keep"),
                            rating_floor=cleaning.get("min_rating"))
        self.n_items = len(model.catalog)
        inter = ds.interactions
        self.users = self.targets = np.zeros(0, np.int64)
        self.hist, self.protocol = [], split.PROTOCOL
        if len(inter) and not inter.has_time:
            raise LLMRecError("the log has no timestamps: leave-one-out orders it by one random permutation of "
                              "the whole log, which a shard cannot reproduce; evaluate it in one process "
                              "(llmrec evaluate --model-dir)")
        if len(inter) and (np.bincount(inter.user) >= 3).any():  # else no evaluation user here
            sp = split.leave_one_out(ds)
            self.protocol = sp.protocol
            self.users, self.targets, context = stage_targets(sp, self.stage)
            self.hist = context.histories(ds.n_users)
        return np.unique(inter.item)

    def sums(self, candidates: np.ndarray, ks: tuple[int, ...], memory_mb: float) -> dict:
        """Per k: the users, the sums of the hit, NDCG and MRR gains, and the items in any top-k."""
        from . import metrics
        from .evaluate import rank_targets
        cand = np.unpackbits(candidates, count=self.n_items).astype(bool)
        ranks, tops, _ = rank_targets(self.model, self.users, self.targets, self.hist, cand, max(ks), memory_mb,
                                      self.stage)
        n = len(ranks)
        out = {"users": n, "protocol": self.protocol}
        for k in ks:
            out[k] = {"HR": metrics.hit_rate(ranks, k) * n, "NDCG": metrics.ndcg(ranks, k) * n,
                      "MRR": metrics.mrr(ranks, k) * n, "top": np.unique(tops[:, :k])}
        return out


def evaluate(model_dir: str | Path, *, ks: tuple[int, ...] = (10, 20), stage: str = "test", engine: str = "local",
             shards: int | None = None, address: str | None = None, num_cpus: int | None = None,
             memory_mb: float | None = None) -> dict:
    """The checkpoint ``model_dir`` evaluated on its data (its card), its users cut into ``shards``
    (local: default 1; ray: one actor per shard, default one per CPU of the cluster); the metrics equal
    ``evaluate.evaluate`` on the whole split. Returns the figures and how they were made."""
    from .evaluate import MEMORY_MB
    from .models import load_model
    if engine not in batch.ENGINES:
        raise LLMRecError(f"unknown engine {engine!r}; valid choices: {', '.join(batch.ENGINES)}")
    if stage not in ("test", "valid"):
        raise LLMRecError(f"stage must be 'test' or 'valid', got {stage!r}")
    if shards is not None and shards < 1:
        raise LLMRecError(f"shards must be at least 1, got {shards}")
    if engine == "ray":
        batch._import_ray()
    model_dir = Path(model_dir).resolve()
    model = load_model(model_dir)
    data_source(model)  # refusals before any worker starts
    n_items = len(model.catalog)
    if max(ks) > n_items:
        raise LLMRecError(f"k={max(ks)} is larger than the catalogue ({n_items:,} items)")
    n_users, memory_mb = len(model.users), memory_mb or MEMORY_MB
    t0 = time.perf_counter()
    if engine == "local":
        n = shards or 1
        bounds = np.linspace(0, n_users, n + 1).astype(int)
        parts = [Shard(str(model_dir), int(a), int(b), stage) for a, b in zip(bounds[:-1], bounds[1:])]
        cand = _candidates([p.items() for p in parts], n_items)
        results = [p.sums(cand, ks, memory_mb) for p in parts]
    else:
        ray, started = batch.connect(address, num_cpus)
        try:
            n = min(shards or max(1, int(ray.cluster_resources().get("CPU", 1))), max(1, n_users))
            bounds = np.linspace(0, n_users, n + 1).astype(int)
            actor = ray.remote(num_cpus=1)(Shard)
            parts = [actor.remote(str(model_dir), int(a), int(b), stage, threads=1)
                     for a, b in zip(bounds[:-1], bounds[1:])]
            cand = _candidates(ray.get([p.items.remote() for p in parts]), n_items)
            results = ray.get([p.sums.remote(cand, ks, memory_mb) for p in parts])
        except ray.exceptions.RayTaskError as e:  # a shard's LLMRecError, raised again here
            if isinstance(e.cause, LLMRecError):
                raise e.cause from None
            raise
        finally:
            if started:
                ray.shutdown()
    users = sum(r["users"] for r in results)
    if not users:
        raise LLMRecError("no user has 3 or more interactions: nothing to evaluate")
    n_cand = int(np.unpackbits(cand, count=n_items).sum())
    out: dict[str, float] = {}
    for k in ks:
        for m in ("HR", "NDCG", "MRR"):
            out[f"{m}@{k}"] = sum(r[k][m] for r in results) / users
        top = np.unique(np.concatenate([r[k]["top"] for r in results]))
        out[f"Coverage@{k}"] = float(len(top) / n_cand) if n_cand else 0.0
    protocol = next(r["protocol"] for r in results if r["users"])
    return {"model": model.name, "model_dir": str(model_dir), "engine": engine, "shards": n, "metrics": out,
            "users_evaluated": users, "candidates": n_cand, "seconds": round(time.perf_counter() - t0, 3),
            "protocol": f"{protocol}; stage={stage}; users in {n} shard(s), per-shard sums combined"}


def _candidates(present: list[np.ndarray], n_items: int) -> np.ndarray:
    """The items with an interaction in any shard, as packed bits (n_items / 8 bytes to each worker)."""
    mask = np.zeros(n_items, bool)
    for p in present:
        mask[p] = True
    return np.packbits(mask)
