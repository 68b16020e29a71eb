"""The fine-tuned encoder as a recommender: contrastive fine-tuning (finetune.py) of a sentence encoder on
history text -> next item text, then zero-shot-style scoring: cosine(encode(history text), encode(item)).

``epochs=0`` gives the untuned encoder with the same scoring, the baseline the fine-tuning must beat.
The tuned encoder is saved beside the checkpoint in ``encoder/`` (a sentence-transformers folder) for
any model that takes an encoder name or folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import finetune, training
from ..config import Checked, option
from ..lm import torch_threads
from ..text import item_texts
from .base import Recommender


@dataclass(frozen=True)
class TunedEncoderConfig(Checked):
    encoder: str = "minilm"      # the starting sentence-transformers model (name or folder)
    epochs: int = option(5, ge=0)
    steps_per_epoch: int = option(100, ge=1)
    batch_size: int = option(32, ge=1)
    learning_rate: float = option(3e-5, gt=0.0)
    history_items: int = option(5, ge=1)  # items of history in the query text
    temperature: float = option(0.05, gt=0.0)
    patience: int = option(2, ge=1)
    eval_users: int = option(500, ge=0)  # validation users per epoch (a fixed random sample; 0 = all)
    max_minutes: float = option(0.0, ge=0.0)
    seed: int = 0
    device: str = "auto"
    threads: int = option(0, ge=0)  # torch CPU threads while fitting (0 = torch's default)


class TunedEncoder(Recommender):
    name = "tuned-encoder"
    Config = TunedEncoderConfig
    supports_resume = True

    def _fit(self, data, train, split, progress) -> None:
        with torch_threads(self.config.threads):
            self._train(data, split, progress)

    def _train(self, data, split, progress) -> None:
        c = self.config
        training.seed_everything(c.seed)
        self.device = training.device(c.device)
        self.encoder = finetune.load_encoder(c.encoder, self.device)
        self.texts = item_texts(data.catalog)
        validate = training.validator(self, data, split, c.eval_users, c.seed, before=self._encode_items)
        self.result = None
        if c.epochs > 0:
            self.result = finetune.contrastive_finetune(
                self.encoder, self.texts, self._histories, epochs=c.epochs,
                steps_per_epoch=c.steps_per_epoch, batch_size=c.batch_size, learning_rate=c.learning_rate,
                history_items=c.history_items, temperature=c.temperature, seed=c.seed, validate=validate,
                patience=c.patience, checkpoint_dir=self.checkpoint_dir, progress=progress,
                max_seconds=60.0 * c.max_minutes)
        self.encoder.eval()
        self._encode_items()

    def _encode_items(self) -> None:
        self.encoder.eval()
        self.item_vecs = finetune.embed(self.encoder, self.texts).cpu().numpy()

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [b, n_items]: cosine(history text, item text)."""
        self.encoder.eval()
        q = [finetune.history_text(self.texts, np.asarray(h, np.int64), self.config.history_items)
             for h in histories]
        with torch.no_grad():
            u = finetune.embed(self.encoder, q).cpu().numpy()
        return (u @ self.item_vecs.T).astype(np.float32)

    def explain_items(self, history, items) -> list[dict]:
        q = finetune.history_text(self.texts, np.asarray(history, np.int64), self.config.history_items)
        return [{"reason": f"text similar to the recent history: {q[:120]}"} for _ in items]

    def card_extra(self) -> dict:
        return {"training": self.result.summary()} if self.result is not None else {}

    def benchmark_extra(self) -> dict:
        if self.result is None:
            return {}
        return {"training": self.result.summary(), "device": str(self.device),
                "history": self.result.history}

    def _save_extra(self, folder: Path) -> None:
        self.encoder.save(str(Path(folder) / "encoder"))
        training.save_training_files(self.result, self.checkpoint_dir, folder, self.name)

    def _state(self):
        return {"item_vecs": self.item_vecs}

    def _load_state(self, state, folder: Path) -> None:
        self.device = training.device(self.config.device)
        self.encoder = finetune.load_encoder(str(Path(folder) / "encoder"), self.device)
        self.texts = item_texts(self.catalog)
        self.item_vecs = state["item_vecs"]
        self.result = None
