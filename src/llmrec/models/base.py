"""The recommender protocol every model implements, and the checkpoint format they share.

A model is fitted on a Dataset (optionally with a Split, for validation-driven training) and scores raw
histories: ``score_histories(list of int64 item-index arrays) -> float32 [b, n_items]``, higher is better.
Everything public speaks external ids: ``recommend(users=...)`` or ``recommend(histories=...)``.

Optional capabilities are declared, and callers check them with ``isinstance`` (never ``hasattr``):
``TextQueries`` (free-text profiles: ``recommend_text``), ``AddsItems`` (new items scored from their text:
``add_items``), ``FitsCatalog`` (fitted on a catalogue alone: ``fit_catalog``), and the class flag
``supports_resume`` (training state kept in ``fit``'s ``checkpoint_dir`` and resumed from there).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .. import __version__
from ..config import from_dict, to_dict
from ..data import Catalog, Dataset, IdMap
from ..errors import DataError, LLMRecError
from ..metrics import pad_top_k, top_k_excluding
from ..split import Split


@dataclass
class Recommendations:
    """Top-k per query: item_ids object [b, k] (external ids), scores float32 [b, k], best first.

    ``explanations[b][j]`` is a dict for item j of query b when asked for, else None.
    Rows shorter than k (tiny catalogues, heavy filters) are padded with None ids and -inf scores.
    """

    item_ids: np.ndarray
    scores: np.ndarray
    explanations: list[list[dict]] | None = None

    def records(self, catalog: Catalog, row: int = 0) -> list[dict]:
        """One query's results as JSON-able dicts (item_id, score, title, plus explanation)."""
        kept = [j for j, iid in enumerate(self.item_ids[row]) if iid is not None]
        ids = [self.item_ids[row][j] for j in kept]
        titles = catalog.titles(catalog.ids.indices(ids)) if ids else []
        out = []
        for j, iid, title in zip(kept, ids, titles):
            rec = {"item_id": iid, "score": float(self.scores[row][j]), "title": title}
            if self.explanations is not None:
                rec["explanation"] = self.explanations[row][j]
            out.append(rec)
        return out


class Recommender(ABC):
    """Base class. Subclasses set ``name`` and ``Config`` (a frozen dataclass) and implement
    ``_fit``, ``score_histories`` and, to be saved, ``_state`` / ``_load_state``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # score_histories returns a new array that nothing else holds, so the caller (the evaluator) may
    # overwrite it in place; False (the default): the caller copies it first
    fresh_scores: ClassVar[bool] = False
    # training state is written to fit's checkpoint_dir after each epoch, and a run started there resumes
    supports_resume: ClassVar[bool] = False
    # fit validates after epochs and calls ``on_validation(epoch, valid NDCG@10)`` after each (a search
    # prunes poor trials from it); False: fit reports nothing while it trains
    reports_validation: ClassVar[bool] = False

    def __init__(self, config: Any = None, **overrides: Any):
        if config is None or isinstance(config, dict):
            config = from_dict(self.Config, {**(config or {}), **overrides})
        elif overrides:
            config = from_dict(self.Config, {**to_dict(config), **overrides})
        self.config = config
        self.catalog: Catalog | None = None
        self.users: IdMap | None = None
        self._histories: list[np.ndarray] | None = None
        # the folder holding this model's training state: fit's checkpoint_dir, or the checkpoint it was
        # loaded from (saving elsewhere carries the state along); None = none
        self.checkpoint_dir: Path | None = None
        self.card: dict = {}
        # called with (epoch, validation NDCG@10) after each validation by a model that
        # ``reports_validation``; it may raise to stop the fit (training.fit_loop's on_validation)
        self.on_validation = None
        self._text_vectors: tuple[Catalog, np.ndarray, str] | None = None

    # -- training -------------------------------------------------------------------------------
    def fit(self, data: Dataset, split: Split | None = None, progress: bool = True,
            checkpoint_dir: str | Path | None = None) -> Recommender:
        """Fit on ``split.train`` when a split is given (validation may drive early stopping),
        else on all of ``data``'s interactions. ``checkpoint_dir``: where a model that
        ``supports_resume`` keeps its training state and resumes from (others ignore it)."""
        train = split.train if split is not None else data.interactions
        if len(train) == 0:
            raise DataError(f"data set {data.name!r} has no training interactions")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.catalog, self.users = data.catalog, data.users
        self._histories = train.histories(data.n_users)
        self._fit(data, train, split, progress)
        return self

    @abstractmethod
    def _fit(self, data: Dataset, train, split: Split | None, progress: bool) -> None: ...

    @abstractmethod
    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [b, n_items] for b histories of internal item indices (any may be empty)."""

    def _search(self, hist: list[np.ndarray], k: int,
                banned: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """Hook for ``recommend``: the top-k (internal ids int64 [b, k], scores float32 [b, k]; missing
        -> score -inf) per history without scoring every item, never returning a row's ``banned``
        indices; None (the default) = score every item with ``score_histories``. Evaluation never
        uses it: it always ranks every item."""
        return None

    def explain_items(self, history: np.ndarray, items: np.ndarray) -> list[dict]:
        """Why each of ``items`` was recommended for ``history`` (one dict per item)."""
        return [{"reason": f"scored by {self.name}"} for _ in items]

    # -- the public API -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.catalog is None:
            raise LLMRecError(f"model {self.name!r} is not fitted: call fit() or load a checkpoint")

    def set_histories(self, histories: list[np.ndarray]) -> None:
        """Replace the known users' histories (e.g. with the full log before serving)."""
        self._histories = list(histories)

    def take_histories(self) -> dict[str, np.ndarray]:
        """The known users' histories (user id -> int64 item indices), handed over: the model keeps none
        from now on (``history_of`` answers empty histories), so the caller is their one owner (the
        service engine, which passes each query's history in and deletes a user in one place)."""
        self._check_fitted()
        out = {uid: np.asarray(h, np.int64) for uid, h in zip(self.users.ids(), self._histories)}
        self.set_histories([np.zeros(0, np.int64)] * len(self.users))
        return out

    def upsert_catalog(self, rows: pd.DataFrame) -> np.ndarray:
        """Add or replace items in the catalogue (a frame with ``item_id`` and text fields); returns their
        indices. Histories and events may name them at once; a model that cannot score an item from its
        text (not ``AddsItems``) scores the new ones 0 until it is retrained."""
        self._check_fitted()
        self.catalog, idx = self.catalog.upsert(rows)
        return idx

    def card_extra(self) -> dict:
        """What the model card adds for this model (e.g. the training summary)."""
        return {}

    def benchmark_extra(self) -> dict:
        """What a benchmark result adds for this model (e.g. the training history)."""
        return {}

    def diversity_vectors(self) -> tuple[np.ndarray, str]:
        """The item vectors diversity is measured in (MMR's re-ranking, intra-list diversity): float32
        [n_items, d], rows not necessarily unit (cosine is taken), and what they are. Models with their own
        item vectors override this (sasrec, textseq: the item table; zero-shot: its text vectors); the
        default is the catalogue's text (``text.item_texts``) encoded by the encoder ``encoders.auto``
        picks for it, cached on disk, and re-encoded when the catalogue changes."""
        self._check_fitted()
        if self._text_vectors is None or self._text_vectors[0] is not self.catalog:
            from .. import encoders
            from ..text import item_texts
            texts = item_texts(self.catalog)
            name = encoders.auto(len(texts), self.catalog.titles())  # as zero-shot picks
            vecs = encoders.cached(name).encode(texts, progress=False)
            self._text_vectors = (self.catalog, vecs, f"{name} vectors of the item text")
        return self._text_vectors[1], self._text_vectors[2]

    def diversify(self, recs: Recommendations, k: int, diversity: float) -> Recommendations:
        """Each row of ``recs`` (a longer candidate list, best first) re-ranked by MMR (``rerank.mmr``)
        over ``diversity_vectors`` and cut to ``k``; the scores are still the model's own, explanations
        follow their items. ``diversity=0`` keeps the order."""
        from ..rerank import mmr
        from ..vectors import l2_normalize
        vecs, _ = self.diversity_vectors()
        b = len(recs.item_ids)
        ids = np.full((b, k), None, dtype=object)
        scores = np.full((b, k), -np.inf, np.float32)
        expl = None if recs.explanations is None else [[{} for _ in range(k)] for _ in range(b)]
        for r in range(b):
            keep = [j for j, iid in enumerate(recs.item_ids[r]) if iid is not None]
            idx = self.catalog.ids.indices([recs.item_ids[r][j] for j in keep])
            order = [keep[j] for j in mmr(recs.scores[r][keep], l2_normalize(vecs[idx]), k, diversity)]
            ids[r, :len(order)] = recs.item_ids[r][order]
            scores[r, :len(order)] = recs.scores[r][order]
            if expl is not None:
                expl[r][:len(order)] = [recs.explanations[r][j] for j in order]
        return Recommendations(ids, scores, expl)

    def history_of(self, user: object) -> np.ndarray:
        self._check_fitted()
        return self._histories[self.users.index(user)]

    def recommend(self, users: list | None = None, histories: list[list] | None = None, k: int = 10,
                  exclude_seen: bool = True, exclude: list | None = None,
                  candidates: np.ndarray | None = None, explain: bool = False,
                  diversity: float = 0.0) -> Recommendations:
        """Top-k for known ``users`` (external ids) or raw ``histories`` (lists of external item ids).

        exclude: external item ids never to return; candidates: optional bool mask [n_items] of items
        allowed (e.g. a genre filter). diversity: 0 (off) to 1, MMR's weight on being unlike the items
        listed before (``diversify`` over the model's top ``rerank.pool(k)``).
        """
        from ..rerank import check_diversity, pool
        diversity = check_diversity(diversity)
        self._check_fitted()
        if (users is None) == (histories is None):
            raise LLMRecError("pass exactly one of users= or histories=")
        if k < 1:
            raise LLMRecError(f"k must be at least 1, got {k}")
        if users is not None:
            hist = [self.history_of(u) for u in users]
        else:
            hist = [self.catalog.ids.indices(h) for h in histories]
        if diversity == 0.0:
            return self.recommend_indices(hist, k, exclude_seen, exclude, candidates, explain)
        recs = self.recommend_indices(hist, pool(k, len(self.catalog)), exclude_seen, exclude, candidates, explain)
        return self.diversify(recs, k, diversity)

    def recommend_indices(self, hist: list[np.ndarray], k: int, exclude_seen: bool = True,
                          exclude: list | None = None, candidates: np.ndarray | None = None,
                          explain: bool = False, exclude_rows: list[np.ndarray] | None = None) -> Recommendations:
        """``recommend`` on internal histories; ``exclude_rows``: per query, internal indices never to
        return (on top of ``exclude``, which holds for every query)."""
        none = np.zeros(0, np.int64)
        everyone = self.catalog.ids.indices(exclude) if exclude else none
        rows = list(exclude_rows or ()) + [none] * (len(hist) - len(exclude_rows or ()))
        banned = [np.concatenate([np.asarray(h, np.int64) if exclude_seen else none,
                                  np.asarray(e, np.int64), everyone]) for h, e in zip(hist, rows)]
        found = self._search(hist, k, banned) if candidates is None else None
        if found is not None:
            ids, top = pad_top_k(*found, k)
        else:
            scores = np.asarray(self.score_histories(hist), dtype=np.float32)
            ids, top = top_k_excluding(scores, k, banned, candidates, copy=not self.fresh_scores)
        ext = self.catalog.ids.ids_or_none(ids)
        expl = None
        if explain:  # explanations for the items found; padding gets an empty one
            expl = [self.explain_items(h, ids[b][ids[b] >= 0]) + [{}] * int((ids[b] < 0).sum())
                    for b, h in enumerate(hist)]
        return Recommendations(ext, top, expl)

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        raise LLMRecError(f"model {self.name!r} cannot be saved")

    def _load_state(self, state: dict[str, np.ndarray], folder: Path) -> None:
        raise LLMRecError(f"model {self.name!r} cannot be loaded")

    def save(self, folder: str | Path, card: dict | None = None) -> Path:
        """Write config.json, state.safetensors, catalog.parquet, histories and README.md (a card).

        Written into a temporary sibling folder first and moved into place, so a failure leaves
        nothing half-written (an existing checkpoint at ``folder`` is replaced only on success).
        """
        import shutil
        import tempfile

        from safetensors.numpy import save_file
        self._check_fitted()
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            state = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
            save_file(state, str(tmp / "state.safetensors"))
            self._save_extra(tmp)
            self.catalog.frame.astype(str).to_parquet(tmp / "catalog.parquet")
            lens = np.array([len(h) for h in self._histories], dtype=np.int64)
            flat = np.concatenate(self._histories) if len(self._histories) else np.zeros(0, np.int64)
            save_file({"lengths": lens, "items": flat.astype(np.int64)},
                      str(tmp / "histories.safetensors"))
            meta = {"model": self.name, "llmrec_version": __version__, "config": to_dict(self.config),
                    "n_items": len(self.catalog), "users": list(self.users.ids()), "card": card or {}}
            (tmp / "config.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
            (tmp / "README.md").write_text(_card_text(self, card or {}))
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def _save_extra(self, folder: Path) -> None:
        """Hook: write extra files (adapters, tokenizers) into the checkpoint folder being built."""
        return None


def _card_text(model: Recommender, card: dict) -> str:
    lines = [f"# llmrec model: {model.name}", "", f"- llmrec version: {__version__}",
             f"- items in catalogue: {len(model.catalog):,}; known users: {len(model.users):,}",
             "- config: `" + json.dumps(to_dict(model.config)) + "`"]
    for k, v in card.items():
        lines.append(f"- {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"


def read_meta(folder: str | Path) -> dict:
    """A checkpoint's config.json (model name, config, ``users``, card) without loading the model; refuses
    a folder that is not a checkpoint and other versions' formats clearly."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise LLMRecError(f"{folder}: not an llmrec checkpoint (no config.json)")
    try:
        meta = json.loads(cfg_path.read_text())
        meta["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LLMRecError(f"{cfg_path}: not a valid llmrec checkpoint config ({e})") from None
    major = str(meta.get("llmrec_version", "0")).split(".")[0]
    if major != __version__.split(".")[0]:
        raise LLMRecError(f"{folder}: written by llmrec {meta.get('llmrec_version')}, this is "
                          f"{__version__}; retrain the model")
    return meta


def load_model(folder: str | Path) -> Recommender:
    """Load a checkpoint written by ``Recommender.save``; refuses other versions' formats clearly."""
    from safetensors.numpy import load_file

    from . import get
    folder = Path(folder)
    meta = read_meta(folder)
    model = get(meta["model"], meta["config"])
    model.catalog = Catalog.from_frame(pd.read_parquet(folder / "catalog.parquet"))
    if len(model.catalog) != meta["n_items"]:
        raise LLMRecError(f"{folder}: catalogue has {len(model.catalog)} items, config says "
                          f"{meta['n_items']}")
    model.users = IdMap(meta["users"], kind="user")
    h = load_file(str(folder / "histories.safetensors"))
    model._histories = np.split(h["items"], np.cumsum(h["lengths"])[:-1]) if len(h["lengths"]) else []
    model._load_state(load_file(str(folder / "state.safetensors")), folder)
    model.card = meta.get("card", {})
    model.checkpoint_dir = folder
    return model


@runtime_checkable
class TextQueries(Protocol):
    """A model that recommends for free-text profiles (one per query), optionally mixed with histories,
    and scores every item for a profile (``score_texts``: float32 [b, n_items])."""

    def score_texts(self, texts: list[str]) -> np.ndarray: ...

    def recommend_text(self, texts: list[str], k: int = 10, histories: list[list] | None = None,
                       exclude_seen: bool = True, exclude: list | None = None,
                       candidates: np.ndarray | None = None, explain: bool = False) -> Recommendations: ...


@runtime_checkable
class AddsItems(Protocol):
    """A model that scores new items from their text at once: ``add_items`` upserts them into its
    ``catalog`` and returns their indices."""

    def add_items(self, rows: pd.DataFrame) -> np.ndarray: ...


@runtime_checkable
class FitsCatalog(Protocol):
    """A model that can be fitted on a catalogue alone, with no interaction log."""

    def fit_catalog(self, catalog: Catalog, progress: bool = True) -> Recommender: ...
