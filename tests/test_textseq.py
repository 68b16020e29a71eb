"""The text-based sequential model: learns from item text, scores new items from text alone
(inductive), refuses bad text vectors and unknown encoders."""

import numpy as np
import pandas as pd
import pytest

from llmrec import models
from llmrec.errors import ConfigError, LLMRecError
from llmrec.models.textseq import hash_embed, item_texts

FAST = dict(encoder="hash", id_embedding=False, embedding_size=32, max_history=20, epochs=12, batch_size=64,
            learning_rate=5e-3, dropout=0.1, patience=4, threads=1)


@pytest.fixture(scope="module")
def textseq(tiny, tiny_split):
    return models.get("textseq", FAST).fit(tiny, tiny_split, progress=False)


def test_text_only_model_beats_popularity(textseq, beats_popularity):
    beats_popularity(textseq)


def test_new_item_is_scored_from_its_text(textseq, tiny, tmp_path):
    hist = [textseq.history_of(tiny.users.id(0))]
    before = textseq.score_histories(hist)
    twin = tiny.catalog.row(7)
    twin["item_id"] = "brand-new"
    idx = textseq.add_items(pd.DataFrame([twin]))
    assert list(idx) == [tiny.n_items] and len(textseq.catalog) == tiny.n_items + 1
    after = textseq.score_histories(hist)
    assert after.shape == (1, tiny.n_items + 1)
    np.testing.assert_allclose(after[0, :-1], before[0], rtol=1e-5, atol=1e-5)
    assert after[0, -1] == pytest.approx(after[0, 7], abs=1e-5)  # same text, same score
    recs = textseq.recommend(histories=[["brand-new"]], k=3)
    assert "brand-new" not in set(recs.item_ids[0])
    textseq.save(tmp_path / "ck")
    back = models.load_model(tmp_path / "ck")
    np.testing.assert_allclose(back.score_histories(hist), after, rtol=1e-4, atol=1e-5)
    with pytest.raises(LLMRecError, match="expected"):
        textseq.add_items(pd.DataFrame([{"item_id": "x2", "title": "t"}]), vectors=np.zeros((1, 3)))


def test_precomputed_text_vectors(tiny, tiny_split):
    vec = hash_embed(item_texts(tiny.catalog))
    m = models.get("textseq", {**FAST, "epochs": 1}).with_text_vectors(vec).fit(tiny, tiny_split,
                                                                                 progress=False)
    assert np.isfinite(m.score_histories([np.array([1, 2])])).all()
    with pytest.raises(LLMRecError, match="text vectors have shape"):
        models.get("textseq", {**FAST, "epochs": 1}).with_text_vectors(vec[:-1]).fit(tiny, progress=False)


def test_unknown_encoder_is_named(tiny):
    with pytest.raises(LLMRecError, match="nope"):
        models.get("textseq", {**FAST, "encoder": "nope", "epochs": 1}).fit(tiny, progress=False)
    with pytest.raises(ConfigError, match="'text_model'"):
        models.get("textseq", {"text_model": "x"})


def test_training_keeps_its_thread_count(tiny, tiny_split):
    """Encoding item text (which uses several threads) must not leave training on more than `threads`."""
    import torch
    before = torch.get_num_threads()
    seen = []
    m = models.get("textseq", encoder="minilm", threads=1, epochs=1, embedding_size=16, max_history=10)
    real = m._item_module

    def spy(data, n_items):
        out = real(data, n_items)
        seen.append(torch.get_num_threads())
        return out
    m._item_module = spy
    m.fit(tiny, tiny_split, progress=False)
    torch.set_num_threads(before)
    assert seen == [1]
