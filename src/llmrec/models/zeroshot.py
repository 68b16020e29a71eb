"""The zero-shot LLM recommender: a language model encodes each item's text; a user is a vector made from
their history or from free text; items are ranked by similarity. No training on interactions: fitting
encodes the catalogue (cached on disk, so refits and new items encode only what is new).

User representations (config ``user``):
- ``pool``: the recency-weighted mean of the history's item vectors; the item j steps before the most
  recent weighs ``recency ** j``; the last ``max_history`` items count.
- ``text``: the history rendered as text ("Title A; Title B; ...", most recent last) and encoded.
- a free-text profile (``recommend_text``), in any language the encoder reads, mixed with the history
  (weight ``profile_weight`` on the profile) when there is one.

Scores: similarity(user vector, item vectors) with ``metric`` cosine | dot | euclidean (-distance).

Encoder ``auto`` (the default) picks by the catalogue's language and size when the model is first fitted and
keeps that choice (saved with the checkpoint): see ``encoders.auto``.
Catalogue vectors are streamed to the encoder's on-disk cache chunk by chunk, so a killed fit resumes and a
second fit reads them back without encoding. Vectors made elsewhere come in as textseq's do,
``with_text_vectors(array)``, or from a ``batch encode`` folder (config ``vectors``, whose encoder the model
takes for its queries).
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .. import encoders, images
from .. import index as vindex
from ..config import Checked, option
from ..data import Catalog, IdMap
from ..errors import LLMRecError
from ..metrics import top_k_excluding
from ..text import DEFAULT_TEMPLATE, _value, item_tags, item_texts, render
from ..vectors import is_unit, l2_normalize
from .base import Recommendations, Recommender


@dataclass(frozen=True)
class ZeroShotConfig(Checked):
    encoder: str = "auto"  # by the catalogue's language and size: see encoders.auto
    template: str = DEFAULT_TEMPLATE
    user: Literal["pool", "text"] = "pool"
    recency: float = option(0.5, gt=0.0, le=1.0)  # picked on validation HR@10 (ml-100k, ml-1m) from 1 to 0.3
    max_history: int = option(50, ge=1)
    metric: Literal["cosine", "dot", "euclidean"] = "cosine"
    index: Literal["exact", "hnsw", "ivf", "milvus"] = "exact"
    index_uri: str = ""  # milvus: a Milvus Lite path (.db) or a server address; "": a scratch store (milvus_index)
    index_collection: str = "llmrec_items"  # milvus: the collection holding the item vectors
    profile_weight: float = option(0.5, ge=0.0, le=1.0)
    center: bool = False
    cache: bool = True
    batch_size: int = option(64, ge=1)
    recall: float = option(0.95, gt=0.0, le=1.0)  # an approximate index tuned at fit to this recall@10
    tune_queries: int = option(500, ge=0)  # users' queries it is tuned on (0: the index's defaults)
    vectors: str = ""  # a folder of item vectors written by `llmrec batch encode`: fitting reads, not encodes
    image_column: str = "image"  # item image paths, read when the encoder encodes images (clip:FOLDER)
    image_weight: float = option(0.5, ge=0.0, le=1.0)  # the image's share of an item with text and image

    SEARCH_SPACE = {"recency": ("float", 0.2, 1.0, False), "max_history": ("int", 5, 200, True)}


_STOP = set("""a an the and or of to in on for with about at by from into i me my we our you your he she it
they them this that these those is am are was were be been have has had do does did lately recently really
very just so like love liked enjoy enjoyed into been some any more most films film movies movie books book
want would something things thing""".split())
_ZH_SPLIT = re.compile(r"[和与及或的了我你他她最近喜欢看读听爱想要一些很也都、，。！？\s]+")


def profile_words(text: str, limit: int = 20) -> list[str]:
    """Content words of a profile: Latin words minus stop words; CJK runs split at function characters."""
    out: list[str] = []
    for tok in re.findall(r"[A-Za-z][A-Za-z0-9'\-]*|[\u3040-\u30ff\u3400-\u9fff]+|\w+", text):
        if re.match(r"[\u3040-\u30ff\u3400-\u9fff]", tok):
            out += [p for p in _ZH_SPLIT.split(tok) if len(p) >= 2]
        elif tok.lower() not in _STOP and len(tok) > 1:
            out.append(tok)
    return list(dict.fromkeys(out))[:limit]


class ZeroShot(Recommender):
    name = "zero-shot"
    Config = ZeroShotConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        if self.config.encoder != "auto":
            encoders.resolve(self.config.encoder)  # an unknown name fails here, before any work
        self.encoder_name: str | None = None if self.config.encoder == "auto" else self.config.encoder
        self._encoder: encoders.Encoder | None = None
        self.item_vectors: np.ndarray | None = None
        self.text_vectors: np.ndarray | None = None
        self.encode_seconds, self.cache_hits = 0.0, 0
        self._scratch: str | None = None  # a milvus index's own store when no index_uri is given
        self.index: vindex.Index | None = None

    def with_text_vectors(self, vectors: np.ndarray) -> ZeroShot:
        """Use precomputed item text embeddings (float32 [n_items, d], catalogue order, from this model's
        encoder) instead of encoding the catalogue, as ``TextSeq.with_text_vectors``."""
        self.text_vectors = np.asarray(vectors, dtype=np.float32)
        return self

    # -- fitting: encode the catalogue -------------------------------------------------------------
    @property
    def encoder(self) -> encoders.Encoder:
        if self._encoder is None:
            if self.encoder_name is None:  # "auto": chosen once, by the catalogue the model is fitted on
                self._check_fitted()
                self.encoder_name = encoders.auto(len(self.catalog), self.catalog.titles())
                print(f"zero-shot: encoder {self.encoder_name} ({encoders.auto_reason(self.encoder_name)}; "
                      "--encoder NAME to choose)", file=sys.stderr)
            enc = encoders.get(self.encoder_name)
            self._encoder = encoders.cached(enc) if self.config.cache else enc
        return self._encoder

    def fit(self, data, split=None, progress: bool = True, checkpoint_dir=None) -> ZeroShot:
        """Encode the catalogue; the interaction log only supplies known users' histories, and may be
        empty (a catalogue with no log is enough)."""
        train = split.train if split is not None else data.interactions
        if len(train) == 0:
            self.catalog, self.users = data.catalog, data.users
            self._histories = [np.zeros(0, np.int64) for _ in range(data.n_users)]
            self._encode_catalog(progress)
            return self
        return super().fit(data, split, progress, checkpoint_dir)

    def _fit(self, data, train, split, progress) -> None:
        self._encode_catalog(progress)
        self.index_tuning = self._tune_index()

    def _tune_index(self) -> dict:
        """An approximate index's search setting chosen on the queries it will serve: the vectors of up
        to ``tune_queries`` training users with a history (seeded sample), their histories excluded, at
        recall@10 ``recall`` against exact search (``index.tune_to_recall``); kept with the index."""
        c = self.config
        if c.index == "exact" or not c.tune_queries or not self._histories:
            return {}
        users = np.flatnonzero([len(h) > 0 for h in self._histories])
        if len(users) == 0:
            return {}
        users = np.sort(np.random.default_rng(0).choice(users, min(c.tune_queries, len(users)), replace=False))
        hist = [self._histories[u] for u in users]
        out = vindex.tune_to_recall(self.index, self.item_vectors, self.user_vectors(hist), exclude=hist,
                                    k=min(10, len(self.catalog)), target=c.recall)
        if not out:  # nothing to tune (an empty index)
            return out
        print(f"{self.name}: {c.index} index search {out['param']}={out['value']}, recall@10 "
              f"{out['recall_at_k']:.3f} on {out['queries']} users' queries (recall={c.recall})",
              file=sys.stderr, flush=True)
        return out

    def fit_catalog(self, catalog: Catalog, progress: bool = True) -> ZeroShot:
        """Fit on a catalogue alone (no interaction log): recommend for free text or raw histories."""
        self.catalog, self.users, self._histories = catalog, IdMap(kind="user"), []
        self._encode_catalog(progress)
        return self

    def _texts(self, catalog: Catalog) -> list[str]:
        """The items' texts; with pictures (``_image_paths``) an item without text is no cause for warning
        unless it has no picture either."""
        if self._image_paths(catalog) is None:
            return item_texts(catalog, self.config.template)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return item_texts(catalog, self.config.template)

    def _encode_catalog(self, progress: bool) -> None:
        t0 = time.perf_counter()
        if self.text_vectors is None and self.config.vectors:
            self.text_vectors = self._folder_vectors(self.config.vectors, progress)
        if self.text_vectors is not None:
            vecs = self.text_vectors
            if vecs.ndim != 2 or len(vecs) != len(self.catalog):
                raise LLMRecError(f"text vectors have shape {vecs.shape}; expected [{len(self.catalog)}, d]")
            self.text_vectors = None  # held as the model's vectors from here on
        else:
            texts = self._texts(self.catalog)
            enc = self.encoder
            hits0 = getattr(enc, "hits", 0)
            vecs = enc.encode(texts, normalize=self.config.metric == "cosine",
                              batch_size=self.config.batch_size, progress=None if progress else False)
            del texts
            self.cache_hits = getattr(enc, "hits", 0) - hits0
            vecs = self._with_images(self.catalog, vecs)
        self.encode_seconds = time.perf_counter() - t0
        self.mean = vecs.mean(0) if self.config.center else np.zeros(vecs.shape[1], np.float32)
        self._set_vectors(vecs)

    def _folder_vectors(self, folder: str, progress: bool) -> np.ndarray:
        """The catalogue's vectors from a ``batch encode`` folder; items added since it was written (a
        service's new items before a retrain) are encoded here with the folder's encoder. A folder that
        holds none of the catalogue's items is refused."""
        from ..batch_encode import read_vectors
        self._take_encoder_of(folder)
        vecs, found = read_vectors(folder, self.catalog)
        if not found.any():
            raise LLMRecError(f"vectors={folder} hold none of this catalogue's {len(self.catalog):,} items "
                              f"(e.g. {self.catalog.ids.id(0)!r}): encode this catalogue")
        missing = np.flatnonzero(~found)
        if len(missing):
            print(f"{self.name}: {len(missing):,} of {len(self.catalog):,} items have no vector in {folder}; "
                  "encoding them", file=sys.stderr)
            texts = item_texts(Catalog.from_frame(self.catalog.frame.iloc[missing]), self.config.template)
            vecs[missing] = self.encoder.encode(texts, normalize=self.config.metric == "cosine",
                                                batch_size=self.config.batch_size, progress=None if progress else False)
        return vecs

    def _take_encoder_of(self, folder: str) -> None:
        """The encoder of a ``batch encode`` folder becomes this model's (its queries must use it); a
        folder made with another encoder, normalisation or template than this model's is refused."""
        from ..batch_encode import read_job
        job = read_job(folder)
        if self.encoder_name is not None and encoders.resolve(self.encoder_name)[1] != job["encoder"]:
            raise LLMRecError(f"vectors={folder} were made by encoder {job['encoder']!r}, not "
                              f"{self.encoder_name!r}: omit encoder or name that one")
        cosine = self.config.metric == "cosine"
        if job["normalize"] != cosine:
            need = "L2-normalised vectors" if cosine else "raw vectors (batch encode --no-normalize)"
            raise LLMRecError(f"vectors={folder}: metric={self.config.metric} needs {need}")
        if job["template"] != self.config.template:
            raise LLMRecError(f"vectors={folder} were encoded with template {job['template']!r}, not this "
                              f"model's {self.config.template!r}")
        self.encoder_name = job["encoder"]

    def _with_images(self, catalog: Catalog, vecs: np.ndarray) -> np.ndarray:
        """Text vectors fused with the items' image vectors (``images.fuse``) when the encoder reads images
        and the catalogue has the image column; otherwise ``vecs`` unchanged. An item with an image and no
        text gets its image's vector."""
        paths = self._image_paths(catalog)
        if paths is None:
            return vecs
        has_image = np.array([bool(p) for p in paths])
        has_text = np.array([bool(render(r, self.config.template)) for r in catalog.frame.to_dict("records")])
        if (~has_image & ~has_text).any():
            warnings.warn(f"{int((~has_image & ~has_text).sum())} item(s) have neither text nor a picture; "
                          "their id stands in for the text", UserWarning, stacklevel=3)
        if not has_image.any():
            return vecs
        img = np.zeros_like(vecs)
        rows = np.flatnonzero(has_image)
        img[rows] = self._image_encoder().encode_images([paths[i] for i in rows], batch_size=self.config.batch_size)
        return images.fuse(vecs, img, has_text, has_image, self.config.image_weight)

    def _image_encoder(self):
        return self.encoder.inner if isinstance(self.encoder, encoders.CachedEncoder) else self.encoder

    def _image_paths(self, catalog: Catalog) -> list[str] | None:
        """Each item's image path ("" for none) when the encoder reads images and the catalogue has the
        image column; otherwise None (text only)."""
        col = self.config.image_column
        if not col or col not in catalog.frame.columns or not isinstance(self._image_encoder(), images.EncodesImages):
            return None
        return [_value(v) for v in catalog.frame[col].tolist()]

    def reindex(self, index: str, **settings) -> dict:
        """Rebuild the item index as ``index`` (exact | hnsw | ivf | milvus, with config ``settings`` such as
        ``index_uri``) over the vectors the model has, with no encoding, and tune it as ``fit`` does (on
        the histories the model still holds); the tuning."""
        self._check_fitted()
        self.config = replace(self.config, index=index, **settings)
        self._set_vectors(self.raw_vectors)
        self.index_tuning = self._tune_index()
        return self.index_tuning

    def _set_vectors(self, raw: np.ndarray, build_index: bool = True) -> None:
        self.raw_vectors = np.asarray(raw, np.float32)
        if not self.config.center:  # one copy of a large catalogue's vectors, not two
            v = self.raw_vectors
            unit = self.config.metric != "cosine" or is_unit(v)
            self.item_vectors = v if unit else l2_normalize(v)
        else:
            v = self.raw_vectors - self.mean
            self.item_vectors = l2_normalize(v, inplace=True) if self.config.metric == "cosine" else v
        if build_index:
            self.index = vindex.make(self.config.index, self.config.metric, **self._index_params()).add(
                self.item_vectors)
            self._stale = np.zeros(0, np.int64)

    def _index_params(self) -> dict:
        """Where a milvus index lives: ``index_uri`` and ``index_collection``, or a scratch Milvus Lite store
        of this model's own (deleted at exit; a checkpoint keeps a copy)."""
        c = self.config
        if c.index != "milvus":
            return {}
        if not c.index_uri and self._scratch is None:
            self._scratch = _scratch_store()
        uri, name = c.index_uri or self._scratch, c.index_collection
        from ..milvus_index import in_use
        old = self.index if self.index is not None and self.index.kind == "milvus" else None
        n = 1
        while in_use(uri, name, besides=old):  # a retrain beside the serving model: its own collection
            n += 1
            name = f"{c.index_collection}_{n}"
        return {"uri": uri, "collection": name}

    def add_items(self, rows: pd.DataFrame | list[dict]) -> np.ndarray:
        """Add or update items by their text alone; they are recommendable at once. Returns their indices.
        Only these items are encoded. An index that ``updates_in_place`` (milvus) takes the new and updated
        vectors at once. Another approximate index is not rebuilt (minutes at a million items): new
        items are added to it, and an updated item's old entry is marked stale, left out of its answers,
        and the item scored exactly beside them until the next fit or load rebuilds the index."""
        self._check_fitted()
        rows = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
        catalog, idx = self.catalog.upsert(rows)
        texts = self._texts(Catalog(catalog.frame.iloc[idx].reset_index(drop=True), IdMap()))
        vecs = self.encoder.encode(texts, normalize=self.config.metric == "cosine",
                                   batch_size=self.config.batch_size, progress=False)
        vecs = self._with_images(Catalog(catalog.frame.iloc[idx].reset_index(drop=True), IdMap()), vecs)
        old_n = len(self.raw_vectors)
        raw = np.concatenate([self.raw_vectors, np.zeros((len(catalog) - old_n, self.raw_vectors.shape[1]),
                                                         np.float32)])
        raw[idx] = vecs
        self.catalog = catalog
        exact = self.config.index == "exact"
        self._set_vectors(raw, build_index=exact)
        if self.index.updates_in_place:
            self.index.upsert(idx, self.item_vectors[idx])
        elif not exact:
            new = np.sort(idx[idx >= old_n])
            if len(new):
                self.index.add(self.item_vectors[new])  # entries old_n, old_n + 1, ... in item order
            self._stale = np.union1d(self._stale, idx[idx < old_n])
        return idx

    def diversity_vectors(self) -> tuple[np.ndarray, str]:
        self._check_fitted()
        return self.item_vectors, f"zero-shot's item vectors ({self.encoder_name} text vectors)"

    # -- users as vectors -----------------------------------------------------------------------------
    def _pool(self, h: np.ndarray) -> np.ndarray:
        h = h[-self.config.max_history:]
        w = self.config.recency ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)
        return (w[:, None] * self.item_vectors[h]).sum(0) / w.sum()

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [b, d]; an empty history gives a zero vector (every item scores alike)."""
        out = np.zeros((len(histories), self.item_vectors.shape[1]), np.float32)
        if self.config.user == "pool":
            for b, h in enumerate(histories):
                if len(h):
                    out[b] = self._pool(np.asarray(h, np.int64))
            return out
        rows = [b for b, h in enumerate(histories) if len(h)]
        if rows:
            titles = self.catalog.titles()
            texts = ["; ".join(titles[i] for i in histories[b][-self.config.max_history:]) for b in rows]
            out[rows] = self._encode_query(texts)
        return out

    def _encode_query(self, texts: list[str]) -> np.ndarray:
        v = self.encoder.encode(texts, normalize=self.config.metric == "cosine", kind="query",
                                batch_size=self.config.batch_size, progress=False) - self.mean
        return l2_normalize(v) if self.config.metric == "cosine" else v

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        return self._scores(self.user_vectors(histories))

    def _scores(self, vecs: np.ndarray) -> np.ndarray:
        """float32 [b, n_items]. For cosine the item vectors are stored unit-length (``_set_vectors``), so
        only the queries are normalised here: re-normalising the catalogue per call cost 70% of a request."""
        if self.config.metric == "cosine":
            return vindex.similarity(l2_normalize(vecs), self.item_vectors, "dot")
        return vindex.similarity(vecs, self.item_vectors, self.config.metric)

    # -- ranking ----------------------------------------------------------------------------------------
    def recommend_indices(self, hist, k, exclude_seen=True, exclude=None, candidates=None, explain=False,
                          exclude_rows=None):
        return self._rank(self.user_vectors(hist), hist, k, exclude_seen, exclude, candidates, explain,
                          exclude_rows=exclude_rows)

    def score_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [b, n_items]: every item's similarity to each free-text profile."""
        self._check_fitted()
        return self._scores(self._encode_query(encoders.check_texts(list(texts))))

    def recommend_text(self, texts: list[str], k: int = 10, histories: list[list] | None = None,
                       exclude_seen: bool = True, exclude: list | None = None,
                       candidates: np.ndarray | None = None, explain: bool = False) -> Recommendations:
        """Top-k for free-text profiles (one per query), optionally mixed with raw histories (external ids):
        user = profile_weight * profile + (1 - profile_weight) * history."""
        self._check_fitted()
        if isinstance(texts, str):
            texts = [texts]
        if k < 1:
            raise LLMRecError(f"k must be at least 1, got {k}")
        vecs = self._encode_query(encoders.check_texts(texts))
        hist = [np.zeros(0, np.int64)] * len(texts)
        if histories is not None:
            if len(histories) != len(texts):
                raise LLMRecError(f"{len(histories)} histories for {len(texts)} texts")
            hist = [self.catalog.ids.indices(h) for h in histories]
            hv = self.user_vectors(hist)
            w = self.config.profile_weight
            has = np.array([len(h) > 0 for h in hist])
            vecs[has] = w * vecs[has] + (1 - w) * hv[has]
        return self._rank(vecs, hist, k, exclude_seen, exclude, candidates, explain, profiles=texts)

    def _rank(self, vecs, hist, k, exclude_seen, exclude, candidates, explain, profiles=None, exclude_rows=None):
        excl = [np.asarray(h, np.int64) if exclude_seen else np.zeros(0, np.int64) for h in hist]
        if exclude:
            extra = self.catalog.ids.indices(exclude)
            excl = [np.concatenate([e, extra]) for e in excl]
        if exclude_rows is not None:
            excl = [np.concatenate([e, np.asarray(r, np.int64)]) for e, r in zip(excl, exclude_rows)]
        if self.config.index != "exact" and candidates is None:
            stale = self._stale
            ids, top = self.index.search(vecs, k, exclude=[np.concatenate([e, stale]) for e in excl]
                                         if len(stale) else excl)
            if len(stale):  # items updated since the index was built: scored exactly, merged in
                ids, top = self._merge_exact(vecs, stale, excl, ids, top, k)
        else:
            ids, top = top_k_excluding(self._scores(vecs), k, excl, candidates, copy=False)
        ext = self.catalog.ids.ids_or_none(ids)
        expl = None
        if explain:
            expl = [self._explain(hist[b], ids[b][ids[b] >= 0], profiles[b] if profiles else None)
                    + [{}] * int((ids[b] < 0).sum()) for b in range(len(hist))]
        return Recommendations(ext, top.astype(np.float32), expl)

    def _merge_exact(self, vecs, items, excl, ids, top, k):
        """The top k of an index answer (ids, top) and the exact scores of ``items``, per query."""
        s = vindex.similarity(vecs, self.item_vectors[items], self.config.metric)
        for b, e in enumerate(excl):
            s[b, np.isin(items, e)] = -np.inf
        all_ids = np.concatenate([ids, np.broadcast_to(items, s.shape)], axis=1)
        all_top = np.concatenate([top, s], axis=1)
        order = np.argsort(-all_top, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(all_top, order, 1).astype(np.float32)
        return np.where(np.isfinite(top), np.take_along_axis(all_ids, order, 1), -1), top

    # -- explanations -------------------------------------------------------------------------------
    def explain_items(self, history, items) -> list[dict]:
        return self._explain(np.asarray(history, np.int64), np.asarray(items, np.int64), None)

    def _explain(self, history: np.ndarray, items: np.ndarray, profile: str | None, n: int = 3) -> list[dict]:
        """Per item: the history items closest to it (cosine) with the tags they share, and for a profile
        the profile words closest to it and the item's tags the profile mentions."""
        h = np.asarray(history, np.int64)[-self.config.max_history:]
        h = np.array(list(dict.fromkeys(h[::-1].tolist())), dtype=np.int64)  # distinct, most recent first
        rows = np.union1d(h, np.asarray(items, np.int64))  # what is read of the catalogue: these rows only
        unit = dict(zip(rows.tolist(), l2_normalize(self.item_vectors[rows])))
        tags = dict(zip(rows.tolist(), item_tags(self.catalog, rows)))
        titles = dict(zip(rows.tolist(), self.catalog.titles(rows)))
        words, wv = [], None
        if profile:
            words = profile_words(profile) or [profile]
            wv = self._encode_query(words)
            wv = l2_normalize(wv)
        out = []
        for i in items:
            e: dict = {"because": [], "shared_tags": []}
            if len(h):
                s = np.stack([unit[j] for j in h.tolist()]) @ unit[int(i)]
                for j in np.argsort(-s, kind="stable")[:n]:
                    shared = [t for t in tags[i] if t in set(tags[h[j]])]
                    e["because"].append({"item_id": self.catalog.ids.id(h[j]), "title": titles[h[j]],
                                         "similarity": round(float(s[j]), 4), "shared_tags": shared})
                    e["shared_tags"] += [t for t in shared if t not in e["shared_tags"]]
            if profile:
                s = wv @ unit[int(i)]
                e["profile_words"] = [{"word": words[j], "similarity": round(float(s[j]), 4)}
                                      for j in np.argsort(-s, kind="stable")[:n]]
                low = profile.lower()
                e["shared_tags"] += [t for t in tags[i] if t in low and t not in e["shared_tags"]]
            out.append(e)
        return out

    # -- checkpoints and reports ------------------------------------------------------------------------
    def _state(self):
        return {"raw_vectors": self.raw_vectors, "mean": self.mean.astype(np.float32),
                "stale_index_entries": self._stale.astype(np.int64)}

    def _save_extra(self, folder: Path) -> None:
        """The encoder ``auto`` chose (queries must use the catalogue's encoder) and, for an approximate
        index, the index itself, so that loading does not rebuild it."""
        (folder / "encoder.txt").write_text(f"{self.encoder_name or self.config.encoder}\n")
        if self.config.index != "exact":
            self.save_index(folder / "items.index")

    def _load_state(self, state, folder: Path) -> None:
        self.mean = state["mean"]
        chosen = Path(folder) / "encoder.txt"
        if chosen.exists():
            self.encoder_name = chosen.read_text().strip()
        elif self.encoder_name is None:  # a checkpoint from before "auto": its vectors came from minilm
            self.encoder_name = "minilm"
        saved = Path(folder) / "items.index"
        self._set_vectors(state["raw_vectors"], build_index=not saved.exists())
        if saved.exists():
            self.load_index(saved)
            self._stale = np.asarray(state.get("stale_index_entries", np.zeros(0)), np.int64)

    # -- hooks for a service that starts from saved vectors and a saved index ---------------------------
    def save_index(self, path: str | Path) -> Path:
        """Write the item index (``index.Index.save``) so that ``load_index`` can skip rebuilding it."""
        self._check_fitted()
        return self.index.save(path)

    def load_index(self, path: str | Path) -> None:
        """Use a saved index for these item vectors; refused when its size or kind does not match."""
        if self.item_vectors is None:
            raise LLMRecError("load_index needs the item vectors first (fit or load the model)")
        ix = vindex.load(path)
        dim = self.item_vectors.shape[1]
        if ix.dim is not None and ix.dim != dim:
            raise LLMRecError(f"{path}: the index holds {ix.dim}-dimensional vectors, the model's are "
                              f"{dim}-dimensional")
        if len(ix) != len(self.item_vectors) or ix.kind != self.config.index or ix.metric != self.config.metric:
            raise LLMRecError(f"{path}: an index of kind {ix.kind} over {len(ix)} {ix.metric} vectors, but this model "
                              f"has {len(self.item_vectors)} items and index={self.config.index} "
                              f"metric={self.config.metric}")
        self.index = ix

    def benchmark_extra(self) -> dict:
        n = len(self.catalog)
        return {"encoder": self.encoder_name, "encoder_dim": int(self.item_vectors.shape[1]),
                "encode_seconds": round(self.encode_seconds, 2),
                "cache_hits": self.cache_hits, "index_tuning": getattr(self, "index_tuning", {}),
                "notes": f"encoder {self.encoder_name}, user={self.config.user}; no training on "
                         f"interactions; {n} items, {self.cache_hits} of them from the embedding cache"}

    def card_extra(self) -> dict:
        return {"encoder": self.encoder_name, "encoder_dim": int(self.item_vectors.shape[1]),
                "index_tuning": getattr(self, "index_tuning", {})}


def _scratch_store() -> str:
    """A Milvus Lite path in a fresh temporary folder, removed (its store closed first) at exit."""
    import atexit
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="llmrec-milvus-")
    uri = str(Path(folder) / "items.db")

    def remove() -> None:
        from milvus_lite import server_manager_instance
        server_manager_instance.release_server(uri)
        shutil.rmtree(folder, ignore_errors=True)
    atexit.register(remove)
    return uri
