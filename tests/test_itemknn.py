"""itemknn's blocked sparse top-N similarities against the exact dense computation."""

import numpy as np
import pytest
import scipy.sparse as sp

from llmrec import models
from llmrec.errors import ConfigError
from llmrec.models.itemknn import cosine_top_n


def dense_reference(x: np.ndarray, k: int, shrinkage: float) -> np.ndarray:
    """Exact item-item cosine on a dense binary matrix, diagonal 0, each row's k largest kept (ties to the
    lower column: a stable sort by descending value)."""
    x = (x > 0).astype(np.float32)
    co = x.T @ x
    norms = np.sqrt(np.diag(co)).astype(np.float32)
    sim = co / np.maximum(norms[:, None] * norms[None, :] + np.float32(shrinkage), np.float32(1e-12))
    np.fill_diagonal(sim, 0.0)
    if k > 0:
        for r in range(len(sim)):
            order = np.argsort(-sim[r], kind="stable")
            sim[r, order[k:]] = 0.0
    return sim


def random_binary(n_users: int, n_items: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[:, -1] = 0.0  # an item nobody touched
    return x


@pytest.mark.parametrize("k", [0, 1, 3, 10])
@pytest.mark.parametrize("shrinkage", [0.0, 2.5])
@pytest.mark.parametrize("block", [1, 7, 1 << 30])  # one item per block, a few items, everything at once
def test_blocked_top_n_equals_dense(k, shrinkage, block):
    x = random_binary(40, 30, 0.2, seed=k)
    got = cosine_top_n(sp.csr_matrix(x), k, shrinkage, block_products=block)
    assert got.dtype == np.float32 and got.shape == (30, 30)
    want = dense_reference(x, k, shrinkage)
    np.testing.assert_array_equal(got.toarray() != 0, want != 0)
    np.testing.assert_allclose(got.toarray(), want, rtol=1e-6)
    if k:
        assert np.diff(got.indptr).max() <= k


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("shrinkage", [0.0, 0.5])
def test_blocked_top_n_equals_dense_on_long_rows(k, shrinkage):
    """Rows of 8k+ co-occurring items are first cut by a lower bound on their k-th value: still exact."""
    x = random_binary(300, 200, 0.05, seed=k)
    x[:3] = 1.0  # three users who touched everything: every row long, many ties
    for block in (50, 1 << 30):
        got = cosine_top_n(sp.csr_matrix(x), k, shrinkage, block_products=block)
        want = dense_reference(x, k, shrinkage)
        np.testing.assert_array_equal(got.toarray() != 0, want != 0)
        np.testing.assert_allclose(got.toarray(), want, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("shrinkage", [0.0, 2.5])
def test_items_with_one_user_share_that_users_row(k, shrinkage):
    """Items that one user alone has take that user's top k + 1 less themselves: exact, ties included."""
    x = random_binary(30, 120, 0.03, seed=k)
    x[0, :60] = 1.0  # a heavy user: many of these items are hers alone, all tied
    x[1, 100:104] = 1.0
    x[1, 5] = 1.0
    x[2, 110] = 1.0  # a user whose only item is hers alone
    assert (x.sum(axis=0) == 1).sum() > 20
    for block in (1, 1 << 30):
        got = cosine_top_n(sp.csr_matrix(x), k, shrinkage, block_products=block)
        want = dense_reference(x, k, shrinkage)
        np.testing.assert_array_equal(got.toarray() != 0, want != 0)
        np.testing.assert_allclose(got.toarray(), want, rtol=1e-6)


def test_ties_go_to_the_lower_item_index():
    # user 0 touches every item: all pairs co-occur once; items 1..5 also share user 1 with item 0,
    # so row 0's similarities to items 1..5 tie (and to 6..9 tie lower)
    x = np.zeros((3, 10), np.float32)
    x[0] = 1
    x[1, :6] = 1
    x[2, 6:] = 1
    got = cosine_top_n(sp.csr_matrix(x), 3, 0.0, block_products=1).toarray()
    assert np.flatnonzero(got[0]).tolist() == [1, 2, 3]
    assert np.flatnonzero(got[9]).tolist() == [6, 7, 8]
    np.testing.assert_array_equal(got != 0, dense_reference(x, 3, 0.0) != 0)


def test_repeated_interactions_count_once():
    rows, cols = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 0, 1])
    once = cosine_top_n(sp.csr_matrix((np.ones(5, np.float32), (rows, cols)), shape=(2, 2)), 0)
    np.testing.assert_allclose(once.toarray(), [[0, 1], [1, 0]], rtol=1e-6)


def test_model_scores_with_the_blocked_similarities(tiny, tiny_split):
    """The fitted model's similarities are the dense reference on its training matrix, and scores are
    sums of a history's rows."""
    m = models.get("itemknn", neighbors=5, shrinkage=1.0).fit(tiny, tiny_split, progress=False)
    x = np.zeros((tiny.n_users, tiny.n_items), np.float32)
    x[tiny_split.train.user, tiny_split.train.item] = 1
    want = dense_reference(x, 5, 1.0)
    np.testing.assert_allclose(m.sim.toarray(), want, rtol=1e-6)
    hist = [np.array([0, 3, 7]), np.array([2])]
    np.testing.assert_allclose(m.score_histories(hist), np.stack([want[h].sum(0) for h in hist]), rtol=1e-5)


def test_negative_neighbors_is_refused():
    with pytest.raises(ConfigError, match="neighbors"):
        models.get("itemknn", neighbors=-1)


def test_large_catalogue_recommend_equals_the_dense_ranking(monkeypatch):
    """Above DENSE_MAX_ITEMS, recommend ranks only the items the neighbour lists reach (the rest fill in at
    score 0, lowest index first): the same answer as ranking a dense row of every item."""
    import pandas as pd

    from llmrec import synthetic
    from llmrec.models import itemknn
    ds = synthetic.make(n_users=80, n_items=300, seed=3)
    m = models.get("itemknn", neighbors=5).fit(ds, progress=False)
    m.catalog, _ = m.catalog.upsert(pd.DataFrame({"item_id": ["late"], "title": ["added after the fit"]}))
    monkeypatch.setattr(itemknn, "DENSE_MAX_ITEMS", 10)
    hists = [ds.catalog.ids.ids(h) for h in ds.histories()[:20]] + [[], [ds.catalog.ids.id(0)]]
    everything = np.ones(len(m.catalog), bool)  # a candidate mask takes the dense path
    for k in (5, 50, 301):
        fast = m.recommend(histories=hists, k=k, exclude=[ds.catalog.ids.id(1)])
        dense = m.recommend(histories=hists, k=k, exclude=[ds.catalog.ids.id(1)], candidates=everything)
        assert (fast.item_ids == dense.item_ids).all(), k
        np.testing.assert_allclose(fast.scores, dense.scores, rtol=1e-6)
    assert m._search([np.array([0])], 3, [np.zeros(0, np.int64)]) is not None


@pytest.mark.parametrize("shrinkage", [0.0, 1.5])
def test_threads_split_the_rows_without_changing_them(shrinkage):
    x = sp.csr_matrix(random_binary(300, 200, 0.05, seed=3))
    one = cosine_top_n(x, 7, shrinkage, threads=1)
    for threads in (2, 3, 8):
        many = cosine_top_n(x, 7, shrinkage, threads=threads)
        np.testing.assert_array_equal(many.indptr, one.indptr)
        np.testing.assert_array_equal(many.indices, one.indices)
        np.testing.assert_array_equal(many.data, one.data)
    np.testing.assert_allclose(one.toarray(), dense_reference(x.toarray(), 7, shrinkage), rtol=1e-6)


def test_negative_threads_is_refused():
    with pytest.raises(ConfigError, match="threads"):
        models.get("itemknn", threads=-1)
