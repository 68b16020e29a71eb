"""Vector indexes behind one interface: ``search(queries, k, exclude) -> (ids int64 [b, k], scores float32
[b, k])``, best first, higher score = more similar.

Metrics: ``cosine`` (vectors L2-normalised for you, score = cosine), ``dot`` (score = inner product),
``euclidean`` (score = -L2 distance). ``exclude``: per query, item ids never to return (a user's history).
Rows with fewer than k results are padded with id -1 and score -inf.

- ``ExactIndex``: matrix products in query batches bounded by memory; the reference.
- ``FaissIndex``: FAISS HNSW (``"hnsw"``) or IVF (``"ivf"``), optionally scalar (SQ8) or product (PQ)
  quantised, approximate; tested against the exact one.
- ``milvus_index.MilvusIndex`` (``"milvus"``): a Milvus collection, local (Milvus Lite) or on a server.

``add`` works after a build (incremental); ``save(path)`` / ``load(path)`` write and read an index (the
FAISS file or a .npy, and a .json description beside it); an index estimated larger than the memory
available is refused before it is built (``MemoryLimitError``, with the estimate).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import LLMRecError
from .metrics import pad_top_k, top_k_excluding
from .vectors import as_unit, l2_normalize


class MemoryLimitError(LLMRecError):
    """The index would not fit in memory: raised before anything is built, with the estimate."""

METRICS = ("cosine", "dot", "euclidean")


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (the worked example in tests/test_index.py gives 0.99586)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def similarity(queries: np.ndarray, items: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """float32 [b, n]: each query against every item (higher = more similar)."""
    _check_metric(metric)
    q, x = _as_f32(queries), _as_f32(items)
    if metric == "cosine":
        q, x = l2_normalize(q), l2_normalize(x)
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


class Index:
    """Base: ``add(vectors)`` then ``search``. ``vectors`` float32 [n, d]; ids are row numbers."""

    kind = "?"
    updates_in_place = False  # True: ``upsert(ids, vectors)`` replaces entries (an updated item needs no rebuild)
    dim: int | None = None  # the vectors' dimension, once known

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

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> Index:
        """Replace the entries of ``ids`` and append new ones (where ``updates_in_place``)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (and ``path.json``), atomically; read back with ``index.load``."""
        raise NotImplementedError

    def _check_search(self, queries, k, exclude) -> np.ndarray:
        q = _as_f32(queries)
        if k < 1:
            raise LLMRecError(f"k must be at least 1, got {k}")
        if exclude is not None and len(exclude) != len(q):
            raise LLMRecError(f"exclude has {len(exclude)} rows for {len(q)} queries")
        return l2_normalize(q) if self.metric == "cosine" else q


class ExactIndex(Index):
    """Brute force: the exact answer. Queries are scored in batches sized so that one batch's scores and
    top-k work stay within ``memory_mb`` (about 16 bytes per query x item), whatever the catalogue size."""

    kind = "exact"

    def __init__(self, metric: str = "cosine", memory_mb: float = 512, batch_size: int | None = None):
        super().__init__(metric)
        self.vectors = np.zeros((0, 0), np.float32)
        self.memory_mb, self.fixed_batch = memory_mb, batch_size

    @property
    def batch_size(self) -> int:
        """Queries per batch: ``batch_size`` when given, else what ``memory_mb`` allows."""
        if self.fixed_batch:
            return self.fixed_batch
        return max(1, int(self.memory_mb * 2 ** 20 // (SCORE_BYTES * max(1, self.n))))

    @property
    def dim(self) -> int | None:
        return self.vectors.shape[1] if self.n else None

    def add(self, vectors):
        x = _as_f32(vectors)
        _check_fits(self.kind, self.n + len(x), x.shape[1], estimate_bytes("exact", self.n + len(x), x.shape[1]))
        if self.metric == "cosine":
            x = as_unit(x)
        self.vectors = x if self.n == 0 else np.concatenate([self.vectors, x])
        self.n = len(self.vectors)
        return self

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """float32 [b, n]: every item's score for each query."""
        q = _as_f32(queries)
        return similarity(l2_normalize(q) if self.metric == "cosine" else q, self.vectors,
                          "dot" if self.metric == "cosine" else self.metric)

    def search(self, queries, k, exclude=None):
        q = self._check_search(queries, k, exclude)
        ids_out, sc_out = [], []
        bs = self.batch_size
        for start in range(0, len(q), bs):
            s = self.scores(q[start:start + bs])
            ids, sc = top_k_excluding(s, k, None if exclude is None else
                                      [np.asarray(ex, np.int64) for ex in exclude[start:start + bs]], copy=False)
            del s
            ids_out.append(ids)
            sc_out.append(sc)
        if not ids_out:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return pad_top_k(np.concatenate(ids_out), np.concatenate(sc_out), k)

    def save(self, path) -> Path:
        path = Path(path)
        _atomic(path, lambda f: np.save(f, self.vectors))
        return _write_meta(path, self, {"memory_mb": self.memory_mb})


class FaissIndex(Index):
    """FAISS HNSW or IVF, approximate, built by a factory string: ``HNSW{hnsw_m}[,SQ8]`` or
    ``IVF{nlist},{Flat|SQ8|PQ{pq_m}}`` (``quantizer`` flat | sq8 | pq: 4d, d or pq_m bytes a vector).
    Defaults chosen on 341,765 real Book-Crossing text embeddings (minilm-onnx-int8, 384-d; queries the
    mean of two items) for recall@10 >= 0.95 against the exact index: HNSW32 (ef_construction 80) reaches
    0.911 at ef_search 128, 0.951 at 512; IVF with 4 sqrt(n) = 2,338 lists 0.937 at nprobe 128, 0.970 at 256
    (benchmarks/index.py -> benchmarks/results/index_book-crossing.json). ``nlist``
    defaults to 4 sqrt(n) of the first ``add``, whose vectors (at most ``train_size`` of them, sampled)
    train the coarse quantiser; later ``add`` calls only insert. Vectors are inserted ``ADD_BLOCK`` at a
    time (bounded extra memory). An index whose estimated size exceeds the memory available is refused
    before the build, with the estimate."""

    def __init__(self, metric: str = "cosine", kind: str = "hnsw", hnsw_m: int = 32,
                 ef_construction: int = 80, ef_search: int = 512, nlist: int | None = None, nprobe: int = 256,
                 quantizer: str = "flat", pq_m: int | None = None, train_size: int = 65536,
                 memory_limit_mb: float | None = None):
        super().__init__(metric)
        try:
            import faiss
        except ImportError as e:
            raise LLMRecError(f"approximate indexes need faiss ({e}): pip install 'llmrec[llm]'") from None
        if kind not in ("hnsw", "ivf"):
            raise LLMRecError(f"unknown index kind {kind!r}; valid: exact, hnsw, ivf, milvus")
        if quantizer not in QUANTIZERS or (kind == "hnsw" and quantizer == "pq"):
            raise LLMRecError(f"unknown quantizer {quantizer!r} for {kind}; valid: "
                              f"{', '.join(QUANTIZERS if kind == 'ivf' else QUANTIZERS[:2])}")
        self.faiss, self.kind = faiss, kind
        self.params = dict(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
                           nlist=nlist, nprobe=nprobe, quantizer=quantizer, pq_m=pq_m, train_size=train_size,
                           memory_limit_mb=memory_limit_mb)
        self.index = None

    @property
    def dim(self) -> int | None:
        return self.index.d if self.index is not None else None

    def _faiss_metric(self):
        return self.faiss.METRIC_L2 if self.metric == "euclidean" else self.faiss.METRIC_INNER_PRODUCT

    def factory_string(self, n: int, d: int) -> str:
        p = self.params
        q = {"flat": "Flat", "sq8": "SQ8", "pq": f"PQ{p['pq_m'] or _pq_m(d)}"}[p["quantizer"]]
        if self.kind == "hnsw":
            return f"HNSW{p['hnsw_m']}" + ("" if q == "Flat" else f",{q}")
        return f"IVF{self.nlist_for(n)},{q}"

    def nlist_for(self, n: int) -> int:
        """IVF lists for a first ``add`` of ``n`` vectors: ``nlist``, or 4 sqrt(n)."""
        return int(self.params["nlist"] or max(1, min(n, int(4 * np.sqrt(n)))))

    def add(self, vectors):
        faiss = self.faiss
        x = _as_f32(vectors)
        d, p = x.shape[1], self.params
        if self.index is not None and d != self.index.d:
            raise LLMRecError(f"vectors have {d} dimensions, the index {self.index.d}")
        est = estimate_bytes(self.kind, self.n + len(x), d, p["hnsw_m"], p["quantizer"],
                             p["pq_m"] or _pq_m(d), self.nlist_for(self.n + len(x)))
        _check_fits(self.kind, self.n + len(x), d, est, p["memory_limit_mb"])
        if self.index is None:
            self.index = faiss.index_factory(d, self.factory_string(len(x), d), self._faiss_metric())
            self._set_search_params()
            if self.kind == "hnsw":
                self.index.hnsw.efConstruction = p["ef_construction"]
            if self.kind == "ivf" and p["quantizer"] == "pq":  # polysemous codes: minutes, unused here
                faiss.downcast_index(faiss.extract_index_ivf(self.index)).do_polysemous_training = False
            if not self.index.is_trained:
                rng = np.random.default_rng(0)
                sample = x if len(x) <= p["train_size"] else x[np.sort(rng.choice(len(x), p["train_size"],
                                                                                   replace=False))]
                self.index.train(as_unit(sample) if self.metric == "cosine" else sample)
        for s in range(0, len(x), ADD_BLOCK):
            block = x[s:s + ADD_BLOCK]
            self.index.add(as_unit(block) if self.metric == "cosine" else block)
        self.n = self.index.ntotal
        return self

    def tune(self, ef_search: int | None = None, nprobe: int | None = None) -> FaissIndex:
        """Change the search-time trade-off of a built index (HNSW ``ef_search``, IVF ``nprobe``)."""
        if ef_search is not None:
            self.params["ef_search"] = ef_search
        if nprobe is not None:
            self.params["nprobe"] = nprobe
        if self.index is not None:
            self._set_search_params()
        return self

    def _set_search_params(self) -> None:
        if self.kind == "hnsw":
            _hnsw(self.index).efSearch = self.params["ef_search"]
        else:
            self.faiss.extract_index_ivf(self.index).nprobe = self.params["nprobe"]

    def search(self, queries, k, exclude=None):
        """Excluded ids are skipped inside the search (a FAISS id selector per query that has any), so a
        query's cost and recall depend on the search setting alone, not on how much it excludes nor on
        the other queries of its batch."""
        q = self._check_search(queries, k, exclude)
        if self.index is None:
            return pad_top_k(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        kk = min(self.n, k)
        faiss, hnsw = self.faiss, self.kind == "hnsw"
        if hnsw:
            _hnsw(self.index).efSearch = max(self.params["ef_search"], kk)
        dist = np.empty((len(q), kk), np.float32)
        ids = np.empty((len(q), kk), np.int64)
        rows = [r for r in range(len(q)) if exclude is not None and len(exclude[r])]
        plain = np.setdiff1d(np.arange(len(q)), rows)
        if len(plain):
            dist[plain], ids[plain] = self.index.search(q[plain], kk)
        for r in rows:
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.unique(np.asarray(exclude[r], np.int64))))
            params = (faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.params["ef_search"], kk)) if hnsw
                      else faiss.SearchParametersIVF(sel=sel, nprobe=self.params["nprobe"]))
            dist[r:r + 1], ids[r:r + 1] = self.index.search(q[r:r + 1], kk, params=params)
        scores = -np.sqrt(np.maximum(dist, 0)) if self.metric == "euclidean" else dist
        scores[ids < 0] = -np.inf
        return pad_top_k(ids, scores, k)

    def save(self, path) -> Path:
        if self.index is None:
            raise LLMRecError("nothing to save: the index is empty")
        path = Path(path)
        _atomic(path, lambda tmp: self.faiss.write_index(self.index, str(tmp)), by_name=True)
        return _write_meta(path, self, {k: v for k, v in self.params.items()})


# -- sizes, memory and files --------------------------------------------------------------------------
QUANTIZERS = ("flat", "sq8", "pq")
SCORE_BYTES = 16  # per query x item in an exact batch: the float32 score, its negation and argpartition's int64
ADD_BLOCK = 65536


def _pq_m(d: int) -> int:
    """Sub-quantisers for PQ: d/8 (8 bits each, so d/8 bytes a vector), a divisor of d."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def estimate_bytes(kind: str, n: int, d: int, hnsw_m: int = 32, quantizer: str = "flat", pq_m: int = 0,
                   nlist: int = 1) -> int:
    """The resident size of an index over ``n`` vectors of ``d`` dimensions, from FAISS's layouts: codes
    (4d bytes flat, d for SQ8, pq_m for PQ) plus HNSW's links (2M int32 on level 0, about 1/M more above)
    or IVF's ids (int64) and centroids."""
    code = {"flat": 4 * d, "sq8": d, "pq": pq_m or _pq_m(d)}[quantizer]
    if kind == "exact":
        return n * 4 * d
    if kind == "hnsw":
        return int(n * (code + 4 * 2 * hnsw_m * (1 + 1 / hnsw_m) + 8))
    return int(n * (code + 8) + nlist * 4 * d)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_fits(kind: str, n: int, d: int, est: int, limit_mb: float | None = None) -> None:
    limit = limit_mb * 2 ** 20 if limit_mb is not None else available_memory_bytes()
    if est > limit:
        hint = ("use kind='ivf' with quantizer='sq8' (d bytes a vector) or 'pq' (d/8)" if kind != "ivf" or
                est > n * (d + 8) else "use quantizer='pq' (d/8 bytes a vector)")
        raise MemoryLimitError(f"a {kind} index over {n:,} vectors of {d} dimensions needs about "
                               f"{est / 2 ** 20:,.0f} MB, more than the {limit / 2 ** 20:,.0f} MB "
                               f"{'allowed (memory_limit_mb)' if limit_mb is not None else 'available'}; {hint}")


def _hnsw(index):
    import faiss
    return faiss.downcast_index(index).hnsw


def _atomic(path: Path, write, by_name: bool = False) -> None:
    """``write(file)`` (or ``write(temporary path)``) to a temporary name, then renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if by_name:  # FAISS writes the file itself: no in-memory copy of a large index
            write(tmp)
        else:
            with open(tmp, "wb") as f:
                write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_meta(path: Path, ix: Index, params: dict) -> Path:
    meta = {"format": "llmrec-index/1", "kind": ix.kind, "metric": ix.metric, "n": ix.n, "params": params}
    _atomic(_meta_path(path), lambda f: f.write(json.dumps(meta).encode()))
    return path


def load(path) -> Index:
    """An index written by ``save(path)`` (the FAISS file or .npy, and its ``.json`` beside it; for
    ``milvus`` the collection it names, re-attached)."""
    path = Path(path)
    meta_file = _meta_path(path)
    if not path.exists() or not meta_file.exists():
        raise LLMRecError(f"{path}: no saved index here (need the file and {meta_file.name})")
    try:
        meta = json.loads(meta_file.read_text())
        kind, metric, params = meta["kind"], meta["metric"], meta["params"]
    except (ValueError, KeyError) as e:
        raise LLMRecError(f"{meta_file}: not an index description ({type(e).__name__}: {e})") from None
    if kind == "milvus":
        from .milvus_index import MilvusIndex
        return MilvusIndex.attach(meta, path.parent)
    if kind == "exact":
        ix = ExactIndex(metric, memory_mb=params.get("memory_mb", 512))
        ix.vectors = np.load(path)
        ix.n = len(ix.vectors)
    else:
        ix = FaissIndex(metric, kind, **params)
        ix.index = ix.faiss.read_index(str(path))
        ix._set_search_params()
        ix.n = ix.index.ntotal
    if ix.n != meta["n"]:
        raise LLMRecError(f"{path}: holds {ix.n} vectors, its description says {meta['n']}")
    return ix


def make(kind: str = "exact", metric: str = "cosine", **params) -> Index:
    """An empty index: ``exact``, ``hnsw``, ``ivf`` or ``milvus`` (``uri``, ``collection``: see milvus_index)."""
    if kind == "exact":
        return ExactIndex(metric, **params)
    if kind == "milvus":
        from .milvus_index import MilvusIndex
        return MilvusIndex(metric, **params)
    return FaissIndex(metric, kind, **params)


SEARCH_SETTINGS = {"hnsw": ("ef_search", (16, 32, 64, 128, 256, 512, 1024)),
                   "ivf": ("nprobe", (4, 8, 16, 32, 64, 128, 256, 512, 1024))}


def tune_to_recall(ix: Index, vectors: np.ndarray, queries: np.ndarray, exclude: list | None = None,
                   k: int = 10, target: float = 0.95) -> dict:
    """Set ``ix`` (an approximate index over ``vectors``) to the cheapest search setting (HNSW
    ``ef_search``, IVF ``nprobe``) whose recall@k against exact search reaches ``target`` on these
    queries, with their exclusions; the largest setting tried where none does. The queries should be
    the ones the index will serve (e.g. user vectors): random ones flatter an index. Returns the
    setting, its recall and every setting tried with its recall."""
    if not isinstance(ix, FaissIndex) or ix.index is None or len(queries) == 0:
        return {}
    exact = make("exact", ix.metric).add(vectors)
    want, _ = exact.search(queries, k, exclude=exclude)
    key, values = SEARCH_SETTINGS[ix.kind]
    if ix.kind == "ivf":
        values = tuple(v for v in values if v < ix.index.nlist) + (ix.index.nlist,)
    tried = {}
    for v in values:
        ix.tune(**{key: v})
        tried[v] = round(recall_at_k(ix.search(queries, k, exclude=exclude)[0], want), 4)
        if tried[v] >= target:
            break
    return {"param": key, "value": v, "recall_at_k": tried[v], "k": k, "target": target,
            "queries": len(queries), "tried": tried}


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum())
            for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


__all__ = ["METRICS", "ExactIndex", "FaissIndex", "Index", "MemoryLimitError", "available_memory_bytes",
           "estimate_bytes", "load", "cosine", "make", "recall_at_k", "similarity", "tune_to_recall"]
