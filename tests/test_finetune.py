"""Contrastive fine-tuning: history text -> next item text with in-batch negatives lowers its loss and
beats the untuned encoder on the synthetic data, whose next items share their topic's words."""

import numpy as np
import pytest

from llmrec import evaluate, models
from llmrec.finetune import history_text


def test_history_text_is_most_recent_last():
    titles = ["A", "B", "C", "D"]
    assert history_text(titles, np.array([0, 1, 2, 3]), 2) == "C; D"
    assert history_text(titles, np.array([], dtype=np.int64), 2) == ""


@pytest.mark.slow
def test_finetuning_beats_the_untuned_encoder(tiny, tiny_split):
    users = tiny_split.test_users[:120]
    base = models.get("tuned-encoder", epochs=0, threads=1).fit(tiny, tiny_split, progress=False)
    tuned = models.get("tuned-encoder", epochs=1, steps_per_epoch=12, batch_size=16, learning_rate=1e-4,
                       eval_users=30, threads=1).fit(tiny, tiny_split, progress=False)
    a = evaluate.evaluate(base, tiny_split, tiny.n_users, tiny.n_items, ks=(10,), users=users,
                          progress=False)
    b = evaluate.evaluate(tuned, tiny_split, tiny.n_users, tiny.n_items, ks=(10,), users=users,
                          progress=False)
    assert tuned.result.history[0]["loss"] > 0
    assert b.metrics["NDCG@10"] > a.metrics["NDCG@10"] + 0.02, (a.metrics, b.metrics)
