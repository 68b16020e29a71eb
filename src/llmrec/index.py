"""Vector indexes behind one interface: ``search(queries, k, exclude) -> (ids int64 [b, k], scores float32
[b, k])``, best first, higher score = more similar.

Metrics: ``cosine`` (vectors L2-normalised for you, score = cosine), ``dot`` (score = inner product),
``euclidean`` (score = -L2 distance). ``exclude``: per query, item ids never to return (a user's history).
Rows with fewer than k results are padded with id -1 and score -inf.

- ``ExactIndex``: batched matrix products; the reference.
- ``FaissIndex``: FAISS HNSW (``"hnsw"``) or IVF (``"ivf"``), approximate; tested against the exact one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import LLMRecError

METRICS = ("cosine", "dot", "euclidean")


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (the founding document's worked example gives 0.99586)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def similarity(queries: np.ndarray, items: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """float32 [b, n]: each query against every item (higher = more similar)."""
    _check_metric(metric)
    q, x = _as_f32(queries), _as_f32(items)
    if metric == "cosine":
        q, x = _normalize(q), _normalize(x)
    if metric == "euclidean":
        d2 = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
        return -np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)
    return (q @ x.T).astype(np.float32)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise LLMRecError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")


def _as_f32(x) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise LLMRecError(f"expected a 2-d array of vectors, got shape {x.shape}")
    return x


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    s = np.take_along_axis(scores, part, 1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(s, order, 1)


def _pad(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, scores = ids.astype(np.int64), scores.astype(np.float32)
    ids[~np.isfinite(scores)] = -1
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.concatenate([ids, np.full((len(ids), pad), -1, np.int64)], 1)
        scores = np.concatenate([scores, np.full((len(scores), pad), -np.inf, np.float32)], 1)
    return ids, scores


class Index:
    """Base: ``add(vectors)`` then ``search``. ``vectors`` float32 [n, d]; ids are row numbers."""

    kind = "?"

    def __init__(self, metric: str = "cosine"):
        _check_metric(metric)
        self.metric = metric
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, vectors: np.ndarray) -> Index:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _check_search(self, queries, k, exclude) -> np.ndarray:
        q = _as_f32(queries)
        if k < 1:
            raise LLMRecError(f"k must be at least 1, got {k}")
        if exclude is not None and len(exclude) != len(q):
            raise LLMRecError(f"exclude has {len(exclude)} rows for {len(q)} queries")
        return _normalize(q) if self.metric == "cosine" else q


class ExactIndex(Index):
    """Brute force in batches: the exact answer."""

    kind = "exact"

    def __init__(self, metric: str = "cosine", batch_size: int = 1024):
        super().__init__(metric)
        self.vectors = np.zeros((0, 0), np.float32)
        self.batch_size = batch_size

    def add(self, vectors):
        x = _as_f32(vectors)
        if self.metric == "cosine":
            x = _normalize(x)
        self.vectors = x if self.n == 0 else np.concatenate([self.vectors, x])
        self.n = len(self.vectors)
        return self

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """float32 [b, n]: every item's score for each query."""
        q = _as_f32(queries)
        return similarity(_normalize(q) if self.metric == "cosine" else q, self.vectors,
                          "dot" if self.metric == "cosine" else self.metric)

    def search(self, queries, k, exclude=None):
        q = self._check_search(queries, k, exclude)
        ids_out, sc_out = [], []
        for start in range(0, len(q), self.batch_size):
            s = self.scores(q[start:start + self.batch_size])
            if exclude is not None:
                for r, ex in enumerate(exclude[start:start + self.batch_size]):
                    s[r, np.asarray(ex, np.int64)] = -np.inf
            ids, sc = _top(s, k)
            ids_out.append(ids)
            sc_out.append(sc)
        if not ids_out:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return _pad(np.concatenate(ids_out), np.concatenate(sc_out), k)


class FaissIndex(Index):
    """FAISS HNSW-Flat or IVF-Flat. ``hnsw_m``/``ef_search`` and ``nlist``/``nprobe`` trade speed for recall;
    the defaults give recall@10 >= 0.95 against the exact index on 100k random 64-d vectors."""

    def __init__(self, metric: str = "cosine", kind: str = "hnsw", hnsw_m: int = 32,
                 ef_construction: int = 80, ef_search: int = 128, nlist: int | None = None, nprobe: int = 16):
        super().__init__(metric)
        try:
            import faiss
        except ImportError as e:
            raise LLMRecError(f"approximate indexes need faiss ({e}): pip install 'llmrec[llm]'") from None
        if kind not in ("hnsw", "ivf"):
            raise LLMRecError(f"unknown index kind {kind!r}; valid: exact, hnsw, ivf")
        self.faiss, self.kind = faiss, kind
        self.params = dict(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
                           nlist=nlist, nprobe=nprobe)
        self.index = None

    def _faiss_metric(self):
        return self.faiss.METRIC_L2 if self.metric == "euclidean" else self.faiss.METRIC_INNER_PRODUCT

    def add(self, vectors):
        faiss = self.faiss
        x = _as_f32(vectors)
        if self.metric == "cosine":
            x = _normalize(x)
        if self.index is None:
            d, p = x.shape[1], self.params
            if self.kind == "hnsw":
                self.index = faiss.IndexHNSWFlat(d, p["hnsw_m"], self._faiss_metric())
                self.index.hnsw.efConstruction = p["ef_construction"]
                self.index.hnsw.efSearch = p["ef_search"]
            else:
                nlist = p["nlist"] or max(1, int(4 * np.sqrt(len(x))))
                quant = faiss.IndexFlatIP(d) if self._faiss_metric() == faiss.METRIC_INNER_PRODUCT \
                    else faiss.IndexFlatL2(d)
                self.index = faiss.IndexIVFFlat(quant, d, nlist, self._faiss_metric())
                self.index.train(x)
                self.index.nprobe = p["nprobe"]
                self._quantizer = quant  # keep it alive: the IVF index holds a raw pointer
        self.index.add(x)
        self.n = self.index.ntotal
        return self

    def search(self, queries, k, exclude=None):
        q = self._check_search(queries, k, exclude)
        if self.index is None:
            return _pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        kk = min(self.n, k + extra)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.params["ef_search"], kk)
        dist, ids = self.index.search(q, kk)
        scores = -np.sqrt(np.maximum(dist, 0)) if self.metric == "euclidean" else dist
        scores = scores.astype(np.float32)
        scores[ids < 0] = -np.inf
        if exclude is not None:
            for r, ex in enumerate(exclude):
                if len(ex):
                    scores[r, np.isin(ids[r], np.asarray(ex, np.int64))] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")
            ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
        return _pad(ids[:, :k], scores[:, :k], k)


def make(kind: str = "exact", metric: str = "cosine", **params) -> Index:
    """An empty index: ``exact``, ``hnsw`` or ``ivf``."""
    if kind == "exact":
        return ExactIndex(metric, **params)
    return FaissIndex(metric, kind, **params)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum())
            for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


__all__ = ["METRICS", "ExactIndex", "FaissIndex", "Index", "cosine", "make", "recall_at_k", "similarity"]
