"""Semantic ids: residual k-means codes are distinct and fixed-length (collisions get an extra level),
history windows keep the most recent items, decoding stays in the catalogue, bad input is named."""

import numpy as np
import pytest

from llmrec import models
from llmrec.data import Catalog
from llmrec.errors import DataError
from llmrec.models.semantic_ids import OUTSIDE, residual_codes

pytest.importorskip("torch")


def test_codes_are_distinct_and_collisions_are_numbered():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    x[10] = x[11] = x[12] = x[3]  # identical embeddings must still get distinct codes
    codes = residual_codes(x, levels=2, k=4, iters=10, seed=0)
    assert codes.shape == (50, 3)
    assert len({tuple(c) for c in codes}) == 50
    same = codes[[3, 10, 11, 12]]
    assert (same[:, :2] == same[0, :2]).all() and sorted(same[:, 2]) == sorted(set(same[:, 2]))
    np.testing.assert_array_equal(codes, residual_codes(x, levels=2, k=4, iters=10, seed=0))


@pytest.fixture(scope="module")
def quick(tiny, tiny_split):
    cfg = {"encoder": "random", "levels": 2, "codebook_size": 4, "epochs": 1, "validate": False,
           "max_history": 5, "threads": 1, "top_k": 10, "beam_size": 10, "invalid_sample": 20}
    return models.get("semantic-ids", cfg).fit(tiny, tiny_split, progress=False)


def test_decoding_stays_in_the_catalogue_and_skips_the_history(quick, tiny):
    hist = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.arange(40)]
    s = quick.score_histories(hist)
    for row, h in zip(s, hist, strict=True):
        got = np.flatnonzero(row > OUTSIDE)
        assert len(got) == 10 and not set(h.tolist()) & set(got.tolist())
        assert row[got].min() > OUTSIDE  # beam items strictly above everything else
    extra = quick.benchmark_extra()
    assert extra["invalid_rate"] == 0.0 and 0 <= extra["invalid_rate_unconstrained"] <= 1


def test_long_history_keeps_the_most_recent_items(quick):
    np.testing.assert_array_equal(quick._recent(np.arange(30)), np.arange(25, 30))
    state = quick._states([np.arange(30)])
    np.testing.assert_allclose(state, quick._states([np.arange(25, 30)]), atol=1e-5)
    # batching (right padding to the longest history) leaves a short history's state unchanged
    np.testing.assert_allclose(quick._states([np.arange(3), np.arange(30)])[0], quick._states([np.arange(3)])[0],
                               atol=1e-5)
    e = quick.explain_items(np.arange(30), np.array([40]))[0]
    assert e["history_items_in_prompt"] == 5 and "score" in e and e["prompt"].startswith("[BOS]")


def test_exhaustive_decoding_scores_every_item_by_its_code_log_probability(quick):
    """Exhaustive scores are code log-probabilities (at most 1 in all: the rest is on codes of no item) and
    equal the beam's scores for the beam's items."""
    from dataclasses import replace
    hist = [np.array([0, 1, 2]), np.arange(40)]
    beam = quick.score_histories(hist)
    quick.config = replace(quick.config, decoding="exhaustive")
    try:
        full = quick.score_histories(hist)
    finally:
        quick.config = replace(quick.config, decoding="beam")
    total = np.exp(full.astype(np.float64)).sum(1)
    assert ((total > 0.1) & (total <= 1 + 1e-4)).all()
    for b, f in zip(beam, full, strict=True):
        got = np.flatnonzero(b > OUTSIDE)
        np.testing.assert_allclose(b[got], f[got], atol=1e-4)


def test_empty_catalogue_is_a_clear_error(tiny, tiny_split):
    from dataclasses import replace
    empty = replace(tiny, catalog=Catalog.from_ids([]))
    with pytest.raises(DataError, match="empty"):
        models.get("semantic-ids", {"encoder": "random"})._fit(empty, None, tiny_split, False)


def test_training_windows_keep_every_transition(quick):
    """Windows of max_history + 1 items share their edge item, so every (item, next item) pair of a long
    history is inside one window."""
    h = np.arange(23)
    chunks = quick._chunks([h])
    assert all(len(c) <= 6 for c in chunks)
    pairs = {(int(c[j]), int(c[j + 1])) for c in chunks for j in range(len(c) - 1)}
    assert pairs == {(i, i + 1) for i in range(22)}


def test_kmeans_is_scipys(quick):
    from scipy.cluster.vq import kmeans2

    from llmrec.models.semantic_ids import kmeans
    x = np.random.default_rng(1).normal(size=(60, 5))
    assign, c = kmeans(x, 4, 10, np.random.default_rng(3))
    want_c, want = kmeans2(x, 4, iter=10, minit="++", seed=np.random.default_rng(3))
    np.testing.assert_array_equal(assign, want)
    np.testing.assert_allclose(c, want_c)
    same = np.repeat(x[:2], 10, axis=0)  # fewer distinct rows than clusters
    assert len(np.unique(kmeans(same, 4, 10, np.random.default_rng(0))[0])) == 2


def test_training_runs_on_the_shared_loop_validates_by_ndcg_and_resumes(tiny, tiny_split, tmp_path):
    cfg = {"encoder": "random", "levels": 2, "codebook_size": 4, "epochs": 1, "eval_users": 40, "max_history": 5,
           "threads": 1, "top_k": 10, "beam_size": 10, "invalid_sample": 5, "device": "cpu"}
    first = models.get("semantic-ids", cfg)
    first.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "run")
    row = first.result.history[0]
    assert row["epoch"] == 1 and 0.0 <= row["valid_ndcg10"] <= 1.0
    # the epoch's score is the shared validator's NDCG@10 over the same fixed sample of users
    from llmrec import training
    again = training.validator(first, tiny, tiny_split, 40, 0)()
    assert abs(again - row["valid_ndcg10"]) < 1e-4
    first.save(tmp_path / "run")  # the checkpoint replaces the training folder and keeps its resume state
    more = models.get("semantic-ids", {**cfg, "epochs": 2})
    more.fit(tiny, tiny_split, progress=False, checkpoint_dir=tmp_path / "run")
    assert more.result.resumed_from == 1 and [r["epoch"] for r in more.result.history] == [1, 2]
    assert more.card_extra()["training"]["epochs_run"] == 2


def test_checkpoint_of_the_earlier_block_layout_is_converted(quick, tmp_path):
    """Weights saved when the decoder had its own block (proj, mlp.0, mlp.2) load into SASRec's block
    (out, ff.0, ff.3) and score the same."""
    import json

    from safetensors.numpy import load_file, save_file
    quick.save(tmp_path / "ck")
    state = load_file(str(tmp_path / "ck" / "state.safetensors"))
    old = {}
    for k, v in state.items():
        k = k.replace(".out.", ".proj.").replace(".ff.0.", ".mlp.0.").replace(".ff.3.", ".mlp.2.") \
            if k.startswith("net.blocks.") else k
        old[k] = v
    assert any(".mlp.2." in k for k in old)
    save_file(old, str(tmp_path / "ck" / "state.safetensors"))
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["config"]["valid_users"] = 0
    del meta["config"]["validate"], meta["config"]["eval_users"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    back = models.load_model(tmp_path / "ck")
    hist = [np.array([0, 1, 2]), np.arange(30)]
    np.testing.assert_allclose(back.score_histories(hist), quick.score_histories(hist), atol=1e-5)
