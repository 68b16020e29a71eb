"""Ranking metrics as pure functions of the target's rank (0 = first) or of top-K lists.

With one target per user, HR@K equals Recall@K. A rank of ``-1`` or ``>= K`` counts as a miss.
"""

from __future__ import annotations

import numpy as np


def _ranks(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.int64)
    return np.where(r < 0, np.iinfo(np.int64).max, r)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target ranks in the top ``k``."""
    r = _ranks(ranks)
    return float(np.mean(r < k)) if len(r) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean of 1 / log2(rank + 2) over users whose target is in the top ``k`` (0 otherwise)."""
    r = _ranks(ranks)
    if not len(r):
        return 0.0
    gains = np.zeros(len(r))
    hit = r < k
    gains[hit] = 1.0 / np.log2(r[hit] + 2.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, cut at ``k``."""
    r = _ranks(ranks)
    if not len(r):
        return 0.0
    rr = np.zeros(len(r))
    hit = r < k
    rr[hit] = 1.0 / (r[hit] + 1.0)
    return float(rr.mean())


def coverage(topk: np.ndarray, n_items: int, k: int) -> float:
    """Share of the ``n_items`` candidate items that appear in at least one user's top ``k``."""
    topk = np.asarray(topk)
    if topk.size == 0 or n_items == 0:
        return 0.0
    return float(len(np.unique(topk[:, :k])) / n_items)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each row's target among that row's scores (0 = best).

    scores: float [b, n] with excluded items at -inf; targets: int [b]. Ties are broken by item index
    (as a stable sort by descending score would), so a model that scores everything equal gets no
    credit for it. A target whose score is -inf (excluded) gets rank -1 (a miss).
    """
    b = np.arange(len(targets))
    t = scores[b, targets][:, None]
    idx = np.arange(scores.shape[1])[None, :]
    better = (scores > t) | ((scores == t) & (idx < targets[:, None]))
    ranks = better.sum(axis=1)
    return np.where(np.isneginf(t[:, 0]), -1, ranks)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` ids and scores per row, best first, ties by lower index. scores: [b, n]."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    return ids, np.take_along_axis(scores, ids, axis=1)
