"""Item tokens: a real LM (SmolLM2, first two layers) learns the next item where the untuned one does not;
scores only ever name catalogue items; text queries; new items; long histories; bad input."""

import numpy as np
import pytest

from llmrec import models, split
from llmrec.errors import ConfigError, DataError, LLMRecError

pytest.importorskip("transformers")

from test_titlegen import chain_dataset  # noqa: E402  (the 12-item cycle data set)

FAST = {"layers": 2, "max_history": 5, "batch_size": 16, "dropout": 0.0, "threads": 1, "latency_sample": 3}
CYCLE = [np.array([i, (i + 1) % 12]) for i in range(12)]
NEXT = np.array([(i + 2) % 12 for i in range(12)])


@pytest.fixture(scope="module")
def chain():
    ds = chain_dataset()
    return ds, split.leave_one_out(ds)


@pytest.fixture(scope="module")
def tuned(chain):
    ds, sp = chain
    return models.get("item-tokens", {**FAST, "layers": 2, "epochs": 5}).fit(ds, sp, progress=False)


def test_fine_tuning_ranks_the_next_item_first_where_zero_shot_does_not(chain, tuned):
    ds, sp = chain
    zero = models.get("item-tokens", {**FAST, "layers": 2, "finetune": "none"}).fit(ds, sp, progress=False)
    tuned_acc = (tuned.score_histories(CYCLE).argmax(1) == NEXT).mean()
    zero_acc = (zero.score_histories(CYCLE).argmax(1) == NEXT).mean()
    assert tuned_acc >= 0.75, tuned_acc
    assert zero_acc <= 0.34, zero_acc


def test_item_tokens_start_from_the_title_embedding(chain):
    ds, sp = chain
    m = models.get("item-tokens", {**FAST, "model_name": "tiny-random", "finetune": "none"}).fit(ds, sp, progress=False)
    ids = m.tok(" Apple", add_special_tokens=False).input_ids
    e = m.text_emb[ids]
    want = e.mean(0) * (e.norm(dim=1).mean() / e.mean(0).norm())
    np.testing.assert_allclose(m.net.items[0].detach().numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_every_score_names_a_catalogue_item_and_rates_are_reported(tuned, chain):
    ds, _ = chain
    s = tuned.score_histories(CYCLE + [np.array([], np.int64)])
    assert s.shape == (13, ds.n_items) and np.isfinite(s).all()
    recs = tuned.recommend(histories=[["i0", "i1"]], k=12)
    assert set(recs.item_ids[0]) - {None} <= set(ds.catalog.ids.ids(np.arange(ds.n_items)))
    extra = tuned.benchmark_extra()
    assert extra["invalid_rate"] == 0.0 and 0.0 <= extra["invalid_rate_unconstrained"] <= 1.0
    assert extra["latency_ms_p50"] > 0 and extra["layers_used"] == 2


def test_text_query_answers_with_catalogue_items(tuned, chain):
    ds, _ = chain
    recs = tuned.recommend_text(["something like a fruit"], k=3, explain=True)
    assert all(x in ds.catalog.ids for x in recs.item_ids[0])
    assert recs.explanations[0][0]["request"] == "something like a fruit"
    with_hist = tuned.recommend_text(["anything"], k=3, histories=[["i3", "i4"]])
    assert not {"i3", "i4"} & set(with_hist.item_ids[0])
    assert isinstance(tuned, models.TextQueries) and isinstance(tuned, models.AddsItems)
    with pytest.raises(LLMRecError, match="non-empty"):
        tuned.recommend_text([" "])
    scores = tuned.score_texts(["something like a fruit", "anything"])  # the ranking recommend_text takes
    assert scores.shape == (2, len(ds.catalog))
    assert list(np.argsort(-scores[0], kind="stable")[:3]) == list(ds.catalog.ids.indices(recs.item_ids[0]))
    with pytest.raises(LLMRecError, match="non-empty"):
        tuned.score_texts([""])


def test_long_history_keeps_the_newest_items(tuned):
    long = np.array([7, 3, 9, 2, 0, 1, 2, 3, 4])  # max_history 5: only 0..4 is read
    np.testing.assert_allclose(tuned.score_histories([long]), tuned.score_histories([long[-5:]]), atol=1e-5)


def test_new_items_get_tokens_from_their_title(chain):
    ds, sp = chain
    m = models.get("item-tokens", {**FAST, "model_name": "tiny-random", "epochs": 1}).fit(ds, sp, progress=False)
    before = m.score_histories([np.array([0, 1])])
    idx = m.add_items([{"item_id": "new", "title": "Apple"}, {"item_id": "i0", "title": "Renamed"}])
    assert idx.tolist() == [12, 0] and len(m.catalog) == 13
    after = m.score_histories([np.array([0, 1])])
    np.testing.assert_allclose(after[:, :12], before, atol=1e-5)  # an updated item keeps its trained token
    assert np.isfinite(after[0, 12])
    assert "new" in set(m.recommend(histories=[["i0"]], k=13).item_ids[0])


def test_colliding_titles_are_separate_tokens(chain):
    ds = chain_dataset(titles=["Heat", "Heat"] + [f"Film {i}" for i in range(10)])
    m = models.get("item-tokens", {**FAST, "model_name": "tiny-random", "finetune": "none"})
    m.fit(ds, split.leave_one_out(ds), progress=False)
    assert m.card_extra()["items_sharing_a_title"] == 1 and len(m.net.items) == 12
    s = m.score_histories([np.array([5])])[0]
    assert s[0] == s[1]  # untrained: the same start, so the same score


def test_checkpoint_round_trip(tuned, tmp_path):
    tuned.save(tmp_path / "ck")
    back = models.load_model(tmp_path / "ck")
    np.testing.assert_allclose(back.score_histories(CYCLE), tuned.score_histories(CYCLE), rtol=1e-4, atol=1e-4)


def test_lora_trains_and_merges(chain):
    ds, sp = chain
    m = models.get("item-tokens", {**FAST, "model_name": "tiny-random", "finetune": "lora", "epochs": 2,
                                   "learning_rate": 1e-2})
    m.fit(ds, sp, progress=False)
    assert not any("lora" in k for k in m.net.state_dict())
    assert m.result.history[0]["loss"] > 0


def test_bad_input_is_one_clear_error(chain):
    ds, sp = chain
    with pytest.raises(ConfigError, match="text_prompt"):
        models.get("item-tokens", {"text_prompt": "no slot"})
    with pytest.raises(ConfigError, match="layers"):
        models.get("item-tokens", {**FAST, "model_name": "tiny-random", "layers": 9}).fit(ds, sp, progress=False)
    with pytest.raises(LLMRecError, match="cannot load causal language model"):
        models.get("item-tokens", {**FAST, "model_name": "/no/such/lm"}).fit(ds, sp, progress=False)
    import pandas as pd

    from llmrec.data import build_dataset
    one = build_dataset("one", pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [0]}),
                        pd.DataFrame({"item_id": ["a"], "title": ["A"]}))
    with pytest.raises(DataError, match="2 or more items"):
        models.get("item-tokens", {**FAST, "model_name": "tiny-random"}).fit(one, progress=False)
