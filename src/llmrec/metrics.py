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
    return _mean_gain(ranks, k, lambda r: 1.0 / np.log2(r + 2.0))


def mrr(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, cut at ``k``."""
    return _mean_gain(ranks, k, lambda r: 1.0 / (r + 1.0))


def _mean_gain(ranks: np.ndarray, k: int, gain) -> float:
    """Mean over users of ``gain(rank)`` for a target in the top ``k``, 0 for the others."""
    r = _ranks(ranks)
    if not len(r):
        return 0.0
    out = np.zeros(len(r))
    hit = r < k
    out[hit] = gain(r[hit])
    return float(out.mean())


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
    targets = np.asarray(targets, dtype=np.int64)
    t = scores[np.arange(len(targets)), targets]
    ranks = np.count_nonzero(scores > t[:, None], axis=1).astype(np.int64)
    for r in np.flatnonzero(np.isfinite(t)):  # ties ahead of the target: lower indices only
        ranks[r] += np.count_nonzero(scores[r, :targets[r]] == t[r])
    return np.where(np.isneginf(t), -1, ranks)


STRIDES = 64  # top-k: the row is cut into this many strided slices; their maxima bound the k-th value


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` ids and scores per row, best first, ties to the lower index (as a stable sort by
    descending score). scores: [b, n]; no [b, n] index array is made.

    The k-th largest of any k distinct entries is at most the row's k-th largest value; taking, column
    by column, the maximum over ``STRIDES`` slices of the row gives such entries in one pass. The
    entries at or above that bound hold the top k and every tie with it, and are sorted exactly. Rows
    where the bound leaves too many (a flat row) are resolved from their k-th largest value.
    """
    b, n = scores.shape
    k = min(k, n)
    ids = np.zeros((b, k), np.int64)
    if k == 0 or b == 0:
        return ids, np.zeros((b, k), scores.dtype)
    width = n // STRIDES
    flat = np.ones(b, bool)
    bound = np.full(b, np.nan, scores.dtype)
    if width >= 4 * k:
        maxima = scores[:, :width].copy()  # slice by slice: no copy of the whole block
        for i in range(1, STRIDES):
            np.maximum(maxima, scores[:, i * width:(i + 1) * width], out=maxima)
        bound = np.partition(maxima, width - k, axis=1)[:, width - k]
        cand = scores >= bound[:, None]
        flat = np.count_nonzero(cand, axis=1) > 4 * k * STRIDES
        cand[flat] = False
        rows, cols = np.divmod(np.flatnonzero(cand), n)
        del cand
        sharp = np.flatnonzero(~flat)
        order = np.lexsort((cols, -scores[rows, cols], rows))
        rows, cols = rows[order], cols[order]
        ids[sharp] = cols[np.searchsorted(rows, sharp)[:, None] + np.arange(k)[None, :]]
    for r in np.flatnonzero(flat):
        ids[r] = _row_top_k(scores[r], k, bound[r])
    return ids, np.take_along_axis(scores, ids, axis=1)


def top_k_excluding(scores: np.ndarray, k: int, exclude: list[np.ndarray] | None = None,
                    candidates: np.ndarray | None = None, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The one top-k with exclusion and padding: per row of ``scores`` [b, n], the ``k`` best item
    indices int64 [b, k] and scores float32 [b, k], best first, ties to the lower index (``top_k``).
    ``exclude[b]``: indices row b never returns; ``candidates``: bool [n] of the items allowed. Slots
    with nothing left to return (k > allowed items) hold id -1 and score -inf. ``copy=False`` lets the
    exclusions be written into ``scores`` itself."""
    scores = np.array(scores, dtype=np.float32, copy=True) if copy else np.asarray(scores, np.float32)
    for b, e in enumerate(exclude or ()):
        scores[b, e] = -np.inf
    if candidates is not None:
        scores[:, ~np.asarray(candidates, bool)] = -np.inf
    return pad_top_k(*top_k(scores, k), k)


def pad_top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A top-k answer (ids [b, <= k], scores) with -inf entries and missing slots as id -1 / score -inf,
    widened to k columns: int64 [b, k], float32 [b, k]."""
    ids, scores = np.asarray(ids, np.int64).copy(), np.asarray(scores, np.float32)
    ids[~np.isfinite(scores) | (ids < 0)] = -1
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.concatenate([ids, np.full((len(ids), pad), -1, np.int64)], 1)
        scores = np.concatenate([scores, np.full((len(scores), pad), -np.inf, np.float32)], 1)
    return ids, scores


def _row_top_k(row: np.ndarray, k: int, bound: float = np.nan) -> np.ndarray:
    """One row's top ``k`` ids, best first, ties to the lower index. ``bound`` (at most the k-th
    largest value, or NaN) is the k-th value itself when fewer than k entries exceed it, the common
    flat row (a few positive scores, the rest 0); otherwise the k-th value comes from a partition."""
    above = np.flatnonzero(row > bound) if bound == bound else np.zeros(0, np.int64)
    kth = bound
    if bound != bound or len(above) >= k:
        kth = np.partition(row, len(row) - k)[len(row) - k]
        above = np.flatnonzero(row > kth)
    ids = np.concatenate([above, np.flatnonzero(row == kth)[:k - len(above)]])
    return ids[np.lexsort((ids, -row[ids]))]


# -- beyond accuracy: what the top-k lists hold, whatever the targets ------------------------------------
def _lists(topk: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's first ``k`` ids, padding (ids < 0) left out."""
    return [r[r >= 0] for r in np.asarray(topk, np.int64)[:, :k]]


def intra_list_diversity(topk: np.ndarray, vectors: np.ndarray, k: int) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cosine) between a list's first ``k``
    items; ``vectors`` [n_items, d] (normalised here). Lists of fewer than two items are left out."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out = []
    for r in _lists(topk, k):
        n = len(r)
        if n < 2:
            continue
        v = unit[r]
        sims = v @ v.T
        off = sims.sum() - np.trace(sims)  # the pairs i != j
        out.append(float(1.0 - off / (n * (n - 1))))
    return float(np.mean(out)) if out else 0.0


def novelty(topk: np.ndarray, users_per_item: np.ndarray, n_users: int, k: int) -> float:
    """Mean self-information -log2 p(i) of the recommended items (each of a list's first ``k``), with
    p(i) the share of the ``n_users`` training users who interacted with i; an item no one did counts as
    one user (the largest value, log2 n_users)."""
    p = np.maximum(np.asarray(users_per_item, np.float64), 1.0) / max(n_users, 1)
    vals = [-np.log2(p[r]) for r in _lists(topk, k)]
    flat = np.concatenate(vals) if vals else np.zeros(0)
    return float(flat.mean()) if len(flat) else 0.0


def average_popularity(topk: np.ndarray, popularity: np.ndarray, k: int) -> float:
    """ARP: mean over lists of the mean training popularity (interaction count) of a list's first ``k``."""
    pop = np.asarray(popularity, np.float64)
    rows = [pop[r].mean() for r in _lists(topk, k) if len(r)]
    return float(np.mean(rows)) if rows else 0.0


def short_head(popularity: np.ndarray, candidates: np.ndarray | None = None, share: float = 0.2) -> np.ndarray:
    """bool [n_items]: the most popular ``share`` of the candidate items (ceil of it), by training
    popularity, ties to the lower index."""
    pop = np.asarray(popularity, np.float64)
    cand = np.ones(len(pop), bool) if candidates is None else np.asarray(candidates, bool)
    idx = np.flatnonzero(cand)
    n = int(np.ceil(share * len(idx)))
    order = idx[np.lexsort((idx, -pop[idx]))][:n]
    head = np.zeros(len(pop), bool)
    head[order] = True
    return head


def head_share(topk: np.ndarray, head: np.ndarray, k: int) -> float:
    """Share of all recommended slots (a list's first ``k``) that hold a short-head item."""
    vals = [np.asarray(head)[r] for r in _lists(topk, k)]
    flat = np.concatenate(vals) if vals else np.zeros(0, bool)
    return float(flat.mean()) if len(flat) else 0.0
