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
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError, UnknownNameError
from .io import CHUNK_ROWS, check_column_keys, detect_format, iter_chunks, line_of_row, read_table

TEXT_FIELDS = ("title", "description", "tags", "genres", "year")


class IdMap:
    """External id (str) <-> internal index (int). Appending keeps existing indices stable."""

    def __init__(self, ids: Iterable[object] = (), kind: str = "id"):
        self.kind = kind
        # the first occurrence of a repeated id keeps its place
        self._ids: list[str] = list(dict.fromkeys(x if type(x) is str else str(x) for x in ids))
        self._lookup: dict[str, int] | None = None

    @classmethod
    def distinct(cls, ids: list[str], kind: str = "id") -> IdMap:
        """From ids known to be distinct strings (a loader's factorised ids): nothing checked or hashed."""
        out = cls(kind=kind)
        out._ids = ids
        return out

    @property
    def _index(self) -> dict[str, int]:
        """id -> index, built on the first lookup: loading a log with a million ids needs none."""
        if self._lookup is None:
            self._lookup = dict(zip(self._ids, range(len(self._ids))))
        return self._lookup

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
        """The external ids of ``idx`` (any shape), or all; cost O(len(idx)), not O(all ids): a request
        names ten items of a million."""
        if idx is None:
            return np.asarray(self._ids, dtype=object)
        idx = np.asarray(idx, dtype=np.int64)
        ids = self._ids
        out = np.empty(idx.size, dtype=object)
        out[:] = [ids[i] for i in idx.ravel().tolist()]
        return out.reshape(idx.shape)

    def ids_or_none(self, idx: np.ndarray) -> np.ndarray:
        """``ids(idx)`` where ``idx >= 0``, None where a top-k list was padded (``idx < 0``)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.full(idx.shape, None, dtype=object)
        ok = idx >= 0
        out[ok] = self.ids(idx[ok])
        return out

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
            line = line_of_row(path, row) if path else None
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
        out.update(self.memory())
        return out

    def memory(self) -> dict:
        """Bytes held by the loaded interaction arrays (per interaction too) and the catalogue frame."""
        inter = self.interactions
        arrays = [inter.user, inter.item, inter.timestamp, inter.value]
        if inter.event is not None:
            arrays.append(inter.event)  # pointers; the event strings themselves are shared
        inter_bytes = int(sum(a.nbytes for a in arrays))
        cat_bytes = int(self.catalog.frame.memory_usage(index=True, deep=True).sum())
        return {"memory_interactions_bytes": inter_bytes,
                "memory_per_interaction_bytes": round(inter_bytes / max(1, len(inter)), 2),
                "memory_catalog_bytes": cat_bytes, "memory_total_bytes": inter_bytes + cat_bytes}


LOG_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "value", "event")


def _bad_numbers(series: pd.Series, allow_dates: bool = False) -> tuple[np.ndarray, int | None]:
    """``series`` as float64 and the position of the first value that is not a number (or a date)."""
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64), None
    try:  # the common case, plain numbers, parsed by Arrow in C; anything else takes the careful path
        return pc.cast(pa.Array.from_pandas(series), pa.float64()).to_numpy(zero_copy_only=False), None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
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
    first = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None
    return nums.to_numpy(dtype=np.float64), first


class _Vocab:
    """Strings -> int64 codes in order of first appearance, over chunks. Each chunk is factorised on its
    own and keeps its codes and its distinct values (Arrow strings, no Python object each); at the end
    the chunks' distinct values are factorised together and every chunk's codes are mapped through."""

    def __init__(self, start: int = 0):
        self.start = start
        self.codes: list[np.ndarray] = []
        self.uniques: list[pd.Index] = []

    def add(self, values: pd.Series) -> int:
        """Factorise one chunk's values; returns the chunk's number for ``finish``."""
        codes, uniques = pd.factorize(values, sort=False)
        self.codes.append(codes)
        self.uniques.append(uniques)
        return len(self.codes) - 1

    def finish(self) -> tuple[list[np.ndarray], list[str]]:
        """Every chunk's global codes (``start + index``) and the distinct values in order."""
        if not self.uniques:
            return [], []
        every = self.uniques[0].append(self.uniques[1:]) if len(self.uniques) > 1 else self.uniques[0]
        glob, distinct = pd.factorize(every, sort=False)
        out, at = [], 0
        for codes, uniq in zip(self.codes, self.uniques):
            out.append(glob[at:at + len(uniq)].astype(np.int64)[codes] + self.start)
            at += len(uniq)
        self.codes, self.uniques = [], []
        return out, [str(x) for x in distinct.tolist()]


class _LogBuilder:
    """Interaction frames, chunk by chunk, into the int64 / float arrays of an ``Interactions``.

    Ids are factorised chunk by chunk (``_Vocab``: int64 codes, Arrow strings for the distinct ids, no
    Python object per cell), so a log of any length costs its arrays, its distinct ids and one chunk.
    Rows are numbered across chunks as the reader counts them; a bad row is turned into a file line only
    when it is reported.
    """

    def __init__(self, catalog: Catalog | None, unknown_items: str, path: str | None,
                 catalog_path: str | None = None):
        if unknown_items not in ("error", "drop", "add"):
            raise DataError(f"unknown_items must be 'error', 'drop' or 'add', got {unknown_items!r}")
        self.catalog, self.unknown_items, self.path = catalog, unknown_items, path
        self.catalog_path = catalog_path
        self.fmt = detect_format(path) if path else None
        self.users = _Vocab()
        self.items = _Vocab(start=len(catalog) if catalog is not None else 0)  # log items not in a catalogue
        self._index = pd.Index(catalog.frame["item_id"]) if catalog is not None else None
        self.parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "ts": [], "value": [],
                                                    "event": []}
        self.fill: list[tuple[int, np.ndarray, int]] = []  # (chunk, rows, vocab chunk) of item codes to map
        self.rows = 0
        self.any_event = False

    def _error(self, message: str, row: int, fieldname: str | None) -> DataError:
        line = line_of_row(self.path, row, self.fmt) if self.path else None
        return DataError(message, path=self.path, line=line, field=fieldname)

    def add(self, df: pd.DataFrame) -> None:
        offset = self.rows
        self.rows += len(df)
        for col in ("user_id", "item_id"):
            if col not in df.columns:
                raise DataError(f"no '{col}' column; columns are {list(df.columns)} "
                                f"(map one with a column mapping, e.g. {col}=...)", path=self.path,
                                field=col)
        rows = np.arange(len(df))  # each kept row's position in this chunk
        user_s, item_s = (df[c].astype(str) for c in ("user_id", "item_id"))
        for col, s in (("user_id", user_s), ("item_id", item_s)):
            empty = df[col].isna().to_numpy() | (s.str.strip() == "").to_numpy()
            if empty.any():
                raise self._error("empty id", offset + int(np.flatnonzero(empty)[0]), col)
        chunk = len(self.parts["user"])
        if self._index is None:
            item = np.full(len(df), -1, dtype=np.int64)
            self.fill.append((chunk, rows, self.items.add(item_s)))
        else:
            item = self._index.get_indexer(item_s)
            unknown = item < 0
            if unknown.any():
                if self.unknown_items == "error":
                    row = int(np.flatnonzero(unknown)[0])
                    raise self._error(
                        f"item {item_s.iloc[row]!r} is not in the catalogue"
                        + (f" {self.catalog_path}" if self.catalog_path else "")
                        + f" ({int(unknown.sum()):,} such rows in the {self.rows:,} read so far; pass "
                        "unknown_items='drop' or 'add')", offset + row, "item_id")
                if self.unknown_items == "drop":
                    rows, item = rows[~unknown], item[~unknown]
                else:
                    self.fill.append((chunk, np.flatnonzero(unknown), self.items.add(item_s[unknown])))
        if len(rows) < len(df):
            df, user_s = df.iloc[rows], user_s.iloc[rows]
        parts = self.parts
        parts["user"].append(self.users.add(user_s))
        parts["item"].append(item.astype(np.int64, copy=False))
        ts = np.full(len(df), np.nan)
        if "timestamp" in df.columns:
            ts, bad = _bad_numbers(df["timestamp"], allow_dates=True)
            if bad is not None:
                what = "a number or an ISO-8601 date"
                raise self._error(f"expected {what}, got {str(df['timestamp'].iloc[bad]).strip()!r}",
                                  offset + int(rows[bad]), "timestamp")
        parts["ts"].append(ts)
        vcol = "rating" if "rating" in df.columns else ("value" if "value" in df.columns else None)
        value = np.full(len(df), np.nan)
        if vcol:
            value, bad = _bad_numbers(df[vcol])
            if bad is not None:
                raise self._error(f"expected a number, got {str(df[vcol].iloc[bad]).strip()!r}",
                                  offset + int(rows[bad]), vcol)
        parts["value"].append(value.astype(np.float32))
        if "event" in df.columns:
            self.any_event = True
            # a categorical's values share one string object per distinct event
            parts["event"].append(np.asarray(pd.Categorical(df["event"].astype(str)), dtype=object))
        else:
            parts["event"].append(np.full(len(df), None, dtype=object))

    def finish(self, name: str) -> Dataset:
        user_codes, user_ids = self.users.finish()
        self.parts["user"] = user_codes
        item_codes, new_items = self.items.finish()
        for chunk, rows, k in self.fill:
            self.parts["item"][chunk][rows] = item_codes[k]
        cat = lambda k, dtype: (np.concatenate(self.parts[k]) if self.parts[k]  # noqa: E731
                                else np.zeros(0, dtype=dtype))
        inter = Interactions(cat("user", np.int64), cat("item", np.int64), cat("ts", np.float64),
                             cat("value", np.float32), cat("event", object) if self.any_event else None)
        self.parts.clear()
        catalog = self.catalog
        if catalog is None:  # the log's items, in order of first appearance
            catalog = Catalog(frame=pd.DataFrame({"item_id": new_items}), ids=IdMap.distinct(new_items, kind="item"))
        elif new_items:
            catalog, _ = catalog.upsert(pd.DataFrame({"item_id": new_items}))
        return Dataset(name=name, catalog=catalog, users=IdMap.distinct(user_ids, kind="user"),
                       interactions=inter)


def build_dataset(name: str, interactions: pd.DataFrame, items: pd.DataFrame | None = None, *,
                  interactions_path: str | None = None, items_path: str | None = None,
                  unknown_items: str = "error") -> Dataset:
    """Turn an interaction frame (user_id, item_id, [timestamp], [rating|value], [event]) and an optional
    item frame into a Dataset. ``unknown_items``: "error" | "drop" | "add" for log items missing
    from the catalogue."""
    return build_from_chunks(name, [interactions.reset_index(drop=True)], items,
                             interactions_path=interactions_path, items_path=items_path,
                             unknown_items=unknown_items)


def build_from_chunks(name: str, chunks: Iterable[pd.DataFrame], items: pd.DataFrame | None = None, *,
                      interactions_path: str | None = None, items_path: str | None = None,
                      unknown_items: str = "error") -> Dataset:
    """``build_dataset`` over an interaction log that arrives in frames (``io.iter_chunks``)."""
    catalog = Catalog.from_frame(items, path=items_path) if items is not None else None
    builder = _LogBuilder(catalog, unknown_items, interactions_path, items_path)
    for chunk in chunks:
        builder.add(chunk)
    return builder.finish(name)


def release_read_buffers() -> None:
    """Hand the buffers arrow keeps after a read back to the system (ml-1m: 275 -> 181 MB resident).
    Called once a loader's frames are gone."""
    pa.default_memory_pool().release_unused()


def load_files(interactions: str | Path, items: str | Path | None = None, *,
               interaction_columns: dict[str, str] | None = None,
               item_columns: dict[str, str] | None = None, name: str | None = None,
               unknown_items: str = "error", chunk_rows: int = CHUNK_ROWS) -> Dataset:
    """Load a data set from an interaction file and an optional item file (CSV, TSV, JSONL, Parquet).
    The log is read ``chunk_rows`` rows at a time. ``interaction_columns`` keys are ``LOG_COLUMNS``."""
    if interaction_columns:
        check_column_keys(interaction_columns, LOG_COLUMNS)
    items_df = read_table(items, columns=item_columns) if items is not None else None
    ds = build_from_chunks(name or Path(interactions).stem,
                           iter_chunks(interactions, columns=interaction_columns, chunk_rows=chunk_rows),
                           items_df, interactions_path=str(interactions),
                           items_path=str(items) if items is not None else None,
                           unknown_items=unknown_items)
    del items_df
    release_read_buffers()
    return ds


def load_catalog(path: str | Path, columns: dict[str, str] | None = None) -> Catalog:
    """Load an item catalogue alone (for zero-shot recommendation with no interaction log)."""
    return Catalog.from_frame(read_table(path, columns=columns), path=str(path))
