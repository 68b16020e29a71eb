"""Similarity and vector indexes: the worked example, each metric by hand, exact search, and the approximate
indexes' recall against the exact one."""

import numpy as np
import pytest

from llmrec import index
from llmrec.errors import LLMRecError


def test_founding_document_worked_example():
    # the design document prints 0.89: an arithmetic slip; 1.8875 / (1.3454 * 1.4089) = 0.99586
    assert index.cosine((0.6, 0.8, 0.9), (0.7, 0.75, 0.85)) == pytest.approx(0.99586, abs=5e-6)
    s = index.similarity(np.array([[0.6, 0.8, 0.9]]), np.array([[0.7, 0.75, 0.85]]), "cosine")
    assert s.dtype == np.float32 and s[0, 0] == pytest.approx(0.99586, abs=5e-6)


def test_metrics_by_hand():
    q = np.array([[1.0, 0.0]])
    x = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(index.similarity(q, x, "dot"), [[2.0, 0.0, 1.0]])
    np.testing.assert_allclose(index.similarity(q, x, "cosine"), [[1.0, 0.0, 2 ** -0.5]], rtol=1e-6)
    np.testing.assert_allclose(index.similarity(q, x, "euclidean"), [[-1.0, -(2 ** 0.5), -1.0]], rtol=1e-6)
    with pytest.raises(LLMRecError, match="unknown metric 'manhattan'"):
        index.similarity(q, x, "manhattan")


@pytest.mark.parametrize("metric", index.METRICS)
def test_exact_search_orders_excludes_and_pads(metric):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    ix = index.make("exact", metric).add(x)
    ids, scores = ix.search(q, 5)
    assert ids.shape == scores.shape == (3, 5) and ids.dtype == np.int64 and scores.dtype == np.float32
    full = index.similarity(q, x, metric)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :5])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    ex = [ids[0, :2], np.array([], np.int64), np.arange(48)]
    ids2, scores2 = ix.search(q, 5, exclude=ex)
    assert not set(ids[0, :2]) & set(ids2[0])
    np.testing.assert_array_equal(ids2[1], ids[1])
    assert set(ids2[2, :2]) == {48, 49} and (ids2[2, 2:] == -1).all() and np.isneginf(scores2[2, 2:]).all()


def test_search_input_errors():
    ix = index.make("exact").add(np.eye(3))
    with pytest.raises(LLMRecError, match="k must be at least 1"):
        ix.search(np.eye(3), 0)
    with pytest.raises(LLMRecError, match="exclude has 1 rows for 3 queries"):
        ix.search(np.eye(3), 1, exclude=[np.array([0])])
    with pytest.raises(LLMRecError, match="unknown index kind"):
        index.make("annoy")


@pytest.mark.parametrize("kind,params", [
    ("ivf", {"nlist": 256, "nprobe": 48}),
    pytest.param("hnsw", {"hnsw_m": 16, "ef_construction": 40, "ef_search": 128}, marks=pytest.mark.slow)])
def test_approximate_recall_at_10_on_100k_random_vectors(kind, params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100_000, 16)).astype(np.float32)
    q = rng.standard_normal((200, 16)).astype(np.float32)
    exact_ids, _ = index.make("exact").add(x).search(q, 10)
    approx = index.make(kind, **params).add(x)
    ids, scores = approx.search(q, 10)
    assert index.recall_at_k(ids, exact_ids) >= 0.95
    # scores are cosines, like the exact index's
    np.testing.assert_allclose(scores[:, 0], index.similarity(q[:, None][:, 0], x[ids[:, :1].ravel()],
                                                              "cosine").diagonal(), atol=1e-4)
    ex = [exact_ids[r, :3] for r in range(len(q))]
    ids2, _ = approx.search(q, 10, exclude=ex)
    assert all(not set(e) & set(r) for e, r in zip(ex, ids2, strict=True))
