"""Milvus behind the index interface (``index.make("milvus", metric, uri=..., collection=...)``): item
vectors in a vector database that runs beside the service, or on a cluster, instead of in its memory.

``uri``: a local path (``items.db``) opens a Milvus Lite store in this process (pymilvus starts it); an
address (``http://host:19530``) talks to a Milvus server or cluster, or to ``milvus-lite server
--data-dir DIR --port 19530``, which several processes share. The client code is the same pymilvus
``MilvusClient`` either way. A token (``user:password``) comes from ``LLMREC_MILVUS_TOKEN``, never from the
URI, so no password reaches a checkpoint, a log or an error message.

Entries: primary key int64 = the item index, one ``FLOAT_VECTOR`` field; metric cosine -> ``COSINE``, dot
-> ``IP``, euclidean -> ``L2`` (Milvus returns the squared distance: the score is minus its root, as the
other indexes give). ``index_type`` FLAT (exact, the default), IVF_FLAT (``nlist``, search ``nprobe``),
HNSW (``M``, ``efConstruction``, search ``ef``) or AUTOINDEX (the server's choice).

Exclusion (a user's history) is exact either way: ``overfetch`` asks for ``k + len(exclude)`` in one call
for a batch of queries and drops the excluded ids here; ``filter`` sends ``id not in [...]`` with each
query that excludes anything. ``auto`` over-fetches while ``k + len(exclude)`` is at most
``OVERFETCH_MAX`` and filters beyond it: every hit costs Python work in Milvus Lite, so a long history
is cheaper as a filter (``benchmarks/index.py --milvus`` measures both); over-fetching is capped by
Milvus's top-k limit (16,384) in any mode.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import LLMRecError
from .index import Index, _as_f32, _write_meta
from .metrics import pad_top_k
from .vectors import as_unit

TOKEN_ENV = "LLMREC_MILVUS_TOKEN"
MILVUS_METRIC = {"cosine": "COSINE", "dot": "IP", "euclidean": "L2"}
INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
TOPK_MAX = 16384  # Milvus's largest limit for one search
OVERFETCH_MAX = 256  # auto: over-fetch while k + len(exclude) is at most this, else filter (measured)
INSERT_BLOCK = 2048  # rows a request: 3 MB at 384 dimensions, far below gRPC's message limit
QUERY_BLOCK = 256  # queries a search request
HITS_BLOCK = 16384  # at most this many hits (queries x limit) a search request
EXCLUSIONS = ("auto", "overfetch", "filter")
LOCAL_NAME = "items.milvus.db"  # a local store's copy inside a checkpoint folder
_OPEN: weakref.WeakSet = weakref.WeakSet()  # this process's open indexes (a build never replaces their collection)


def is_remote(uri: str) -> bool:
    """An address of a server (http, https, tcp, grpc, unix), not a local Milvus Lite path."""
    return bool(re.match(r"^(https?|tcp|grpc|unix)://", str(uri)))


def redact(uri: str) -> str:
    """``uri`` without any password in it (``http://user:secret@host`` -> ``http://user:***@host``)."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", str(uri))


class MilvusIndex(Index):
    """A Milvus collection as an item index. ``add`` builds it (the first ``add`` of a fresh index
    replaces a collection of the same name, dimension and metric; one of another dimension or metric is
    refused, never dropped); ``attach`` opens an existing one for a saved model."""

    kind = "milvus"
    updates_in_place = True

    def __init__(self, metric: str = "cosine", uri: str | Path = "items.db", collection: str = "llmrec_items",
                 index_type: str = "FLAT", build_params: dict | None = None, search_params: dict | None = None,
                 exclusion: str = "auto", timeout: float = 10.0, request_timeout: float = 600.0):
        super().__init__(metric)
        if index_type not in INDEX_TYPES:
            raise LLMRecError(f"unknown Milvus index_type {index_type!r}; valid: {', '.join(INDEX_TYPES)}")
        if exclusion not in EXCLUSIONS:
            raise LLMRecError(f"unknown exclusion {exclusion!r}; valid: {', '.join(EXCLUSIONS)}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise LLMRecError(f"Milvus collection name {collection!r}: letters, digits and _ only")
        uri = str(uri)
        if not is_remote(uri) and not uri.endswith(".db"):
            raise LLMRecError(f"Milvus uri {uri!r}: a local Milvus Lite store is a path ending in .db, a server "
                              "an address (http://host:19530)")
        if is_remote(uri) and redact(uri) != uri:
            raise LLMRecError(f"Milvus uri {redact(uri)}: put the credentials in {TOKEN_ENV}, not in the URI")
        self.uri, self.collection, self.index_type = uri, collection, index_type
        self.build_params, self.search_params = dict(build_params or {}), dict(search_params or {})
        self.exclusion, self.timeout, self.request_timeout = exclusion, timeout, request_timeout
        self.dim: int | None = None
        self.stored = 0  # entries in the collection (more than n when a service added items since a save)
        self.client = _connect(uri, timeout)
        _OPEN.add(self)

    @property
    def where(self) -> str:
        return f"Milvus collection {self.collection!r} at {redact(self.uri)}"

    # -- building -------------------------------------------------------------------------------
    def add(self, vectors) -> MilvusIndex:
        """Append ``vectors`` as items ``n, n + 1, ...``, streamed ``INSERT_BLOCK`` rows a request
        (``vectors`` may be a memory map); visible to searches when this returns."""
        x = vectors if isinstance(vectors, np.ndarray) and vectors.ndim == 2 else _as_f32(vectors)
        if self.dim is None:
            self._create(x.shape[1])
        elif x.shape[1] != self.dim:
            raise LLMRecError(f"vectors have {x.shape[1]} dimensions, the {self.where} {self.dim}")
        self._write(np.arange(self.n, self.n + len(x)), x, upsert=self.n < self.stored)
        self.n += len(x)
        self.stored = max(self.stored, self.n)
        return self

    def upsert(self, ids: np.ndarray, vectors) -> MilvusIndex:
        """Replace the entries of items ``ids`` (and append new ones, which must follow on from ``n``):
        an updated item is found by its new vector at once."""
        ids = np.asarray(ids, np.int64)
        x = _as_f32(vectors)
        new = np.sort(ids[ids >= self.n])
        if len(new) and not np.array_equal(new, np.arange(self.n, self.n + len(new))):
            raise LLMRecError(f"new items must take the next indices from {self.n}, got {new.tolist()[:5]}")
        if len(ids) != len(x):
            raise LLMRecError(f"{len(ids)} ids for {len(x)} vectors")
        if self.dim is None:
            self._create(x.shape[1])
        elif x.shape[1] != self.dim:
            raise LLMRecError(f"vectors have {x.shape[1]} dimensions, the {self.where} {self.dim}")
        self._write(ids, x, upsert=True)
        self.n += len(new)
        self.stored = max(self.stored, self.n)
        return self

    def _create(self, dim: int) -> None:
        """A fresh collection of ``dim`` dimensions, replacing one of the same shape and metric."""
        from pymilvus import DataType, MilvusClient
        c = self.client
        if in_use(self.uri, self.collection, besides=self):
            raise LLMRecError(f"{self.where} is served by another index in this process: build into another "
                              "collection (zero-shot picks one)")
        if self._call(c.has_collection, self.collection):
            self._check_shape(dim)
            self._call(c.drop_collection, self.collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = c.prepare_index_params()
        # the build parameters both as flat keys (Milvus 2.4+ servers) and JSON under "params" (the older form,
        # which Milvus Lite 3.2 reads: it drops the flat keys)
        params.add_index(field_name="vector", index_type=self.index_type, metric_type=MILVUS_METRIC[self.metric],
                         params={**self.build_params, **({"params": self.build_params} if self.build_params else {})})
        self._call(c.create_collection, self.collection, schema=schema)
        self._call(c.create_index, self.collection, params, sync=False)  # sync waits on an RPC Lite lacks
        self._call(c.load_collection, self.collection)
        self.dim, self.n, self.stored = dim, 0, 0

    def _write(self, ids: np.ndarray, x: np.ndarray, upsert: bool) -> None:
        write = self.client.upsert if upsert else self.client.insert
        for s in range(0, len(ids), INSERT_BLOCK):
            block = np.ascontiguousarray(x[s:s + INSERT_BLOCK], np.float32)
            if self.metric == "cosine":
                block = as_unit(block)
            self._call(write, self.collection, [{"id": int(i), "vector": v}
                                                for i, v in zip(ids[s:s + INSERT_BLOCK], block, strict=True)])
        if len(ids):
            self._call(self.client.flush, self.collection)  # searched from segments at once, not a memtable

    # -- reading ---------------------------------------------------------------------------------
    def search(self, queries, k, exclude=None):
        q = self._check_search(queries, k, exclude)
        empty = (np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32))
        if self.n == 0 or len(q) == 0:
            return pad_top_k(*empty, k)
        ex = [np.unique(np.asarray(e, np.int64)) for e in exclude] if exclude is not None else \
            [np.zeros(0, np.int64)] * len(q)
        extra = self.stored - self.n  # entries beyond the items this model knows: left out
        over = np.array([k + len(e) + extra for e in ex])
        has = np.array([len(e) > 0 for e in ex])
        by_filter = has & ((over > min(OVERFETCH_MAX, TOPK_MAX)) if self.exclusion == "auto" else
                           (over > TOPK_MAX) | (self.exclusion == "filter"))
        ids = np.full((len(q), k), -1, np.int64)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.flatnonzero(~by_filter)
        rows = rows[np.argsort(-over[rows], kind="stable")]  # like limits together, largest first
        s = 0
        while s < len(rows):
            block = max(1, min(QUERY_BLOCK, HITS_BLOCK // int(min(TOPK_MAX, over[rows[s]]))))
            r = rows[s:s + block]
            s += block
            limit = int(min(TOPK_MAX, over[r].max()))
            base = f"id < {self.n}" if extra else ""
            for row, hits in zip(r, self._search(q[r], limit, base), strict=True):
                self._keep(hits, ex[row], k, ids[row], scores[row])
        for row in np.flatnonzero(by_filter):
            cond = [f"id < {self.n}"] if extra else []
            if len(ex[row]):
                cond.append(f"id not in [{', '.join(map(str, ex[row].tolist()))}]")
            hits = self._search(q[row:row + 1], min(k, TOPK_MAX), " and ".join(cond))[0]
            self._keep(hits, ex[row], k, ids[row], scores[row])
        return ids, scores

    def _search(self, q: np.ndarray, limit: int, expr: str) -> list:
        kw = {"search_params": {"metric_type": MILVUS_METRIC[self.metric], "params": self.search_params}}
        return self._call(self.client.search, self.collection, data=list(q), limit=limit, filter=expr,
                          output_fields=["id"], **kw)

    def _keep(self, hits, exclude: np.ndarray, k: int, ids_row: np.ndarray, scores_row: np.ndarray) -> None:
        """The first ``k`` hits not in ``exclude`` (sorted ids) into the output row, as scores."""
        got = np.fromiter((h["id"] for h in hits), np.int64, count=len(hits))
        dist = np.fromiter((h["distance"] for h in hits), np.float32, count=len(hits))
        keep = (got < self.n) & ~np.isin(got, exclude, assume_unique=False)
        got, dist = got[keep][:k], dist[keep][:k]
        ids_row[:len(got)] = got
        scores_row[:len(got)] = -np.sqrt(np.maximum(dist, 0)) if self.metric == "euclidean" else dist

    def vectors(self, block: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The entries of items ``0 .. n - 1`` as (ids, vectors) blocks, by id ranges."""
        for s in range(0, self.n, block):
            rows = self._call(self.client.query, self.collection, filter=f"id >= {s} and id < {s + block}",
                              output_fields=["id", "vector"])
            yield (np.fromiter((r["id"] for r in rows), np.int64, count=len(rows)),
                   np.asarray([r["vector"] for r in rows], np.float32).reshape(len(rows), self.dim))

    # -- saving and attaching ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the description ``path.json`` (kind, metric, count, URI, collection, index type) and, for a
        local store, a copy of it beside ``path`` (``items.milvus.db``), so the checkpoint holds its index;
        a server's collection stays where it is (the checkpoint names it)."""
        path = Path(path)
        uri = self.uri
        if not is_remote(self.uri):
            uri = LOCAL_NAME
            self._copy_to(path.parent / LOCAL_NAME)
        params = {"uri": uri, "collection": self.collection, "index_type": self.index_type,
                  "build_params": self.build_params, "search_params": self.search_params,
                  "exclusion": self.exclusion, "dim": self.dim}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{redact(uri)} {self.collection}\n")
        return _write_meta(path, self, params)

    def _copy_to(self, target: Path) -> None:
        """Stream this collection's entries (those below ``n``) into a new local store at ``target``, then
        let it go (its files are complete and closed when this returns)."""
        tmp = target.with_name(f".{uuid.uuid4().hex}.{target.name}")  # a .db name: pymilvus opens Milvus Lite
        copy = MilvusIndex(self.metric, tmp, self.collection, self.index_type, self.build_params,
                           self.search_params, self.exclusion, self.timeout)
        try:
            copy._create(self.dim)
            for ids, x in self.vectors():
                copy._write(ids, x, upsert=False)
            copy.close()
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            copy.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        """Release the client; a local store's in-process server stops and unlocks its folder."""
        if self.client is None:
            return
        self.client.close()
        self.client = None
        if not is_remote(self.uri):
            from milvus_lite import server_manager_instance
            server_manager_instance.release_server(self.uri)

    @classmethod
    def attach(cls, meta: dict, folder: Path) -> MilvusIndex:
        """The saved index ``meta`` (``path.json``) re-opened: a local store inside ``folder``, or the
        server's collection; refused when the collection is missing, holds another metric or dimension,
        or fewer entries than the description."""
        p = dict(meta["params"])
        uri = p.pop("uri")
        if not is_remote(uri) and not Path(uri).is_absolute():
            uri = str(Path(folder) / uri)
        dim = p.pop("dim")
        ix = cls(meta["metric"], uri, p.pop("collection"), **p)
        ix.dim = dim
        if not ix._call(ix.client.has_collection, ix.collection):
            raise LLMRecError(f"{ix.where}: no such collection (the saved index names it)")
        ix._check_shape(dim)
        ix._call(ix.client.load_collection, ix.collection)
        stored = ix.count()
        if stored < meta["n"]:
            raise LLMRecError(f"{ix.where} holds {stored:,} vectors, the saved index {meta['n']:,}")
        ix.n, ix.stored = meta["n"], stored
        return ix

    def count(self) -> int:
        """Entries in the collection, counted by the store (exact, deletions applied)."""
        rows = self._call(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _check_shape(self, dim: int | None) -> None:
        """Refuse a collection of another dimension or metric than this index's, naming both."""
        desc = self._call(self.client.describe_collection, self.collection)
        vec = [f for f in desc["fields"] if f["name"] == "vector"]
        if not vec:
            raise LLMRecError(f"{self.where} has no 'vector' field: not an llmrec item index")
        have = int(vec[0]["params"]["dim"])
        if dim is not None and have != dim:
            raise LLMRecError(f"{self.where} holds {have}-dimensional vectors, the model's are {dim}-dimensional")
        idx = self._call(self.client.describe_index, self.collection, "vector")
        metric = (idx or {}).get("metric_type")
        if metric and metric != MILVUS_METRIC[self.metric]:
            raise LLMRecError(f"{self.where} uses metric {metric}, the model {MILVUS_METRIC[self.metric]} "
                              f"({self.metric})")
        self.dim = have

    def _call(self, fn, *args, **kwargs):
        """A pymilvus call, its failures as one LLMRecError naming the store (no password)."""
        from pymilvus import MilvusException
        try:
            return fn(*args, timeout=self.request_timeout, **kwargs)
        except MilvusException as e:
            raise LLMRecError(f"{self.where}: {_message(e)}") from None

    def describe(self) -> dict:
        return {"uri": redact(self.uri), "collection": self.collection, "index_type": self.index_type,
                "entries": self.stored, "dim": self.dim}


def in_use(uri: str | Path, collection: str, besides: MilvusIndex | None = None) -> bool:
    """Whether an open index of this process (other than ``besides``) holds ``collection`` at ``uri``."""
    key = (os.path.abspath(uri) if not is_remote(str(uri)) else str(uri), collection)
    return any(ix is not besides and ix.client is not None and ix.n > 0 and
               (os.path.abspath(ix.uri) if not is_remote(ix.uri) else ix.uri, ix.collection) == key
               for ix in list(_OPEN))


def wait_for_lite_indexes(ix: MilvusIndex, timeout: float = 1800.0, settle: float = 3.0) -> None:
    """Milvus Lite builds each segment's FAISS index in the background after a flush (and again after it
    compacts segments) and searches a segment by brute force until then; its describe_index says
    "Finished" at once. Wait until every data file of a local store has its index file and the set of
    files has not changed for ``settle`` seconds, so that what is measured is the index. FLAT and server
    stores: nothing to wait for."""
    if is_remote(ix.uri) or ix.index_type == "FLAT":
        return
    part = Path(ix.uri) / "collections" / ix.collection / "partitions" / "_default"
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        data = {f.name.split(".")[0] for f in (part / "data").glob("*.parquet")}
        built = {f.name.split(".")[0] for f in (part / "indexes").glob("*.idx")}
        state = (frozenset(data), frozenset(built))
        if state != last:
            last, since = state, time.monotonic()
        elif data and data <= built and time.monotonic() - since >= settle:
            return
        time.sleep(0.2)
    raise LLMRecError(f"{ix.where}: segment indexes not built after {timeout:.0f}s")


def _message(e) -> str:
    return redact(str(getattr(e, "message", None) or e)).strip()


def _connect(uri: str, timeout: float):
    """A MilvusClient for ``uri``: a local Milvus Lite path (its folder created) or a server address;
    an unreachable one fails within ``timeout`` seconds, naming it without a password (each later request
may take up to ``request_timeout``)."""
    try:
        from pymilvus import MilvusClient, MilvusException
    except ImportError as e:
        raise LLMRecError(f"the milvus index needs pymilvus and milvus-lite ({e}): pip install 'llmrec[milvus]'") \
            from None
    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        lock = Path(uri) / "LOCK"
        try:
            client = MilvusClient(uri=uri, timeout=timeout)
        except MilvusException as e:
            busy = " (another process holds it: start `milvus-lite server --data-dir DIR --port 19530` and give " \
                   "every process uri=http://127.0.0.1:19530)" if lock.exists() else ""
            raise LLMRecError(f"Milvus Lite store {uri}: cannot open it{busy}: {_message(e)}") from None
        return client
    try:
        return MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""), timeout=timeout)
    except MilvusException as e:
        raise LLMRecError(f"Milvus at {redact(uri)}: cannot connect within {timeout:g}s ({_message(e)})") from None


__all__ = ["EXCLUSIONS", "INDEX_TYPES", "MilvusIndex", "TOKEN_ENV", "in_use", "is_remote", "redact",
           "wait_for_lite_indexes"]
