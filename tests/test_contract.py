"""The contract every registered model passes: shapes, dtypes, seen items excluded, external ids only,
batch = one-by-one, raw histories work, save/load round-trips, and a learning floor on synthetic data.

A model joins by adding an entry to CONTRACT: its registered name and a small, fast config.
"""

import numpy as np
import pytest

from llmrec import evaluate, models
from llmrec.errors import LLMRecError, UnknownNameError

# name -> (config overrides for a fast run, minimum test HR@10 on the `tiny` synthetic data)
CONTRACT: dict[str, tuple[dict, float]] = {
    "popular": ({}, 0.0),
    "itemknn": ({}, 0.30),
    "zero-shot": ({"encoder": "minilm-onnx"}, 0.15),
    "semantic-ids": ({"levels": 2, "codebook_size": 8, "epochs": 10, "eval_users": 100, "threads": 1,
                      "invalid_sample": 20},
                     0.25),
    # a 2-layer random Llama (the real LM is too slow for the contract on a CPU); its learning is shown
    # by tests/test_titlegen.py's slow real-model test, so the floor here is 0
    "titlegen": ({"model_name": "tiny-random", "finetune": "full", "steps": 20, "max_history": 3,
                  "invalid_sample": 5, "threads": 1}, 0.0),
    # the first 2 layers of the 2-layer random Llama; the real LM's learning: tests/test_itemtokens.py
    "item-tokens": ({"model_name": "tiny-random", "layers": 2, "epochs": 15, "max_history": 20,
                     "learning_rate": 3e-3, "item_learning_rate": 1e-2, "threads": 1, "latency_sample": 3}, 0.30),
    "sasrec": (dict(embedding_size=32, max_history=20, epochs=12, batch_size=64, learning_rate=5e-3,
                    dropout=0.1, threads=1), 0.45),
    "textseq": (dict(encoder="hash", embedding_size=32, max_history=20, epochs=12, batch_size=64,
                     learning_rate=5e-3, dropout=0.1, threads=1), 0.45),
    "tuned-encoder": (dict(epochs=1, steps_per_epoch=2, batch_size=8, eval_users=50, threads=1), 0.05),
    "ensemble": (dict(members=["sasrec", "itemknn"], fusion="zscore",
                      configs=[dict(embedding_size=32, max_history=20, epochs=12, batch_size=64,
                                    learning_rate=5e-3, dropout=0.1, threads=1), {}]), 0.45),
}
SLOW = {"titlegen", "tuned-encoder"}  # contract runs that take minutes on a CPU: marked slow, still run in CI


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                        for n in sorted(CONTRACT)])
def fitted(request, tiny, tiny_split):
    name = request.param
    overrides, _ = CONTRACT[name]
    return name, models.get(name, overrides).fit(tiny, tiny_split, progress=False)


def test_every_registered_model_is_in_the_contract():
    assert set(models.names()) <= set(CONTRACT), "add new models to CONTRACT"


def test_score_shape_and_dtype(fitted, tiny):
    _, m = fitted
    hist = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([5])]
    s = np.asarray(m.score_histories(hist))
    assert s.shape == (3, tiny.n_items)
    assert s.dtype == np.float32
    assert np.isfinite(s).all()


def test_recommend_excludes_seen_and_returns_external_ids(fitted, tiny):
    _, m = fitted
    users = list(tiny.users.ids()[:5])
    recs = m.recommend(users=users, k=10)
    assert recs.item_ids.shape == (5, 10) and recs.scores.shape == (5, 10)
    for row, u in enumerate(users):
        seen = set(tiny.catalog.ids.ids(m.history_of(u)))
        got = [x for x in recs.item_ids[row] if x is not None]
        assert not seen & set(got)
        assert all(isinstance(x, str) and x in tiny.catalog.ids for x in got)
        assert len(set(got)) == len(got)
        assert np.all(np.diff(recs.scores[row]) <= 1e-6), "scores best first"


def test_diversity_reranks_the_models_own_list(fitted, tiny):
    """diversity=0 is the plain list; diversity > 0 lists items of the model's wider list, seen ones still
    excluded, in vectors of one row per item."""
    _, m = fitted
    users = list(tiny.users.ids()[:3])
    plain = m.recommend(users=users, k=5)
    assert (m.recommend(users=users, k=5, diversity=0.0).item_ids == plain.item_ids).all()
    vecs, what = m.diversity_vectors()
    assert vecs.shape[0] == len(m.catalog) and what
    mixed = m.recommend(users=users, k=5, diversity=0.5)
    wide = m.recommend(users=users, k=50)
    for row, u in enumerate(users):
        got = [x for x in mixed.item_ids[row] if x is not None]
        assert len(got) == 5 and set(got) <= set(wide.item_ids[row])
        assert got[0] == plain.item_ids[row][0]  # MMR's first pick is the most relevant item
        assert not set(tiny.catalog.ids.ids(m.history_of(u))) & set(got)


def test_batch_equals_one_by_one(fitted, tiny):
    _, m = fitted
    users = list(tiny.users.ids()[:4])
    batch = m.recommend(users=users, k=5)
    for row, u in enumerate(users):
        one = m.recommend(users=[u], k=5)
        np.testing.assert_allclose(batch.scores[row], one.scores[0], rtol=1e-4, atol=1e-5)


def test_raw_history_matches_known_user(fitted, tiny):
    _, m = fitted
    u = tiny.users.id(3)
    hist = list(tiny.catalog.ids.ids(m.history_of(u)))
    a = m.recommend(users=[u], k=5)
    b = m.recommend(histories=[hist], k=5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)


def test_exclude_and_candidates(fitted, tiny):
    _, m = fitted
    u = tiny.users.id(0)
    first = m.recommend(users=[u], k=3).item_ids[0]
    again = m.recommend(users=[u], k=3, exclude=[first[0]]).item_ids[0]
    assert first[0] not in set(again)
    mask = np.zeros(tiny.n_items, dtype=bool)
    mask[:10] = True
    only = m.recommend(users=[u], k=3, candidates=mask).item_ids[0]
    assert all(tiny.catalog.ids.index(x) < 10 for x in only if x is not None)


def test_explain_gives_one_entry_per_item(fitted, tiny):
    _, m = fitted
    recs = m.recommend(users=[tiny.users.id(0)], k=4, explain=True)
    assert len(recs.explanations[0]) == 4
    assert all(isinstance(e, dict) for e in recs.explanations[0])


def test_explanations_name_each_history_item_once(fitted, tiny):
    _, m = fitted
    h = list(tiny.catalog.ids.ids(tiny.histories()[0][:4]))
    recs = m.recommend(histories=[h + h], k=3, explain=True)  # every item seen twice
    for e in recs.explanations[0]:
        because = [b["item_id"] for b in e.get("because", [])]
        assert len(because) == len(set(because)), e


def test_unknown_user_and_item_name_the_problem(fitted):
    _, m = fitted
    with pytest.raises(UnknownNameError, match="unknown user 'nobody'"):
        m.recommend(users=["nobody"])
    with pytest.raises(UnknownNameError, match="unknown item 'no-such-item'"):
        m.recommend(histories=[["no-such-item"]])
    with pytest.raises(LLMRecError):
        m.recommend(users=["u0"], k=0)


def test_save_load_round_trip(fitted, tiny, tmp_path):
    _, m = fitted
    m.save(tmp_path / "ck")
    back = models.load_model(tmp_path / "ck")
    users = list(tiny.users.ids()[:3])
    a, b = m.recommend(users=users, k=5), back.recommend(users=users, k=5)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)


def test_learning_floor(fitted, tiny, tiny_split):
    name, m = fitted
    floor = CONTRACT[name][1]
    res = evaluate.evaluate(m, tiny_split, tiny.n_users, tiny.n_items, ks=(10,), progress=False)
    assert res.metrics["HR@10"] >= floor, (name, res.metrics)


def test_checkerboard_withheld_item_comes_back_first(checkerboard):
    """implicit's checkerboard: itemknn must put each user's withheld liked item first."""
    from llmrec import split
    sp = split.leave_one_out(checkerboard)
    m = models.get("itemknn").fit(checkerboard, sp, progress=False)
    res = evaluate.evaluate(m, sp, checkerboard.n_users, checkerboard.n_items, ks=(1, 10),
                            progress=False)
    # every other liked item is in the history, so the withheld one is the only unseen liked item
    assert res.metrics["HR@1"] == 1.0


# what each model declares it can do beyond the base protocol (callers check with isinstance, never hasattr)
CAPABILITIES = {"zero-shot": {"text", "adds-items", "fits-catalog"}, "textseq": {"adds-items", "resume"},
                "sasrec": {"resume"}, "tuned-encoder": {"resume"}, "ensemble": {"resume"},
                "semantic-ids": {"resume"}, "titlegen": {"resume"},
                "item-tokens": {"text", "adds-items", "resume"}}


def test_capabilities_are_declared(fitted):
    name, m = fitted
    declared = {cap for cap, has in (("text", isinstance(m, models.TextQueries)),
                                     ("adds-items", isinstance(m, models.AddsItems)),
                                     ("fits-catalog", isinstance(m, models.FitsCatalog)),
                                     ("resume", m.supports_resume)) if has}
    assert declared == CAPABILITIES.get(name, set())
    assert isinstance(m.card_extra(), dict) and isinstance(m.benchmark_extra(), dict)


def test_checkpoint_dir_is_given_to_fit(fitted, tiny, tiny_split, tmp_path):
    """fit(checkpoint_dir=...) is the one way to say where training state goes; a later fit without it
    keeps none (no attribute set before fit)."""
    name, m = fitted
    if not m.supports_resume or name in SLOW:
        pytest.skip("keeps no training state")
    overrides, _ = CONTRACT[name]
    fresh = models.get(name, {**overrides, "epochs": 1} if "epochs" in overrides else overrides)
    fresh.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "state")
    assert fresh.checkpoint_dir == tmp_path / "state" and any((tmp_path / "state").rglob("train_state.pt"))
