import numpy as np
import pandas as pd
import pytest

from llmrec import split
from llmrec.data import build_dataset
from llmrec.errors import DataError


def _ds(rows):
    return build_dataset("t", pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


def test_leave_one_out_ties_keep_file_order():
    # user a: times 1, 5, 5, 5 -> order by time then file order: i1, i2, i3, i4
    ds = _ds([("a", "i1", 1), ("a", "i2", 5), ("b", "i1", 2), ("a", "i3", 5), ("a", "i4", 5),
              ("b", "i2", 1), ("b", "i3", 3), ("c", "i1", 1), ("c", "i2", 2)])
    sp = split.leave_one_out(ds)
    ids = ds.catalog.ids
    tests = dict(zip(ds.users.ids(sp.test_users), ids.ids(sp.test_items)))
    valids = dict(zip(ds.users.ids(sp.valid_users), ids.ids(sp.valid_items)))
    assert tests == {"a": "i4", "b": "i3"}
    assert valids == {"a": "i3", "b": "i1"}
    # c has 2 interactions: stays in train only
    assert "c" not in tests
    train_pairs = set(zip(ds.users.ids(sp.train.user), ids.ids(sp.train.item)))
    assert train_pairs == {("a", "i1"), ("a", "i2"), ("b", "i2"), ("c", "i1"), ("c", "i2")}
    ctx = set(zip(ds.users.ids(sp.test_context.user), ids.ids(sp.test_context.item)))
    assert ctx == train_pairs | {("a", "i3"), ("b", "i1")}


def test_split_is_a_partition(tiny):
    sp = split.leave_one_out(tiny)
    assert len(sp.train) + len(sp.valid_users) + len(sp.test_users) == len(tiny.interactions)
    assert len(sp.valid_users) == len(sp.test_users)


def test_too_small_to_split():
    with pytest.raises(DataError, match="too small to split"):
        split.leave_one_out(_ds([("a", "i1", 1), ("a", "i2", 2)]))


def test_temporal_split_targets_come_after_train(tiny):
    sp = split.temporal(tiny)
    assert len(sp.test_users) > 0
    t_train_max = sp.train.timestamp.max()
    assert np.all(sp.test_context.timestamp >= 0) and t_train_max < sp.test_context.timestamp.max()


def test_temporal_needs_timestamps():
    ds = build_dataset("t", pd.DataFrame({"user_id": ["a"] * 3, "item_id": ["1", "2", "3"]}))
    with pytest.raises(DataError, match="no timestamps"):
        split.temporal(ds)


def test_untimed_data_is_split_in_a_seeded_random_order_not_file_order():
    # 200 users, each with items written in sorted id order and no timestamps (Book-Crossing's ISBN order):
    # by file order every test target would be the user's largest id
    rows = [(f"u{u}", f"i{j:03d}") for u in range(200) for j in range(u % 7, u % 7 + 6)]
    ds = build_dataset("t", pd.DataFrame(rows, columns=["user_id", "item_id"]))
    sp = split.leave_one_out(ds)
    assert "no timestamps" in sp.protocol and "seed 0" in sp.protocol
    hist = sp.test_context.histories(ds.n_users)
    largest = [sp.test_items[j] > hist[u].max() for j, u in enumerate(sp.test_users)]
    assert 0.05 < np.mean(largest) < 0.4  # about 1 in 6 by chance, never all
    again = split.leave_one_out(ds)
    assert np.array_equal(sp.test_items, again.test_items) and np.array_equal(sp.valid_items, again.valid_items)
    other = split.leave_one_out(ds, seed=1)
    assert not np.array_equal(sp.test_items, other.test_items)
    # the train histories follow the same random order the targets came from
    assert len(sp.train) + 2 * len(sp.test_users) == len(ds.interactions)
