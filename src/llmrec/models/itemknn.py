"""Item-item cosine nearest neighbours over the binary user-item matrix (Sarwar et al., 2001).

score(u, i) = sum over items h in u's history of sim(h, i), where sim(h, .) holds h's ``neighbors``
most similar items (0 keeps all) by cosine cooc(h, i) / (|h| |i| + shrinkage), ties to the lower item
index. Each item's row is computed on its own by a compiled kernel (numba) that counts its
co-occurrences into one dense array and keeps the top neighbours in a heap as it reads them, so no
co-occurrence matrix is ever held: memory grows with items x neighbors, never items^2. scipy's
sparse product would write every co-occurrence out first (645M entries on Book-Crossing, for 11.5M
kept): the kernel fits Book-Crossing in about half its time.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..config import Checked, option, usable_cores
from .base import Recommender

DENSE_MAX_ITEMS = 8192  # up to here a dense copy of the similarities (<= 256 MB) serves single queries
BLOCK_PRODUCTS = 1 << 22  # neighbors=0 (keep all): co-occurrence products per block of rows


@dataclass(frozen=True)
class ItemKNNConfig(Checked):
    neighbors: int = option(40, ge=0)  # 0 keeps all
    shrinkage: float = option(0.0, ge=0.0)
    threads: int = option(0, ge=0)  # threads computing the similarities (0: every core)

    SEARCH_SPACE = {"neighbors": ("int", 5, 400, True), "shrinkage": ("float", 0.0, 50.0, False)}


class ItemKNN(Recommender):
    name = "itemknn"
    Config = ItemKNNConfig
    fresh_scores = True  # every call builds its scores anew (a dense sparse product or a row sum)

    def _fit(self, data, train, split, progress) -> None:
        x = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (train.user, train.item)),
                          shape=(data.n_users, data.n_items))
        self.sim = cosine_top_n(x, self.config.neighbors, self.config.shrinkage, threads=self.config.threads)
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


def cosine_top_n(x: sp.spmatrix, neighbors: int, shrinkage: float = 0.0, threads: int = 0,
                 block_products: int = BLOCK_PRODUCTS) -> sp.csr_matrix:
    """Item-item cosine of the binary matrix ``x`` [users, items] (repeats count once), the diagonal
    left out, each row cut to its ``neighbors`` largest entries (0 keeps all; ties to the lower item
    index). float32 csr [items, items].

    With neighbors > 0 the rows are computed by ``knn_kernel.top_n_rows`` on ``threads`` threads (0: every
    core), each thread taking rows of about equal work, in about 8 bytes x items per thread plus the
    result. With 0 the full similarity rows are products X[:, B].T @ X over blocks B of rows holding
    at most ``block_products`` multiply-adds.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    x.sum_duplicates()
    x.data[:] = 1.0
    xt = x.T.tocsr()  # items x users
    n_items = x.shape[1]
    counts = np.diff(xt.indptr)
    norms = np.sqrt(counts.astype(np.float32))
    todo = np.flatnonzero(counts > 0)
    work = np.rint(xt[todo] @ np.diff(x.indptr).astype(np.float64)).astype(np.int64)  # products per row
    if neighbors == 0:
        return _all_pairs(x, xt, todo, work, norms, shrinkage, block_products)
    neighbors = min(neighbors, max(n_items - 1, 1))  # the result holds rows x neighbors places
    threads = threads or usable_cores()
    ends = np.cumsum(work)
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, threads) / threads) if len(todo) else []
    parts = np.split(todo, cuts)
    args = (xt.indptr.astype(np.int64), xt.indices.astype(np.int32), x.indptr.astype(np.int64),
            x.indices.astype(np.int32), norms, neighbors, np.float32(shrinkage))
    from .knn_kernel import top_n_rows  # numba, imported only here: about 110 MB once loaded
    with ThreadPoolExecutor(max_workers=threads) as pool:  # the kernel releases the GIL
        done = list(pool.map(lambda rows: top_n_rows(rows, *args), parts))
    cols = np.concatenate([c for c, _ in done]) if done else np.zeros((0, neighbors), np.int32)
    vals = np.concatenate([v for _, v in done]) if done else np.zeros((0, neighbors), np.float32)
    del done
    lens = (cols >= 0).sum(axis=1)  # a row's places are filled first: the -1 padding is at its end
    indptr = np.zeros(n_items + 1, np.int64)
    indptr[todo + 1] = lens
    np.cumsum(indptr, out=indptr)
    keep = cols >= 0
    sim = sp.csr_matrix((vals[keep], cols[keep], indptr), shape=(n_items, n_items))
    sim.sort_indices()
    return sim


def _all_pairs(x, xt, todo, work, norms, shrinkage, block_products) -> sp.csr_matrix:
    """Every non-zero cosine (neighbors=0), diagonal left out: products over blocks of rows."""
    parts = []
    ends = np.cumsum(work)
    start = 0
    while start < len(todo):
        stop = int(np.searchsorted(ends, ends[start] - work[start] + block_products, side="right"))
        stop = min(max(stop, start + 1), len(todo))
        co = (xt[todo[start:stop]] @ x).tocoo()
        rows = todo[start:stop][co.row]
        vals = norms[co.col] * norms[rows]
        if shrinkage:
            vals += np.float32(shrinkage)
        np.maximum(vals, np.float32(1e-12), out=vals)
        np.divide(co.data, vals, out=vals)
        off = rows != co.col
        parts.append((rows[off], co.col[off], vals[off]))
        start = stop
    rows, cols, vals = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(3))
    n = x.shape[1]
    sim = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n, n), dtype=np.float32)
    sim.sort_indices()
    return sim


def warm_up() -> float:
    """Compile the similarity kernel (or load it from numba's on-disk cache); the seconds it took."""
    t = time.perf_counter()
    cosine_top_n(sp.csr_matrix(np.ones((2, 2), np.float32)), 1, threads=1)
    return round(time.perf_counter() - t, 3)
