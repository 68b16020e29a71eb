"""An ensemble: several registered models trained on the same data, their scores fused per item.

Fusion ``logp`` adds each member's log-softmax over the catalogue (weighted): for models trained with a
softmax over items (sasrec, textseq, semantic-ids) that is the log of a geometric mean of their predicted
next-item distributions. ``zscore`` adds each member's scores standardised per query, for members whose
scores are similarities or counts (itemknn, zero-shot, popular).

Members train one after another, or with ``workers > 1`` in that many worker processes at once (each
member's own ``threads`` sets its torch threads, so two single-threaded members use two cores). With a
checkpoint folder, each member keeps its own training state under ``members/<i>-<name>/`` and resumes
from it; the saved ensemble holds every member as a complete checkpoint in the same place.

    llmrec train --dataset ml-1m --model ensemble --out runs/ens \\
        --set 'members=["sasrec", "textseq"]' --set workers=2 \\
        --set 'shared={"embedding_size": 128, "batch_size": 32, "threads": 1}'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import to_dict
from ..errors import ConfigError, LLMRecError
from .base import Recommender

MEMBERS_DIR = "members"


@dataclass(frozen=True)
class EnsembleConfig:
    members: tuple[str, ...] = ("sasrec", "textseq")  # registered model names (a name may repeat)
    configs: tuple[dict, ...] = ()   # per member config overrides, in the order of `members` ({} = none)
    shared: dict = field(default_factory=dict)  # overrides given to every member whose config has the key
    weights: tuple[float, ...] = ()  # per member fusion weight (empty = equal)
    fusion: Literal["logp", "zscore"] = "logp"
    workers: int = 1                 # members trained at once, in worker processes (1 = in this process)


def member_configs(config: EnsembleConfig) -> list[dict[str, Any]]:
    """Each member's config overrides: ``shared`` keys its Config has, then its own ``configs`` entry.
    Raises ConfigError naming the member for a bad entry (unknown name or key, wrong type)."""
    import dataclasses

    from . import get, get_class
    if not config.members:
        raise ConfigError("EnsembleConfig.members: name at least one model")
    if "ensemble" in config.members:
        raise ConfigError("EnsembleConfig.members: an ensemble cannot contain an ensemble")
    if config.configs and len(config.configs) != len(config.members):
        raise ConfigError(f"EnsembleConfig.configs: {len(config.configs)} entries for "
                          f"{len(config.members)} members; give one per member or none")
    if config.weights and len(config.weights) != len(config.members):
        raise ConfigError(f"EnsembleConfig.weights: {len(config.weights)} weights for "
                          f"{len(config.members)} members; give one per member or none")
    if config.weights and (min(config.weights) < 0 or sum(config.weights) <= 0):
        raise ConfigError(f"EnsembleConfig.weights: {list(config.weights)} must be >= 0 with a positive sum")
    if not isinstance(config.shared, dict):
        raise ConfigError(f"EnsembleConfig.shared: expected a mapping of config keys, got {config.shared!r}")
    if config.workers < 1:
        raise ConfigError(f"EnsembleConfig.workers: {config.workers} must be at least 1")
    out = []
    for i, name in enumerate(config.members):
        own = config.configs[i] if config.configs else {}
        if not isinstance(own, dict):
            raise ConfigError(f"EnsembleConfig.configs[{i}] ({name}): expected a mapping, got {own!r}")
        keys = {f.name for f in dataclasses.fields(get_class(name).Config)}
        cfg = {**{k: v for k, v in config.shared.items() if k in keys}, **own}
        try:
            get(name, cfg)
        except ConfigError as e:
            raise ConfigError(f"EnsembleConfig member {i} ({name}): {e}") from None
        out.append(cfg)
    unused = set(config.shared) - {k for cfg in out for k in cfg}
    if unused:
        raise ConfigError(f"EnsembleConfig.shared: no member has key(s) {', '.join(sorted(map(repr, unused)))}")
    return out


def _train_member(name: str, cfg: dict, data, split, folder: str | None, in_worker: bool = False) -> dict:
    """Fit one member (in a worker process or in this one) through ``pipeline.fit_card_save``: its training
    state kept in ``folder`` and the member saved there when given."""
    from .. import pipeline
    from . import get
    model = get(name, cfg)
    card = pipeline.fit_card_save(model, data, split, folder, progress=False)
    info = {"model": name, "config": to_dict(model.config), "fit_seconds": card["fit_seconds"],
            **model.card_extra()}
    if in_worker:
        import resource
        info["worker_peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    return {"info": info, "model": None if folder is not None else model}


def _log_softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


class Ensemble(Recommender):
    """Members' scores fused item by item (see the module docstring)."""

    name = "ensemble"
    Config = EnsembleConfig
    supports_resume = True

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._member_cfgs = member_configs(self.config)
        self.members: list[Recommender] = []
        self.member_info: list[dict] = []

    def _folders(self, root: Path) -> list[Path]:
        return [root / MEMBERS_DIR / f"{i}-{n}" for i, n in enumerate(self.config.members)]

    def _fit(self, data, train, split, progress) -> None:
        from . import load_model
        c = self.config
        jobs = list(zip(c.members, self._member_cfgs))
        folders: list[Path | None]
        tmp = None
        if c.workers > 1 and self.checkpoint_dir is None:
            import tempfile
            tmp = tempfile.TemporaryDirectory(prefix="llmrec-ensemble-")
            folders = self._folders(Path(tmp.name))
        else:
            folders = self._folders(Path(self.checkpoint_dir)) if self.checkpoint_dir else [None] * len(jobs)
        try:
            if c.workers > 1:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor
                with ProcessPoolExecutor(min(c.workers, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
                    futs = [ex.submit(_train_member, n, cfg, data, split, str(f), True) for (n, cfg), f in
                            zip(jobs, folders)]
                    results = [fu.result() for fu in futs]
                if progress:
                    for r in results:
                        print(f"ensemble: {r['info']['model']} trained in {r['info']['fit_seconds']:.0f}s")
            else:
                results = []
                for (n, cfg), f in zip(jobs, folders):
                    results.append(_train_member(n, cfg, data, split, None if f is None else str(f)))
                    if progress:
                        print(f"ensemble: {n} trained in {results[-1]['info']['fit_seconds']:.0f}s")
            # a member saved to a folder comes back from it (as a loaded checkpoint would)
            self.members = [r["model"] if r["model"] is not None else load_model(f)
                            for r, f in zip(results, folders)]
        finally:
            if tmp is not None:
                tmp.cleanup()
        self.member_info = [r["info"] for r in results]
        for m in self.members:
            m.set_histories(self._histories)

    # -- scoring ----------------------------------------------------------------------------------
    def _weights(self) -> np.ndarray:
        w = np.asarray(self.config.weights or [1.0] * len(self.members), dtype=np.float64)
        return w / w.sum()

    def member_scores(self, histories: list[np.ndarray]) -> list[np.ndarray]:
        """Each member's fused-scale scores float64 [b, n_items] (log-softmax or row z-scores)."""
        out = []
        for m in self.members:
            s = np.asarray(m.score_histories(histories), dtype=np.float64)
            if self.config.fusion == "logp":
                out.append(_log_softmax(s))
            else:
                sd = s.std(axis=1, keepdims=True)
                out.append((s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0))
        return out

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        total = sum(w * s for w, s in zip(self._weights(), self.member_scores(histories)))
        return total.astype(np.float32)

    def explain_items(self, history: np.ndarray, items: np.ndarray) -> list[dict]:
        """Each member's rank for the item (1 = its first choice) and the first member's reasons."""
        parts = self.member_scores([np.asarray(history, dtype=np.int64)])
        h = np.asarray(history, dtype=np.int64)
        ranks = []
        for s in parts:
            row = s[0].copy()
            row[h] = -np.inf
            order = np.argsort(-row, kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(1, len(order) + 1)
            ranks.append(rank)
        first = self.members[0].explain_items(history, items)
        return [{**first[j], "members": [{"model": m.name, "rank": int(r[i])}
                                         for m, r in zip(self.members, ranks)]}
                for j, i in enumerate(items)]

    def set_histories(self, histories: list[np.ndarray]) -> None:
        super().set_histories(histories)
        for m in self.members:
            m.set_histories(histories)

    # -- reporting and checkpoints -----------------------------------------------------------------
    def card_extra(self) -> dict:
        return {"members": self.member_info}

    def benchmark_extra(self) -> dict:
        return {"members": self.member_info}

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self._weights()}

    def _save_extra(self, folder: Path) -> None:
        """Every member as a complete checkpoint under ``members/<i>-<name>/`` (with its training state)."""
        for m, f, info in zip(self.members, self._folders(folder), self.member_info or [{}] * len(self.members)):
            m.set_histories(self._histories)
            m.save(f, card=info)

    def _load_state(self, state: dict[str, np.ndarray], folder: Path) -> None:
        from . import load_model
        folders = self._folders(folder)
        missing = [str(f) for f in folders if not (f / "config.json").exists()]
        if missing:
            raise LLMRecError(f"{folder}: ensemble member checkpoint(s) missing: {', '.join(missing)}")
        self.members = [load_model(f) for f in folders]
        for m in self.members:
            if len(m.catalog) != len(self.catalog):
                raise LLMRecError(f"{folder}: a member has {len(m.catalog)} items, the ensemble "
                                  f"{len(self.catalog)}; the checkpoint is inconsistent")
        self.member_info = [m.card for m in self.members]
