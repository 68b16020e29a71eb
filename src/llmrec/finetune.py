"""Contrastive fine-tuning of the text encoder: the history rendered as text -> the next item's text, with
in-batch negatives (InfoNCE), so the encoder learns the data's notion of "next".

Pairs come from the training split only: for a random position t in a user's history, the query is the
``history_items`` items before t ("Title A; Title B; ...", most recent last) and the positive is item t.
Other positives in the batch are the negatives; a batch item equal to the positive is masked out.
Validation (each epoch, for early stopping) ranks all items for the validation users by
cosine(query text, item text): the zero-shot text recommender's score.

The result is a sentence-transformers folder: point any encoder-based model at it (e.g. the zero-shot
model's ``encoder`` or textseq's ``encoder``), or use the registered ``tuned-encoder`` recommender.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import training
from .errors import DataError


def history_text(titles: list[str], history: np.ndarray, n: int) -> str:
    """The last ``n`` items of a history as one string, most recent last."""
    return "; ".join(titles[i] for i in history[-n:]) if len(history) else ""


def load_encoder(name: str, device: torch.device):
    """A trainable sentence-transformers model (``encoder_backends.sentence_transformer``): ``minilm`` or a folder /
    hub name."""
    from .encoder_backends import sentence_transformer
    return sentence_transformer(name, device=str(device))


def embed(model, texts: list[str], batch_size: int = 128, grad: bool = False) -> torch.Tensor:
    """float [n, d], L2-normalised; with ``grad`` the graph is kept (one batch at a time)."""
    outs = []
    for s in range(0, len(texts), batch_size):
        prep = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 / older
        feats = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                 for k, v in prep(texts[s:s + batch_size]).items()}
        if grad:
            outs.append(model(feats)["sentence_embedding"])
        else:
            with torch.no_grad():
                outs.append(model(feats)["sentence_embedding"])
    return F.normalize(torch.cat(outs), dim=-1)


def contrastive_finetune(model, item_texts: list[str], histories: list[np.ndarray], *, epochs: int,
                         steps_per_epoch: int, batch_size: int, learning_rate: float, history_items: int,
                         temperature: float, seed: int, validate=None, patience: int = 3,
                         checkpoint_dir: Path | None = None, progress: bool = True,
                         max_seconds: float = 0.0) -> training.LoopResult:
    """Fine-tune ``model`` (a SentenceTransformer) in place; returns the loop's result (best weights kept).

    histories: per user, int64 item indices in time order (training split only).
    """
    users = np.array([u for u, h in enumerate(histories) if len(h) >= 2])
    if len(users) == 0:
        raise DataError("no history with 2 or more items: nothing to learn 'next' from")
    lengths = np.array([len(histories[u]) for u in users])
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)

    def batches(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        for _ in range(steps_per_epoch):
            pick = rng.choice(len(users), size=min(batch_size, len(users)), replace=False)
            t = (rng.random(len(pick)) * (lengths[pick] - 1)).astype(np.int64) + 1  # 1..len-1
            hs = [histories[users[p]] for p in pick]
            yield ([history_text(item_texts, h[:ti], history_items) for h, ti in zip(hs, t, strict=True)],
                   np.array([h[ti] for h, ti in zip(hs, t, strict=True)]))

    def step(batch) -> torch.Tensor:
        queries, targets = batch
        uniq, inv = np.unique(targets, return_inverse=True)  # one copy of each positive in the batch
        q = embed(model, queries, grad=True)
        p = embed(model, [item_texts[i] for i in uniq], grad=True)
        logits = q @ p.T / temperature
        return F.cross_entropy(logits, torch.from_numpy(inv).to(logits.device))

    return training.fit_loop(model, opt, batches, step, validate, epochs=epochs, patience=patience,
                             checkpoint_dir=checkpoint_dir, progress=progress, desc="contrastive fine-tune",
                             fingerprint={"kind": "contrastive", "n_items": len(item_texts),
                                          "batch_size": batch_size, "learning_rate": learning_rate,
                                          "history_items": history_items, "seed": seed,
                                          "steps_per_epoch": steps_per_epoch},
                             max_seconds=max_seconds)
