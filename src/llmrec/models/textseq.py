"""The text-based sequential recommender: SASRec's transformer over the history, but items enter through
their text. Item vector = adaptor(frozen text embedding) [+ learned id embedding]; trained end to end with
full softmax cross-entropy over the catalogue, exactly like SASRec (sasrec.py).

Shapes: text embeddings float32 [n_items, d_text] from a language-model encoder (frozen, stored in the
checkpoint); adaptor: Linear(d_text, d) -> GELU -> Linear(d, d); item table [n_items, d].

Inductive mode: ``add_items(frame)`` encodes new items' text and scores them without retraining. With
``id_embedding=False`` a new item is treated exactly like a trained one with the same text; with ids on,
new items get a zero id vector (text only), so prefer ``id_embedding=false`` when items churn.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import LLMRecError
from ..text import item_texts
from ..vectors import l2_normalize
from .sasrec import SASRecConfig, SequentialRecommender


@dataclass(frozen=True)
class TextSeqConfig(SASRecConfig):
    """SASRec's hyper-parameters plus how items enter through their text."""

    encoder: str = "minilm"     # text encoder: minilm (all-MiniLM-L6-v2), hash (hashed words, no model)
    id_embedding: bool = True   # add a learned id vector to each item's text vector


# -- item text and its embeddings ------------------------------------------------------------------------
def hash_embed(texts: list[str], dim: int = 256) -> np.ndarray:
    """float32 [n, dim]: bag of hashed lower-cased words with hashed signs, L2-normalised. No model, no
    download: for tests and for catalogues where word overlap is all the text signal there is."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for r, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9]+", t.lower()):
            h = zlib.crc32(w.encode())
            out[r, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    return l2_normalize(out)


def text_embeddings(texts: list[str], encoder: str, progress: bool = False) -> np.ndarray:
    """float32 [n, d] item text embeddings, L2-normalised, cached on disk by encoder and text."""
    if encoder == "hash":
        return hash_embed(texts)
    from .. import encoders
    return np.asarray(encoders.cached(encoders.get(encoder)).encode(texts, progress=progress), np.float32)


class TextItems(nn.Module):
    """Item table [n_items, d] = adaptor(text [n_items, d_text]) (+ id embedding [n_items, d])."""

    def __init__(self, text: np.ndarray, d: int, id_embedding: bool):
        super().__init__()
        self.register_buffer("text", torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)))
        dt = self.text.shape[1]
        self.adaptor = nn.Sequential(nn.Linear(dt, d), nn.GELU(), nn.Linear(d, d))
        self.ids = nn.Parameter(torch.zeros(len(text), d)) if id_embedding else None

    def forward(self) -> torch.Tensor:
        table = self.adaptor(self.text)
        if self.ids is not None:
            table = table + self.ids
        return table


class TextSeq(SequentialRecommender):
    """Items through their text (a frozen language-model embedding and a learned adaptor), a causal
    transformer over the history; new items are scored from their text alone."""

    name = "textseq"
    Config = TextSeqConfig
    text_vectors: np.ndarray | None = None

    def with_text_vectors(self, vectors: np.ndarray) -> TextSeq:
        """Use precomputed item text embeddings (float32 [n_items, d_text]) instead of the encoder."""
        self.text_vectors = np.asarray(vectors, dtype=np.float32)
        return self

    def _fingerprint(self, data) -> dict:
        fp = super()._fingerprint(data)
        if self.text_vectors is not None:
            fp["text_vectors"] = hashlib.sha256(self.text_vectors.tobytes()).hexdigest()[:16]
        return fp

    def _item_module(self, data, n_items: int) -> nn.Module:
        c = self.config
        if data is None:  # loading a checkpoint: the buffer is filled from the state
            text = np.zeros((n_items, self._text_dim), np.float32)
        elif self.text_vectors is not None:
            text = self.text_vectors
            if text.ndim != 2 or len(text) != n_items:
                raise LLMRecError(f"text vectors have shape {text.shape}; expected [{n_items}, d]")
        else:
            text = text_embeddings(item_texts(data.catalog), c.encoder)
        return TextItems(text, c.embedding_size, c.id_embedding)

    def _load_state(self, state, folder: Path) -> None:
        self._text_dim = int(state["net.items.text"].shape[1])
        super()._load_state(state, folder)

    # -- inductive mode --------------------------------------------------------------------------------
    def add_items(self, frame: pd.DataFrame, vectors: np.ndarray | None = None) -> np.ndarray:
        """Add items (a catalogue frame with ``item_id`` and text fields) without retraining; returns their
        internal indices. Their text is encoded with the model's encoder unless ``vectors`` are given."""
        self._check_fitted()
        from ..data import Catalog
        frame = frame.reset_index(drop=True)
        catalog, idx = self.catalog.upsert(frame)
        is_new = idx >= len(self.catalog)
        items = self.net.items
        if vectors is None:
            vectors = text_embeddings(item_texts(Catalog.from_frame(frame[is_new])), self.config.encoder)
        else:
            vectors = np.asarray(vectors, dtype=np.float32)
            if len(vectors) != len(frame):
                raise LLMRecError(f"{len(vectors)} text vectors for {len(frame)} items")
            vectors = vectors[is_new]
        n_new = int(is_new.sum())
        if vectors.shape != (n_new, items.text.shape[1]):
            raise LLMRecError(f"new item text vectors have shape {vectors.shape}; expected "
                              f"[{n_new}, {items.text.shape[1]}] (the model's encoder)")
        with torch.no_grad():
            items.text = torch.cat([items.text, torch.from_numpy(vectors).to(items.text.device)])
            if items.ids is not None:
                zeros = items.ids.new_zeros(n_new, items.ids.shape[1])
                items.ids = nn.Parameter(torch.cat([items.ids, zeros]))
        self.catalog = catalog
        self.popularity = np.pad(self.popularity, (0, n_new))
        self._ann = None  # the item vectors changed
        return idx
