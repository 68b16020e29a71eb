"""Optional cleaning steps. Each returns the cleaned data set and a report of what it removed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .data import Dataset
from .errors import DataError


@dataclass(frozen=True)
class Report:
    step: str
    removed: int
    remaining: int
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.step}: removed {self.removed:,} interactions, {self.remaining:,} remain {self.detail}"


def drop_duplicates(ds: Dataset, keep: str = "last") -> tuple[Dataset, Report]:
    """Keep one interaction per (user, item): the ``last`` (latest in time) or ``first``."""
    inter = ds.interactions
    order = inter.time_order()
    if keep == "last":
        order = order[::-1]
    pairs = inter.user[order] * np.int64(ds.n_items) + inter.item[order]
    _, first = np.unique(pairs, return_index=True)
    kept = np.sort(order[first])  # back to file order
    out = ds.with_interactions(inter.subset(kept))
    return out, Report("drop_duplicates", len(inter) - len(kept), len(kept), f"(keep={keep})")


def min_rating(ds: Dataset, threshold: float) -> tuple[Dataset, Report]:
    """Drop interactions whose value is below ``threshold`` (interactions without a value are kept)."""
    inter = ds.interactions
    keep = ~(inter.value < threshold)
    out = ds.with_interactions(inter.subset(keep))
    return out, Report("min_rating", int((~keep).sum()), int(keep.sum()), f"(>= {threshold})")


def k_core(ds: Dataset, k: int) -> tuple[Dataset, Report]:
    """Repeatedly drop users and items with fewer than ``k`` interactions until none remain."""
    inter = ds.interactions
    keep = np.ones(len(inter), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        u_counts = np.bincount(inter.user[keep], minlength=ds.n_users)
        i_counts = np.bincount(inter.item[keep], minlength=ds.n_items)
        bad = keep & ((u_counts[inter.user] < k) | (i_counts[inter.item] < k))
        if not bad.any():
            break
        keep &= ~bad
    out = ds.with_interactions(inter.subset(keep))
    return out, Report("k_core", int((~keep).sum()), int(keep.sum()), f"(k={k}, {rounds} rounds)")


DUPLICATES = ("keep", "drop", "error")


def find_duplicates(ds: Dataset) -> np.ndarray:
    """Indices (file order) of interactions whose (user, item) pair appeared earlier in the log."""
    inter = ds.interactions
    pairs = inter.user * np.int64(ds.n_items) + inter.item
    _, first = np.unique(pairs, return_index=True)
    dup = np.ones(len(pairs), dtype=bool)
    dup[first] = False
    return np.flatnonzero(dup)


def _with_active(rep: Report, ds: Dataset) -> Report:
    inter = ds.interactions
    return Report(rep.step, rep.removed, rep.remaining,
                  f"{rep.detail}; {len(np.unique(inter.user)):,} users and {len(np.unique(inter.item)):,} "
                  "items with interactions remain")


def apply(ds: Dataset, *, duplicates: str = "keep", rating_floor: float | None = None,
          k: int | None = None, path: str | None = None,
          locate: Callable[[int], int] | None = None) -> tuple[Dataset, list[Report]]:
    """The cleaning steps the command line offers, in this order: duplicates (``keep``, ``drop`` all but
    the latest of each user-item pair, or ``error`` with their count), ``rating_floor`` (min_rating), then the
    ``k``-core. ``locate(row)`` may give the file line of an interaction for the error message."""
    if duplicates not in DUPLICATES:
        raise DataError(f"duplicates must be one of {', '.join(DUPLICATES)}, got {duplicates!r}")
    reports = []
    if duplicates == "error":
        dup = find_duplicates(ds)
        if len(dup):
            row = int(dup[0])
            u, i = ds.users.id(ds.interactions.user[row]), ds.catalog.ids.id(ds.interactions.item[row])
            raise DataError(f"{len(dup):,} duplicate interactions (a user-item pair seen before; the first "
                            f"is user {u!r}, item {i!r}); pass --duplicates drop to keep the latest of "
                            "each pair, or --duplicates keep", path=path, line=locate(row) if locate else None)
    elif duplicates == "drop":
        ds, rep = drop_duplicates(ds)
        reports.append(_with_active(rep, ds))
    if rating_floor is not None:
        if np.isnan(ds.interactions.value).all():
            raise DataError(f"min rating {rating_floor:g}: the data has no rating or value column")
        ds, rep = min_rating(ds, rating_floor)
        reports.append(_with_active(rep, ds))
    if k is not None:
        if k < 1:
            raise DataError(f"k-core needs k >= 1, got {k}")
        ds, rep = k_core(ds, k)
        reports.append(_with_active(rep, ds))
    return ds, reports
