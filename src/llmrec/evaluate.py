"""The evaluator: every evaluation user, ALL candidate items ranked, history excluded.

Users are scored in blocks of users x all items sized by a memory budget (``memory_mb`` of float32
scores per block), so memory is bounded whatever the catalogue; each user's rank and top-k depend on
that user's row only, so block sizes do not change the figures.

Beyond accuracy (``beyond=True``), per cut-off k, over the top-k lists: ``ILD@k`` intra-list diversity
(mean pairwise 1 - cosine of the items' vectors: the model's ``diversity_vectors`` unless ``vectors`` are
given; the result's ``extra["item_vectors"]`` says which), ``Novelty@k`` (mean -log2 of the share of
training users who had the item), ``ARP@k`` (mean training interactions of the items) and ``Head@k``
(share of the slots held by the 20% most popular candidate items). ``diversity > 0`` re-ranks each user's
top ``rerank.pool`` by MMR before anything is measured, as ``recommend(diversity=...)`` does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import metrics
from .data import Interactions
from .errors import ConfigError, LLMRecError
from .models.base import Recommender
from .split import Split
from .vectors import l2_normalize


@dataclass
class Result:
    metrics: dict[str, float]
    n_users: int
    n_candidates: int
    protocol: str
    seconds: float
    extra: dict = field(default_factory=dict)

    def table(self) -> str:
        rows = [f"{k:>12}  {v:.4f}" for k, v in self.metrics.items()]
        return (f"protocol: {self.protocol}\nusers evaluated: {self.n_users:,}; candidates ranked: "
                f"{self.n_candidates:,}\n" + "\n".join(rows))


def _histories(inter: Interactions, n_users: int) -> list[np.ndarray]:
    return inter.histories(n_users)


def candidate_mask(split: Split, n_items: int) -> np.ndarray:
    """Items that can be ranked: those with at least one interaction anywhere in the log."""
    mask = np.zeros(n_items, dtype=bool)
    mask[split.test_context.item] = True
    mask[split.test_items] = True
    return mask


# float32 scores per block of users x items. Blocks under the C allocator's mmap threshold (32 MiB at
# most) reuse the same memory instead of fresh pages for every block: on Book-Crossing 16 MB blocks
# evaluate 6,000 users in 4.3 s against 6.9-9.0 s with 256 MB (load 2.7-3.3)
MEMORY_MB = 16.0


def block_users(n_items: int, memory_mb: float = MEMORY_MB) -> int:
    """Users per block so that a block's float32 scores [users, n_items] take at most ``memory_mb``
    (at least one user). The ranking's temporaries add about as much again, twice."""
    return max(1, int(memory_mb * 2**20 // (4 * max(n_items, 1))))


def stage_targets(split: Split, stage: str) -> tuple[np.ndarray, np.ndarray, Interactions]:
    """The evaluation users, their targets and the log their histories come from, for ``stage``: "test"
    (history = everything before the test target) or "valid" (history = train)."""
    if stage == "test":
        return split.test_users, split.test_items, split.test_context
    if stage == "valid":
        return split.valid_users, split.valid_items, split.train
    raise LLMRecError(f"stage must be 'test' or 'valid', got {stage!r}")


def rank_targets(model, eval_users: np.ndarray, targets: np.ndarray, hist: list[np.ndarray], cand: np.ndarray,
                 max_k: int, memory_mb: float = MEMORY_MB, stage: str = "test",
                 progress: bool = False, diversity: float = 0.0,
                 vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Each evaluation user's target rank (0 = best) and top ``max_k`` items (int64 [n], [n, max_k]), the
    history and non-candidates excluded, scored in blocks of users; and the block size. ``diversity`` > 0
    re-ranks each user's list by MMR over ``vectors`` (L2-normalised), the target's rank taken in it."""
    from .rerank import mmr, pool
    n_items = len(cand)
    batch_size = block_users(n_items, memory_mb)
    excluded = np.flatnonzero(~cand)
    ranks = np.empty(len(eval_users), dtype=np.int64)
    tops = np.empty((len(eval_users), max_k), dtype=np.int64)
    fresh = isinstance(model, Recommender) and model.fresh_scores
    buffer = None
    bar = tqdm(total=len(eval_users), desc=f"evaluate {stage}", unit="user", disable=not progress,
               leave=False)
    for start in range(0, len(eval_users), batch_size):
        bu = eval_users[start:start + batch_size]
        bh = [hist[u] for u in bu]
        scores = np.asarray(model.score_histories(bh), dtype=np.float32)
        if not fresh:  # the model may hold these scores: write into a copy (one buffer reused)
            if buffer is None or buffer.shape[0] < len(bu) or buffer.shape[1] != scores.shape[1]:
                buffer = np.empty((len(bu), scores.shape[1]), np.float32)
            np.copyto(buffer[:len(bu)], scores)
            scores = buffer[:len(bu)]
        if len(excluded):
            scores[:, excluded] = -np.inf
        rows = np.repeat(np.arange(len(bu)), [len(h) for h in bh])
        scores[rows, np.concatenate(bh) if bh else np.zeros(0, np.int64)] = -np.inf
        ranks[start:start + len(bu)] = metrics.target_ranks(scores, targets[start:start + len(bu)])
        if diversity > 0:
            _diversify(scores, vectors, diversity, pool(max_k, int(cand.sum())), ranks[start:start + len(bu)],
                       tops[start:start + len(bu)], targets[start:start + len(bu)], mmr)
        else:
            tops[start:start + len(bu)] = metrics.top_k(scores, max_k)[0]
        bar.update(len(bu))
    bar.close()
    return ranks, tops, batch_size


def evaluate(model, split: Split, n_users: int, n_items: int, ks: tuple[int, ...] = (10, 20),
             stage: str = "test", memory_mb: float = MEMORY_MB, users: np.ndarray | None = None,
             progress: bool = True, candidates: np.ndarray | None = None, beyond: bool = False,
             diversity: float = 0.0, vectors: np.ndarray | None = None) -> Result:
    """Evaluate ``model`` (anything with ``score_histories(list[int64 array]) -> float32 [b, n_items]``).

    The history and non-candidates are set to -inf in each block's scores: in place when the model is
    a Recommender declaring ``fresh_scores``, else in a copy (one buffer reused across blocks).
    Every k in ``ks`` must be at most ``n_items`` (ConfigError).

    stage: "test" (history = everything before the test target) or "valid" (history = train).
    memory_mb: float32 scores per block of users (the block size; the figures do not depend on it).
    users: an optional subset of evaluation users (internal indices), e.g. a fixed random sample.
    beyond: add ILD, Novelty, ARP and Head at each k (the module's docstring). diversity: MMR's weight
    (0 = off). vectors: float [n_items, d] item vectors for both (default: the model's
    ``diversity_vectors``).
    """
    from .rerank import check_diversity, pool
    diversity = check_diversity(diversity)
    eval_users, targets, context = stage_targets(split, stage)
    if users is not None:
        keep = np.isin(eval_users, users)
        eval_users, targets = eval_users[keep], targets[keep]
    if max(ks) > n_items:
        raise ConfigError(f"evaluate: k={max(ks)} is larger than the catalogue ({n_items:,} items); "
                          f"choose k <= {n_items:,}")
    hist = _histories(context, n_users)
    cand = candidate_mask(split, n_items) if candidates is None else candidates
    source = None
    if beyond or diversity > 0:
        if vectors is None:
            if not isinstance(model, Recommender):
                raise ConfigError("evaluate: beyond-accuracy metrics and diversity need item vectors: pass "
                                  "vectors= for a model that is not a Recommender")
            vectors, source = model.diversity_vectors()
        else:
            source = "the item vectors given to the evaluator"
        vectors = l2_normalize(vectors)
        if len(vectors) < n_items:
            raise ConfigError(f"evaluate: {len(vectors):,} item vectors for {n_items:,} items")
    max_k = max(ks)
    t0 = time.perf_counter()
    ranks, tops, batch_size = rank_targets(model, eval_users, targets, hist, cand, max_k, memory_mb, stage,
                                           progress, diversity, vectors)
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = metrics.hit_rate(ranks, k)
        out[f"NDCG@{k}"] = metrics.ndcg(ranks, k)
        out[f"MRR@{k}"] = metrics.mrr(ranks, k)
        out[f"Coverage@{k}"] = metrics.coverage(tops, int(cand.sum()), k)
    extra: dict = {}
    how = ""
    if beyond:
        train = split.train
        counts = np.bincount(train.item, minlength=n_items)
        pairs = np.unique(np.stack([train.user, train.item]), axis=1)
        users_per_item = np.bincount(pairs[1], minlength=n_items)
        n_train_users = len(np.unique(train.user))
        head = metrics.short_head(counts, cand)
        for k in ks:
            out[f"ILD@{k}"] = metrics.intra_list_diversity(tops, vectors, k)
            out[f"Novelty@{k}"] = metrics.novelty(tops, users_per_item, n_train_users, k)
            out[f"ARP@{k}"] = metrics.average_popularity(tops, counts, k)
            out[f"Head@{k}"] = metrics.head_share(tops, head, k)
        how = (f"; beyond accuracy: ILD = mean pairwise 1 - cosine of {source}, Novelty = mean -log2 share of "
               f"training users with the item, ARP = mean training interactions, Head = share of slots in "
               f"the {int(head.sum()):,} most popular candidates (20%)")
    if diversity > 0:
        how += (f"; MMR re-ranking diversity={diversity:g} over {source}, from each user's top "
                f"{pool(max_k, int(cand.sum()))}")
    if source is not None:
        extra = {"item_vectors": source, "diversity": diversity}
    blocks = (f"scored in blocks of {min(batch_size, max(len(eval_users), 1)):,} users x {n_items:,} items "
              f"({memory_mb:g} MB of scores each), which do not change the figures")
    return Result(metrics=out, n_users=len(eval_users), n_candidates=int(cand.sum()),
                  protocol=split.protocol + f"; stage={stage}; {blocks}{how}", seconds=time.perf_counter() - t0,
                  extra=extra)


def _diversify(scores, vectors, diversity, n_pool, ranks, tops, targets, mmr) -> None:
    """MMR over each row's top ``n_pool``: ``tops`` [b, k] becomes the re-ranked lists (the pool's
    remaining items after MMR's picks when it finds fewer than k) and ``ranks`` the target's place in them;
    a target that MMR moved out of the top k ranks k (a miss at every cut-off)."""
    k = tops.shape[1]
    pids, pscores = metrics.top_k(scores, n_pool)
    for r in range(len(pids)):
        order = mmr(pscores[r], vectors[pids[r]], k, diversity)
        if len(order) < k:
            order = np.concatenate([order, np.setdiff1d(np.arange(len(pids[r])), order)[:k - len(order)]])
        tops[r] = pids[r][order]
        if ranks[r] < 0:  # the target was excluded: a miss whatever the order
            continue
        at = np.flatnonzero(tops[r] == targets[r])
        ranks[r] = at[0] if len(at) else max(ranks[r], k)
