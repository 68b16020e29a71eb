"""The data model: id vocabularies, the item catalogue, the interaction log and a data set holding both.

External ids (what users of the library see) are strings; internal indices are ``0..n-1`` int64 and
never leave the library. Arrays in, arrays out: an interaction log is parallel numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, UnknownNameError
from .io import detect_format, line_of, read_table

TEXT_FIELDS = ("title", "description", "tags", "genres", "year")


class IdMap:
    """External id (str) <-> internal index (int). Appending keeps existing indices stable."""

    def __init__(self, ids: Iterable[object] = (), kind: str = "id"):
        self.kind = kind
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for x in ids:
            self.add(x)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, ext: object) -> bool:
        return str(ext) in self._index

    def add(self, ext: object) -> int:
        key = str(ext)
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = len(self._ids)
            self._ids.append(key)
        return idx

    def index(self, ext: object) -> int:
        try:
            return self._index[str(ext)]
        except KeyError:
            raise UnknownNameError(self.kind, str(ext),
                                   self._ids if len(self._ids) <= 30 else None) from None

    def indices(self, exts: Iterable[object]) -> np.ndarray:
        return np.fromiter((self.index(x) for x in exts), dtype=np.int64)

    def id(self, idx: int) -> str:
        return self._ids[int(idx)]

    def ids(self, idx: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        arr = np.asarray(self._ids, dtype=object)
        return arr if idx is None else arr[np.asarray(idx, dtype=np.int64)]

    def copy(self) -> IdMap:
        return IdMap(self._ids, kind=self.kind)


@dataclass
class Catalog:
    """Items: ``frame`` row ``i`` is internal item ``i``; column ``item_id`` holds the external id."""

    frame: pd.DataFrame
    ids: IdMap
    _title_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, path: str | None = None) -> Catalog:
        if "item_id" not in frame.columns:
            raise DataError(f"no 'item_id' column; columns are {list(frame.columns)} "
                            "(map one with a column mapping, e.g. item_id=movieId)",
                            path=path, field="item_id")
        frame = frame.copy()
        frame["item_id"] = frame["item_id"].astype(str)
        dup = frame["item_id"].duplicated()
        if dup.any():
            row = int(np.flatnonzero(dup.to_numpy())[0])
            line = line_of(row, detect_format(path)) if path else None
            raise DataError(f"duplicate item id {frame['item_id'].iloc[row]!r}", path=path, line=line,
                            field="item_id")
        frame = frame.reset_index(drop=True)
        return cls(frame=frame, ids=IdMap(frame["item_id"], kind="item"))

    @classmethod
    def from_ids(cls, ids: Iterable[object]) -> Catalog:
        return cls.from_frame(pd.DataFrame({"item_id": [str(i) for i in ids]}))

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def text_fields(self) -> list[str]:
        return [c for c in TEXT_FIELDS if c in self.frame.columns]

    def titles(self, idx: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """Titles of ``idx``, or of every item: always strings, the item id where an item has no title
        (no title column, or a missing or blank one)."""
        values = self._title_array()
        return list(values if idx is None else values[np.asarray(idx, dtype=np.int64)])

    def _title_array(self) -> np.ndarray:
        """The titles as strings, built once per frame: results ask for a few titles at a time."""
        cache = self._title_cache
        if cache is None or cache[0] is not self.frame or len(cache[1]) != len(self.frame):
            ids = self.frame["item_id"].astype(str)
            if "title" in self.frame.columns:
                title = self.frame["title"]
                text = title.astype(object).where(title.notna(), "").astype(str).str.strip()
                titles = ids.where(text == "", title.astype(object).astype(str))
            else:
                titles = ids
            cache = self._title_cache = (self.frame, titles.to_numpy(dtype=object))
        return cache[1]

    def row(self, idx: int) -> dict:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v)
                for k, v in self.frame.iloc[int(idx)].to_dict().items()}

    def upsert(self, rows: pd.DataFrame) -> tuple[Catalog, np.ndarray]:
        """Add or update items by external id; returns the new catalogue and the rows' indices.

        Existing indices never move, so a fitted model stays valid for old items.
        """
        rows = rows.copy()
        rows["item_id"] = rows["item_id"].astype(str)
        ids = self.ids.copy()
        frame = self.frame.copy()
        idx = np.empty(len(rows), dtype=np.int64)
        new_rows = []
        for j, rec in enumerate(rows.to_dict("records")):
            if rec["item_id"] in ids:
                i = ids.index(rec["item_id"])
                for k, v in rec.items():
                    if k not in frame.columns:
                        frame[k] = None
                    frame.at[i, k] = v
            else:
                i = ids.add(rec["item_id"])
                new_rows.append(rec)
            idx[j] = i
        if new_rows:
            frame = pd.concat([frame, pd.DataFrame(new_rows)], ignore_index=True)
        return Catalog(frame=frame, ids=ids), idx


@dataclass
class Interactions:
    """The interaction log as parallel arrays, in file order (file order breaks timestamp ties).

    user, item: int64 internal indices [n]; timestamp: float64 [n] (NaN when the data has none);
    value: float32 [n] (rating or weight, NaN when absent); event: object [n] or None.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    value: np.ndarray
    event: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, mask_or_idx: np.ndarray) -> Interactions:
        ev = None if self.event is None else self.event[mask_or_idx]
        return Interactions(self.user[mask_or_idx], self.item[mask_or_idx],
                            self.timestamp[mask_or_idx], self.value[mask_or_idx], ev)

    @property
    def has_time(self) -> bool:
        return len(self.timestamp) > 0 and not np.isnan(self.timestamp).all()

    def time_order(self) -> np.ndarray:
        """Indices sorted by (user, timestamp, file order): stable, so ties keep file order."""
        ts = np.nan_to_num(self.timestamp, nan=0.0)
        return np.lexsort((np.arange(len(self.user)), ts, self.user))

    def histories(self, n_users: int) -> list[np.ndarray]:
        """Each user's items in time order (ties in file order): a list of int64 arrays."""
        order = self.time_order()
        users, items = self.user[order], self.item[order]
        bounds = np.searchsorted(users, np.arange(n_users + 1))
        return [items[bounds[u]:bounds[u + 1]] for u in range(n_users)]


@dataclass
class Dataset:
    """A catalogue, a log and the user vocabulary. ``name`` says where it came from."""

    name: str
    catalog: Catalog
    interactions: Interactions
    users: IdMap
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def histories(self) -> list[np.ndarray]:
        return self.interactions.histories(self.n_users)

    def with_interactions(self, inter: Interactions) -> Dataset:
        return replace(self, interactions=inter)

    def stats(self) -> dict:
        inter = self.interactions
        n_inter = len(inter)
        active_users = len(np.unique(inter.user)) if n_inter else 0
        active_items = len(np.unique(inter.item)) if n_inter else 0
        lengths = np.bincount(inter.user, minlength=self.n_users) if n_inter else np.zeros(0)
        out = {
            "dataset": self.name,
            "users": int(active_users),
            "items": int(self.n_items),
            "items_with_interactions": int(active_items),
            "interactions": int(n_inter),
            "density": float(n_inter / max(1, active_users * active_items)),
            "history_length_mean": float(lengths[lengths > 0].mean()) if n_inter else 0.0,
            "history_length_median": float(np.median(lengths[lengths > 0])) if n_inter else 0.0,
            "has_timestamps": bool(inter.has_time),
            "text_fields": self.catalog.text_fields,
        }
        if n_inter and inter.has_time:
            out["time_range"] = [float(np.nanmin(inter.timestamp)), float(np.nanmax(inter.timestamp))]
        return out


def _parse_numbers(series: pd.Series, path: str | None, fmt: str, fieldname: str,
                   allow_dates: bool = False) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64)
    s = series.astype(str).str.strip()
    nums = pd.to_numeric(s, errors="coerce")
    bad = nums.isna() & (s != "")
    if bad.any() and allow_dates:
        dates = pd.to_datetime(s[bad], errors="coerce", utc=True, format="ISO8601")
        ok = dates.notna()
        nums = nums.astype(np.float64)
        epoch = pd.Timestamp(0, tz="UTC")
        nums.loc[dates.index[ok]] = (dates[ok] - epoch).dt.total_seconds().to_numpy()
        bad = nums.isna() & (s != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        what = "a number or an ISO-8601 date" if allow_dates else "a number"
        raise DataError(f"expected {what}, got {s.iloc[row]!r}", path=path,
                        line=line_of(row, fmt) if path else None, field=fieldname)
    return nums.to_numpy(dtype=np.float64)


def build_dataset(name: str, interactions: pd.DataFrame, items: pd.DataFrame | None = None, *,
                  interactions_path: str | None = None, items_path: str | None = None,
                  unknown_items: str = "error") -> Dataset:
    """Turn an interaction frame (user_id, item_id, [timestamp], [rating|value], [event]) and an optional
    item frame into a Dataset. ``unknown_items``: "error" | "drop" | "add" for log items missing
    from the catalogue."""
    fmt = detect_format(interactions_path) if interactions_path else "csv"
    for col in ("user_id", "item_id"):
        if col not in interactions.columns:
            raise DataError(f"no '{col}' column; columns are {list(interactions.columns)} "
                            f"(map one with a column mapping, e.g. {col}=...)",
                            path=interactions_path, field=col)
    df = interactions.reset_index(drop=True)
    for col in ("user_id", "item_id"):
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataError("empty id", path=interactions_path,
                            line=line_of(row, fmt) if interactions_path else None, field=col)
    catalog = Catalog.from_frame(items, path=items_path) if items is not None else None
    item_ids = df["item_id"].astype(str)
    if catalog is None:
        catalog = Catalog.from_ids(pd.unique(item_ids))
    else:
        known = item_ids.isin(catalog.frame["item_id"])
        if not known.all():
            if unknown_items == "error":
                row = int(np.flatnonzero(~known.to_numpy())[0])
                raise DataError(f"item {item_ids.iloc[row]!r} is not in the catalogue"
                                + (f" {items_path}" if items_path else "")
                                + f" ({int((~known).sum())} such rows; pass unknown_items='drop' or 'add')",
                                path=interactions_path,
                                line=line_of(row, fmt) if interactions_path else None, field="item_id")
            if unknown_items == "drop":
                df, item_ids = df[known.to_numpy()].reset_index(drop=True), item_ids[known].reset_index(drop=True)
            else:
                catalog, _ = catalog.upsert(pd.DataFrame({"item_id": pd.unique(item_ids[~known])}))
    users = IdMap(pd.unique(df["user_id"].astype(str)), kind="user")
    user = users.indices(df["user_id"].astype(str))
    item = catalog.ids.indices(item_ids)
    ts = (_parse_numbers(df["timestamp"], interactions_path, fmt, "timestamp", allow_dates=True)
          if "timestamp" in df.columns else np.full(len(df), np.nan))
    vcol = "rating" if "rating" in df.columns else ("value" if "value" in df.columns else None)
    value = (_parse_numbers(df[vcol], interactions_path, fmt, vcol).astype(np.float32)
             if vcol else np.full(len(df), np.nan, dtype=np.float32))
    event = df["event"].astype(str).to_numpy(dtype=object) if "event" in df.columns else None
    return Dataset(name=name, catalog=catalog, users=users,
                   interactions=Interactions(user, item, ts, value, event))


def load_files(interactions: str | Path, items: str | Path | None = None, *,
               interaction_columns: dict[str, str] | None = None,
               item_columns: dict[str, str] | None = None, name: str | None = None,
               unknown_items: str = "error") -> Dataset:
    """Load a data set from an interaction file and an optional item file (CSV, TSV, JSONL, Parquet)."""
    inter_df = read_table(interactions, columns=interaction_columns)
    items_df = read_table(items, columns=item_columns) if items is not None else None
    return build_dataset(name or Path(interactions).stem, inter_df, items_df,
                         interactions_path=str(interactions),
                         items_path=str(items) if items is not None else None,
                         unknown_items=unknown_items)


def load_catalog(path: str | Path, columns: dict[str, str] | None = None) -> Catalog:
    """Load an item catalogue alone (for zero-shot recommendation with no interaction log)."""
    return Catalog.from_frame(read_table(path, columns=columns), path=str(path))
