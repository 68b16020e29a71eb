"""Splits. Leave-one-out by time is the protocol every figure in llmrec is quoted with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Dataset, Interactions
from .errors import DataError

PROTOCOL = ("leave-one-out by time (stable: ties keep file order; last = test, second last = validation, "
            "rest = train; users with < 3 interactions stay in train only); full ranking over all items "
            "with at least one interaction; items in the user's history excluded; metrics averaged over "
            "evaluation users")
UNTIMED = ("the data has no timestamps, so each user's interactions are put in a seeded random order (seed {seed}) "
           "instead of file order, which can be sorted by item id and would leak the held-out item; then ")


def loo_order(inter: Interactions, seed: int = 0) -> str:
    """How leave-one-out orders each user's interactions on this log."""
    if inter.has_time:
        return "by timestamp (ties keep file order)"
    return f"no timestamps: a seeded random order per user (seed {seed}), never file order"


def random_order(inter: Interactions, seed: int = 0) -> Interactions:
    """``inter`` with each interaction's timestamp replaced by its rank in one seeded random permutation:
    every user's history then follows a random order, the same for every model and every run."""
    ts = np.random.default_rng(seed).permutation(len(inter)).astype(np.float64)
    return Interactions(inter.user, inter.item, ts, inter.value, inter.event)


@dataclass
class Split:
    """``train`` is an Interactions log; ``valid``/``test`` map eval users to one target item each.

    Validation ranks from each user's ``train`` history; test ranks from ``test_context`` (everything
    before the test target, the validation target included).

    valid_users, valid_items, test_users, test_items: int64 [n_eval]. ``protocol`` describes the split.
    """

    train: Interactions
    test_context: Interactions
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    protocol: str


def leave_one_out(ds: Dataset, seed: int = 0) -> Split:
    """Each user's last interaction by time is the test target, the one before it the validation target.
    Data without timestamps is ordered per user at random (``seed``), never by file order; the
    split's ``protocol`` says which."""
    inter = ds.interactions
    if len(inter) == 0:
        raise DataError(f"data set {ds.name!r} has no interactions to split")
    protocol = PROTOCOL
    if not inter.has_time:
        inter = random_order(inter, seed)
        protocol = UNTIMED.format(seed=seed) + PROTOCOL
    order = inter.time_order()
    users = inter.user[order]
    # position of each interaction within its user's time-ordered history, counted from the end
    counts = np.bincount(users, minlength=ds.n_users)
    ends = np.cumsum(counts)
    from_end = ends[users] - 1 - np.arange(len(order))
    eligible = counts[users] >= 3
    is_test = eligible & (from_end == 0)
    is_valid = eligible & (from_end == 1)
    if not is_test.any():
        raise DataError(f"data set {ds.name!r} is too small to split: no user has 3 or more interactions")
    train_idx = np.sort(order[~(is_test | is_valid)])  # file order
    return Split(train=inter.subset(train_idx), test_context=inter.subset(np.sort(order[~is_test])),
                 valid_users=users[is_valid], valid_items=inter.item[order][is_valid],
                 test_users=users[is_test], test_items=inter.item[order][is_test],
                 protocol=protocol)


def temporal(ds: Dataset, test_fraction: float = 0.1, valid_fraction: float = 0.1) -> Split:
    """Global temporal split: the latest ``test_fraction`` of interactions (by time) form the test period,
    the ``valid_fraction`` before it the validation period. Each user with history in train and an
    interaction in a later period contributes that period's first interaction as its target."""
    inter = ds.interactions
    if not inter.has_time:
        raise DataError(f"data set {ds.name!r} has no timestamps: a temporal split needs them")
    ts = np.nan_to_num(inter.timestamp)
    t_test = np.quantile(ts, 1 - test_fraction)
    t_valid = np.quantile(ts, 1 - test_fraction - valid_fraction)
    train_mask = ts < t_valid
    train_users = np.unique(inter.user[train_mask])
    order = inter.time_order()

    def firsts(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        o = order[(ts[order] >= lo) & (ts[order] < hi)]
        u, first = np.unique(inter.user[o], return_index=True)
        keep = np.isin(u, train_users)
        return u[keep], inter.item[o][first][keep]

    vu, vi = firsts(t_valid, t_test)
    tu, ti = firsts(t_test, np.inf)
    return Split(train=inter.subset(np.flatnonzero(train_mask)),
                 test_context=inter.subset(np.flatnonzero(ts < t_test)), valid_users=vu, valid_items=vi,
                 test_users=tu, test_items=ti,
                 protocol=(f"global temporal split (train before t={t_valid:.0f}, validation before "
                           f"t={t_test:.0f}, test after; first later interaction per user is the target); "
                           "full ranking, history excluded"))
