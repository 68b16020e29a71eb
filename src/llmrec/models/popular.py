"""Most popular items in the training log: the floor every other model must clear."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Recommender


@dataclass(frozen=True)
class PopularConfig:
    pass


class Popular(Recommender):
    name = "popular"
    Config = PopularConfig

    def _fit(self, data, train, split, progress) -> None:
        self.counts = np.bincount(train.item, minlength=data.n_items).astype(np.float32)

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        n = len(self.catalog)
        counts = self.counts if len(self.counts) == n else np.pad(self.counts, (0, n - len(self.counts)))
        return np.broadcast_to(counts, (len(histories), n))

    def explain_items(self, history, items) -> list[dict]:
        return [{"reason": f"popular: {int(self.counts[i]) if i < len(self.counts) else 0} "
                           "interactions in the training log"} for i in items]

    def _state(self):
        return {"counts": self.counts}

    def _load_state(self, state, folder: Path) -> None:
        self.counts = state["counts"]
