"""Item-item cosine nearest neighbours over the binary user-item matrix (Sarwar et al., 2001).

score(u, i) = sum over items h in u's history of cos(h, i), with each item's similarity list cut to
its ``neighbors`` most similar items (0 keeps all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .base import Recommender

DENSE_MAX_ITEMS = 8192  # up to here a dense copy of the similarities (<= 256 MB) serves single queries


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbors: int = 0
    shrinkage: float = 0.0


class ItemKNN(Recommender):
    name = "itemknn"
    Config = ItemKNNConfig

    def _fit(self, data, train, split, progress) -> None:
        n_users, n_items = data.n_users, data.n_items
        x = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (train.user, train.item)),
                          shape=(n_users, n_items))
        x.data[:] = 1.0  # repeated interactions count once
        x.sum_duplicates()
        x.data[:] = 1.0
        co = (x.T @ x).tocsr().astype(np.float32)
        norms = np.sqrt(co.diagonal()).astype(np.float32)
        co.setdiag(0.0)
        co.eliminate_zeros()
        co = co.tocoo()
        denom = norms[co.row] * norms[co.col] + self.config.shrinkage
        sim = sp.csr_matrix((co.data / np.maximum(denom, 1e-12), (co.row, co.col)), shape=co.shape)
        if self.config.neighbors > 0:
            sim = _keep_top(sim, self.config.neighbors)
        self.sim = sim.astype(np.float32)
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
        scores = np.asarray((h @ self.sim).todense(), dtype=np.float32)
        total = len(self.catalog)
        if total > n:
            scores = np.pad(scores, ((0, 0), (0, total - n)))
        return scores

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


def _keep_top(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries."""
    sim = sim.tocsr()
    rows, cols, vals = [], [], []
    for r in range(sim.shape[0]):
        lo, hi = sim.indptr[r], sim.indptr[r + 1]
        if hi - lo > k:
            sel = np.argpartition(-sim.data[lo:hi], k - 1)[:k] + lo
        else:
            sel = np.arange(lo, hi)
        rows.append(np.full(len(sel), r))
        cols.append(sim.indices[sel])
        vals.append(sim.data[sel])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=sim.shape)
