"""The synthetic generator: its Markov structure, its names, and sizes set by events."""

import numpy as np
import pytest

from llmrec import datasets, synthetic
from llmrec.errors import UnknownNameError


def _transitions(ds):
    inter = ds.interactions
    same = inter.user[1:] == inter.user[:-1]
    return inter.item[:-1][same], inter.item[1:][same]


def test_walk_follows_the_chain_the_topics_and_the_popularity():
    ds = synthetic.make(n_users=3000, n_items=500, seed=2, p_next=0.6, p_topic=0.3)
    topic, succ = ds.meta["topic_of"], ds.meta["successor"]
    a, b = _transitions(ds)
    follows = succ[a] == b
    assert 0.58 < follows.mean() < 0.64  # p_next, plus the odd random draw that hits the successor
    # every chain is a cycle through all of its topic's items
    for t in np.unique(topic):
        members = np.flatnonzero(topic == t)
        seen, i = set(), members[0]
        for _ in range(len(members)):
            seen.add(int(i))
            i = succ[i]
            assert topic[i] == t
        assert seen == set(members.tolist())
    # a user's non-chain steps land mostly in two topics (the favourites), the rest are popular items
    inter = ds.interactions
    per_user = np.zeros((ds.n_users, topic.max() + 1), dtype=np.int64)
    np.add.at(per_user, inter.user, np.eye(topic.max() + 1, dtype=np.int64)[topic[inter.item]])
    top2 = np.sort(per_user, axis=1)[:, -2:].sum(1) / per_user.sum(1)
    assert np.median(top2) > 0.85
    # users are in order, each history in time order, at least 3 long
    assert np.all(np.diff(inter.user) >= 0) and np.bincount(inter.user).min() >= 3
    ts = inter.timestamp
    assert np.all((np.diff(ts) > 0) | (np.diff(inter.user) > 0))


def test_names_keep_their_meaning_and_take_an_event_count():
    ds = datasets.load("synthetic-40-25-3")
    assert ds.name == "synthetic-40-25-3" and ds.n_users == 40 and ds.n_items == 25
    big = datasets.load("synthetic-200-300-1-6000")
    assert big.name == "synthetic-200-300-1-6000" and big.n_users == 200 and big.n_items == 300
    assert abs(len(big.interactions) - 6000) < 300
    np.testing.assert_array_equal(big.interactions.item,
                                  synthetic.make(200, 300, seed=1, n_events=6000).interactions.item)
    for bad in ("synthetic-1", "synthetic-1-2-3-4-5", "synthetic-a-b", "synthetics"):
        with pytest.raises(UnknownNameError, match="synthetic-USERS-ITEMS-SEED-EVENTS"):
            datasets.load(bad)


def test_large_catalogue_with_few_users_is_cheap():
    """A catalogue far larger than the histories is generated whole, with its text (sizes are checked,
    not time; benchmarks/data_scale.py times the large cases)."""
    ds = synthetic.make(n_users=50, n_items=200_000, seed=0)
    assert ds.n_items == 200_000 and len(ds.catalog.frame) == 200_000
    assert ds.catalog.frame["title"].iloc[123].endswith(" 123")
