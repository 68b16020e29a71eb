"""Item-item cosine nearest neighbours over the binary user-item matrix (Sarwar et al., 2001).

score(u, i) = sum over items h in u's history of sim(h, i), where sim(h, .) holds h's ``neighbors``
most similar items (0 keeps all) by cosine cooc(h, i) / (|h| |i| + shrinkage), ties to the lower item
index. The similarities are computed as a sparse product in blocks of items (X[:, B].T @ X), each cut
to its top neighbours before the next, so memory grows with items x neighbors, never items^2. Items
that one user alone has (58% of Book-Crossing's) skip the product: their row is that user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from .base import Recommender

DENSE_MAX_ITEMS = 8192  # up to here a dense copy of the similarities (<= 256 MB) serves single queries
BLOCK_PRODUCTS = 1 << 19  # co-occurrence products per block (about 40 bytes each at peak: ~21 MB; blocks
# that stay in cache: Book-Crossing fits in 15.3 s against 18.0 s with 1 << 22, load 0.7-1.7)


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbors: int = 40
    shrinkage: float = 0.0

    def __post_init__(self):
        if self.neighbors < 0 or self.shrinkage < 0:
            raise ConfigError(f"ItemKNNConfig: neighbors and shrinkage must be >= 0, got "
                              f"{self.neighbors} and {self.shrinkage}")


class ItemKNN(Recommender):
    name = "itemknn"
    Config = ItemKNNConfig
    fresh_scores = True  # every call builds its scores anew (a dense sparse product or a row sum)

    def _fit(self, data, train, split, progress) -> None:
        x = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (train.user, train.item)),
                          shape=(data.n_users, data.n_items))
        self.sim = cosine_top_n(x, self.config.neighbors, self.config.shrinkage)
        self._dense = None

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        n = self.sim.shape[0]
        if len(histories) == 1 and n <= DENSE_MAX_ITEMS:  # one query (serving): sum dense rows
            h = histories[0]
            h = h[h < n]
            if getattr(self, "_dense", None) is None or self._dense.shape[0] != n:
                self._dense = self.sim.toarray()
            scores = self._dense[h].sum(axis=0, dtype=np.float32)[None, :]
            total = len(self.catalog)
            return np.pad(scores, ((0, 0), (0, total - n))) if total > n else scores
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
        keep = cols < n  # items added after fitting have no co-occurrence yet
        h = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
                          shape=(len(histories), n))
        scores = (h @ self.sim).toarray().astype(np.float32, copy=False)
        total = len(self.catalog)
        if total > n:
            scores = np.pad(scores, ((0, 0), (0, total - n)))
        return scores

    def _search(self, hist, k, banned):
        """Exact top-k without a dense row of every item: only the items the history's neighbour lists
        reach can score above 0; the rest score 0 and, as in the dense ranking, fill any remaining places
        lowest index first. Used above ``DENSE_MAX_ITEMS`` items, where the dense row and its top-k cost
        more than the sparse product."""
        total = len(self.catalog)
        if total <= DENSE_MAX_ITEMS:
            return None
        n = self.sim.shape[0]
        rows = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
        cols = np.concatenate(hist) if hist else np.zeros(0, np.int64)
        keep = cols < n
        h = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=(len(hist), n))
        s = (h @ self.sim).tocsr()
        ids = np.full((len(hist), k), -1, np.int64)
        top = np.full((len(hist), k), -np.inf, np.float32)
        for r in range(len(hist)):
            c, v = s.indices[s.indptr[r]:s.indptr[r + 1]], s.data[s.indptr[r]:s.indptr[r + 1]]
            ok = (v > 0) & ~np.isin(c, banned[r])
            c, v = c[ok], v[ok]
            order = np.lexsort((c, -v))[:k]  # score down, then index up: the dense top-k's tie rule
            m = len(order)
            ids[r, :m], top[r, :m] = c[order], v[order]
            if m < k:
                taken = np.union1d(np.asarray(banned[r], np.int64), c)
                fill = np.setdiff1d(np.arange(min(total, k + len(taken))), taken)[:k - m]
                ids[r, m:m + len(fill)], top[r, m:m + len(fill)] = fill, 0.0
        return ids, top

    def explain_items(self, history, items) -> list[dict]:
        out = []
        for i in items:
            if i >= self.sim.shape[0] or len(history) == 0:
                out.append({"because": []})
                continue
            h = np.unique(history[history < self.sim.shape[0]])  # an item seen twice is one reason
            s = np.asarray(self.sim[h][:, [i]].todense()).ravel()
            top = np.argsort(-s, kind="stable")[:3]
            top = [j for j in top if s[j] > 0]
            titles = self.catalog.titles(h[top]) if top else []
            out.append({"because": [{"item_id": self.catalog.ids.id(h[j]), "title": t,
                                     "similarity": round(float(s[j]), 4)} for j, t in zip(top, titles)]})
        return out

    def _state(self):
        s = self.sim.tocsr()
        return {"indptr": s.indptr.astype(np.int64), "indices": s.indices.astype(np.int64),
                "data": s.data.astype(np.float32), "shape": np.array(s.shape, dtype=np.int64)}

    def _load_state(self, state, folder: Path) -> None:
        self.sim = sp.csr_matrix((state["data"], state["indices"], state["indptr"]),
                                 shape=tuple(state["shape"]))
        self._dense = None



def cosine_top_n(x: sp.spmatrix, neighbors: int, shrinkage: float = 0.0,
                 block_products: int = BLOCK_PRODUCTS) -> sp.csr_matrix:
    """Item-item cosine of the binary matrix ``x`` [users, items] (repeats count once), the diagonal
    left out, each row cut to its ``neighbors`` largest entries (0 keeps all; ties to the lower item
    index). float32 csr [items, items].

    Rows are computed in blocks B (X[:, B].T @ X) holding at most ``block_products`` multiply-adds
    (one item alone may exceed it), so peak memory is one block plus items x neighbors.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    x.sum_duplicates()
    x.data[:] = 1.0
    xt = x.T.tocsr()  # items x users
    n_items = x.shape[1]
    counts = np.diff(xt.indptr)
    norms = np.sqrt(counts.astype(np.float32))
    parts = []
    todo = np.flatnonzero(counts >= (2 if neighbors > 0 else 1))
    if neighbors > 0:  # items with one user: one shared row per user, none of their products
        parts.append(_single_user_top_n(x, xt, counts, norms, neighbors, shrinkage))
    xs = xt[todo]
    work = np.rint(xs @ np.diff(x.indptr).astype(np.float64)).astype(np.int64)  # products per item row
    ends = np.cumsum(work)
    start = 0
    while start < len(todo):
        stop = int(np.searchsorted(ends, ends[start] - work[start] + block_products, side="right"))
        stop = min(max(stop, start + 1), len(todo))
        parts.append(_block_top_n(xs[start:stop] @ x, todo[start:stop], norms, neighbors, shrinkage))
        start = stop
    # one array at a time, each part's pieces freed as they are joined: peak about twice the result
    rows, cols, vals = ([p[i] for p in parts] for i in range(3))
    del parts
    rows = np.concatenate(rows) if rows else np.zeros(0, x.indices.dtype)
    cols = np.concatenate(cols) if cols else np.zeros(0, x.indices.dtype)
    vals = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    sim = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    del rows, cols, vals
    sim.sort_indices()
    return sim


def _single_user_top_n(x: sp.csr_matrix, xt: sp.csr_matrix, counts: np.ndarray, norms: np.ndarray,
                       k: int, shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of the top ``k`` of every item that one user alone has: its co-occurrences
    are that user's items, each once, so its row is the user's row of cosines 1 / (|j| + shrinkage),
    shared by all the user's single-user items. Each takes the user's top k + 1 less itself (or less
    the last one when it is not among them)."""
    single = np.flatnonzero(counts == 1)
    owner = xt.indices[xt.indptr[single]]
    users = np.unique(owner)
    xu = x[users]
    lens = np.diff(xu.indptr)
    local = np.repeat(np.arange(len(users), dtype=np.int64), lens)
    cols = xu.indices
    vals = norms[cols]  # times the single item's norm, 1
    if shrinkage:
        vals += np.float32(shrinkage)
    np.maximum(vals, np.float32(1e-12), out=vals)
    np.divide(xu.data, vals, out=vals)
    sel = _top_k_per_row(local, cols, vals, len(users), k + 1)
    local, cols, vals = local[sel], cols[sel], vals[sel]
    order = np.lexsort((cols, -vals, local))  # each user's top k + 1, best first
    local, cols, vals = local[order], cols[order], vals[order]
    n_top = np.bincount(local, minlength=len(users))
    first = np.cumsum(n_top) - n_top
    reps = n_top[np.searchsorted(users, owner)]  # one copy of its user's list per single item
    starts = np.cumsum(reps) - reps
    item = np.repeat(np.arange(len(single)), reps)
    pos = np.repeat(first[np.searchsorted(users, owner)] - starts, reps) + np.arange(len(item))
    keep = cols[pos] != single[item]
    kept = np.concatenate([[0], np.cumsum(keep)])
    keep &= kept[1:] - 1 - kept[starts][item] < k  # rank among the kept entries of the item's list
    return single[item[keep]].astype(cols.dtype), cols[pos[keep]], vals[pos[keep]]


def _block_top_n(co: sp.csr_matrix, items: np.ndarray, norms: np.ndarray, k: int,
                 shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of the top ``k`` per row (diagonal left out) of one block of co-occurrence
    rows (of ``items``, in that order)."""
    m = co.shape[0]
    lens = np.diff(co.indptr)
    cols = co.indices
    local = np.repeat(np.arange(m, dtype=cols.dtype), lens)
    vals = norms[cols]
    vals *= np.repeat(norms[items], lens)
    if shrinkage:
        vals += np.float32(shrinkage)
    np.maximum(vals, np.float32(1e-12), out=vals)
    np.divide(co.data, vals, out=vals)
    vals[cols == np.repeat(items.astype(cols.dtype), lens)] = -1.0  # the diagonal (cosines >= 0): never kept
    thr = np.full(m, -0.5, np.float32)  # entries below a row's threshold cannot be among its top k
    big = np.flatnonzero(lens >= 8 * k) if k > 0 else np.zeros(0, np.int64)
    if len(big):  # the k-th largest of the maxima of 4k slices of the row: k distinct entries' value
        c = 4 * k
        starts = co.indptr[big][:, None] + (lens[big][:, None] * np.arange(c)[None, :]) // c
        idx = np.concatenate([starts, co.indptr[big + 1][:, None]], axis=1).ravel()
        idx = idx[:-1] if idx[-1] >= len(vals) else idx  # segments end at the next index
        maxima = np.maximum.reduceat(vals, idx)
        maxima = np.pad(maxima, (0, len(big) * (c + 1) - len(maxima))).reshape(len(big), c + 1)[:, :c]
        thr[big] = np.partition(maxima, c - k, axis=1)[:, c - k]
    sel = np.flatnonzero(vals >= np.repeat(thr, lens))
    local, cols, vals = local[sel], cols[sel], vals[sel]
    if k > 0:
        sel = _top_k_per_row(local, cols, vals, m, k)
        local, cols, vals = local[sel], cols[sel], vals[sel]
    return items[local].astype(cols.dtype), cols, vals


def _top_k_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, m: int, k: int) -> np.ndarray:
    """Positions of each row's k largest values (ties to the lower column) among entries grouped by
    row (rows in 0..m-1, non-decreasing; values >= 0)."""
    # one int64 key per entry, unique within a row: the value's bits (monotone for floats >= 0) high,
    # the column's complement low; a row's k largest keys are its top k
    key = vals.view(np.int32).astype(np.int64)
    key <<= 32
    key |= np.int64(0xFFFFFFFF) - cols
    lens = np.bincount(rows, minlength=m)
    starts = np.cumsum(lens) - lens
    thr = np.zeros(m, np.int64)  # rows with at most k entries keep them all
    long_rows = np.flatnonzero(lens > k)
    if len(long_rows):
        widths = 1 << np.ceil(np.log2(lens[long_rows])).astype(np.int64)
        for w in np.unique(widths):  # rows padded to a power of two: one partition per width
            grp = long_rows[widths == w]
            pos = starts[grp][:, None] + np.arange(w)[None, :]
            padded = key[np.minimum(pos, len(key) - 1)]
            padded[np.arange(w)[None, :] >= lens[grp][:, None]] = -1
            padded.partition(w - k, axis=1)
            thr[grp] = padded[:, w - k]
    return np.flatnonzero(key >= np.repeat(thr, lens))
