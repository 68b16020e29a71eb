"""Optional cleaning steps. Each returns the cleaned data set and a report of what it removed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Dataset


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
