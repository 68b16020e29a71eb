"""The recommendation service as plain Python: a model, a durable store and the feedback loop.

``Engine`` holds a fitted Recommender and a ``StateStore``. Feedback events are written to the store
(committed to disk; concurrent calls share one transaction, a group commit) and then applied to the user's
in-memory history at once, so the next ``recommend`` reflects them; disliked items are never recommended
to that user again. ``upsert_item`` adds an item by its text, ``delete_user`` forgets a user everywhere.
``set_relations`` says whom a user is related to; a user with relations and no history is recommended
from those people's histories (``llmrec.community``). On start the engine replays the store on top of the
model's own histories, so a restart loses nothing. ``retrain`` fits the same kind of model on everything
known now.

No web framework here: ``llmrec.server`` is a thin HTTP adapter over this module, the CLI another.

Concurrency: reads (recommendations, text queries) share the model; only swapping it (an item upsert, a
retrain) waits for them and excludes them, so a slow text query never holds up the others.

Replicas: over a shared store (a ``store.ChangeFeed``: Postgres) each server process applies what the
others commit as the feed reports it (new events, forgotten users, added items), so every replica answers
from the same state a few milliseconds later; after a gap in the feed it reloads everything.

The engine owns each user's history: it takes the model's at start (``Recommender.take_histories``) and
passes a query's history in with it, so forgetting a user happens in one place. Models declare what they
can do beyond the base protocol (``llmrec.models.base``): an ``AddsItems`` model embeds new items' text
itself, a ``TextQueries`` model answers free-text queries. Other models still get new items in their
catalogue (``upsert_catalog``: they score them 0) and refuse text queries clearly.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import community
from .data import TEXT_FIELDS, Catalog, Dataset, IdMap, Interactions
from .errors import ConfigError, LLMRecError, StoreUnavailable
from .models import AddsItems, Recommender, TextQueries
from .rerank import pool
from .rwlock import ReadWriteLock
from .store import Change, ChangeFeed, Event, StateStore, open_store
from .validation import (
    EVENT_TYPES,
    MAX_BATCH,
    MAX_FIELD,
    MAX_FILTER_VALUES,
    MAX_HISTORY,
    MAX_K,
    MAX_RELATIONS,
    MAX_TEXT,
    Unsupported,
    check_id,
    check_unicode,
    field_error,
    not_found,
    number,
)

ERASURE_RETRY_S = 1.0
EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class _Query:
    """One validated user / history query: its history and excluded items (internal indices), k, the
    filter mask, the answer's leading fields, and the key of the queries that can be scored with it."""

    hist: np.ndarray
    excl: np.ndarray
    k: int
    mask: np.ndarray | None
    head: dict
    group: tuple


class _PendingEvents:
    """One ``add_events`` call waiting for the group commit that stores it."""

    def __init__(self, events: list[Event]):
        self.events, self.new, self.error, self.done = events, [], None, False
        self.wake = threading.Event()  # set when answered (done) or handed the lead (not done)


@dataclass(frozen=True)
class ServiceConfig:
    """What feedback is accepted and how it counts.

    A rating at or above ``like_rating`` is positive, below it a dislike. An event's ``value`` must lie in
    ``[rating_min, rating_max]``; its ``timestamp`` (seconds since 1970) may not be before 1970 nor more
    than ``max_clock_skew`` seconds ahead of the server's clock.
    """

    like_rating: float = 3.0
    rating_min: float = 0.0
    rating_max: float = 10.0
    max_clock_skew: float = 300.0

    def __post_init__(self):
        for name in ("like_rating", "rating_min", "rating_max", "max_clock_skew"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"ServiceConfig.{name}: expected a finite number, got {v!r}")
        if self.rating_min > self.rating_max:
            raise ConfigError(f"ServiceConfig.rating_min: {self.rating_min} is above rating_max "
                              f"{self.rating_max}")
        if self.max_clock_skew < 0:
            raise ConfigError(f"ServiceConfig.max_clock_skew: must be >= 0, got {self.max_clock_skew}")


class Engine:
    """A fitted model + a store + each user's current history. Thread-safe."""

    def __init__(self, model: Recommender, store: StateStore, config: ServiceConfig | None = None,
                 source: str = ""):
        self.model, self.store = model, store
        self.config = config or ServiceConfig()
        self.source = source
        self._write_lock = threading.Lock()  # store writes + applying them, in one order
        self._queue_lock = threading.Lock()  # the event calls waiting for the next group commit
        self._queue: list[_PendingEvents] = []
        self._leading = False                # a caller is storing a group (or was handed the lead)
        self._model_lock = ReadWriteLock()   # the model and its catalogue: shared by queries, swapped on
        #                                      upsert / retrain
        self._hist: dict[str, np.ndarray] = {}
        self._disliked: dict[str, frozenset[int]] = {}
        self._relations: dict[str, dict[str, float]] = {}  # user -> related user -> weight
        self._masks: dict[tuple, np.ndarray] = {}
        self._catalog_version = 0
        self.skipped_on_load = 0
        self._erasure_timer: threading.Timer | None = None
        if self.store.get_meta("source") is None and self.source:
            self.store.set_meta("source", self.source)
        base = self.model.take_histories()  # the engine is their one owner from here on
        shared = isinstance(store, ChangeFeed)
        self._base = base if shared else None  # a shared store's resync rebuilds from them
        with self._write_lock:  # the feed's first changes wait for the view they come after
            if shared:
                store.follow(self._on_change)  # listening before the view is loaded: nothing falls between
            self._load(base)
        if self.store.erasure_pending:
            self._retry_erasure()

    # -- start-up ------------------------------------------------------------------------------------
    def _load(self, base: dict[str, np.ndarray]) -> None:
        """The base histories without the forgotten users, the stored items, then every stored event,
        all read in one view of the store."""
        with self.store.reading():
            forgotten = self.store.forgotten_among(list(base))
            items = self.store.items()
            events = self.store.events()
            relations = self.store.relations()
        self._hist = {uid: h for uid, h in base.items() if uid not in forgotten}
        self._disliked = {}
        self.skipped_on_load = 0
        if items:
            self._upsert_catalog(items)
        for ev in events:
            if ev.item_id not in self.model.catalog.ids:
                self.skipped_on_load += 1
                continue
            self._apply(ev)
        self._relations = relations

    def _on_change(self, change: Change) -> None:
        """Apply what another replica committed (called by the store's feed, in commit order)."""
        with self._write_lock:
            if change.kind == "events":
                for ev in change.events:
                    if ev.item_id in self.model.catalog.ids:
                        self._apply(ev)
            elif change.kind == "forget":
                gone = [u for u in self._hist if self.store.user_key(u) == change.user_key]
                for u in gone:
                    self._hist.pop(u, None)
                    self._disliked.pop(u, None)
                self._relations = self.store.relations()  # theirs and those naming them are gone
            elif change.kind == "relations":
                self._relations = self.store.relations()
            elif change.kind == "items" and change.items:
                self._upsert_catalog(list(change.items))
            elif change.kind == "resync":
                self._load(self._base)

    # -- reads ---------------------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return self.model.catalog

    def health(self) -> dict:
        """Status and counts; while the store cannot be reached, ``store`` says why and ``events`` is None
        (what is in memory is still served)."""
        try:
            events, store = self.store.count_events(), "ok"
        except StoreUnavailable as e:
            events, store = None, str(e)
        return {"status": "ok", "model": self.model.name, "source": self.source,
                "items": len(self.catalog), "users": len(self._hist),
                "events": events, "skipped_on_load": self.skipped_on_load,
                "text_queries": self.supports_text(), "users_with_relations": len(self._relations),
                "erasure_pending": self.store.erasure_pending, "store": store}

    def user_ids(self, limit: int = 50, offset: int = 0) -> list[str]:
        ids = list(self._hist)
        return ids[offset:offset + limit]

    def _user_history(self, user_id: str, field: str = "user_id") -> np.ndarray:
        h = self._hist.get(user_id)
        if h is None:
            raise not_found("user", user_id, field)
        return h

    def history(self, user_id: str) -> dict:
        h = self._user_history(user_id)
        cat = self.catalog
        titles = cat.titles(h) if len(h) else []
        dis = sorted(self._disliked.get(user_id, ()))
        return {"user_id": user_id,
                "items": [{"item_id": cat.ids.id(i), "title": t} for i, t in zip(h, titles, strict=True)],
                "disliked": [{"item_id": cat.ids.id(i), "title": cat.titles([i])[0]} for i in dis]}

    def events(self, user_id: str) -> dict:
        """The user's stored events (also those skipped on load because their item left the catalogue)."""
        if user_id not in self._hist and not self.store.has_user(user_id):
            raise not_found("user", user_id, "user_id")
        return {"user_id": user_id,
                "events": [{"event_id": e.event_id, "item_id": e.item_id, "type": e.type,
                            "value": e.value, "timestamp": e.ts} for e in self.store.events(user_id)]}

    def item(self, item_id: str) -> dict:
        cat = self.catalog
        if item_id not in cat.ids:
            raise not_found("item", item_id, "item_id")
        row = cat.row(cat.ids.index(item_id))
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()
                if not (v is None or (isinstance(v, float) and math.isnan(v)))}

    def supports_text(self) -> bool:
        return isinstance(self.model, TextQueries)

    def recommend(self, *, user_id: str | None = None, history: list | None = None,
                  text: str | None = None, k: int = 10, filters: dict | None = None,
                  exclude: list | None = None, exclude_seen: bool = True, explain: bool = False,
                  diversity: float = 0.0) -> dict:
        """Top-k for a known user, a raw history (item ids) or a free text, as ``{"items": [...]}``
        records (item_id, score, title, explanation) like ``llmrec recommend --json``; ``diversity``:
        MMR's weight (0 = off, to 1), as ``Recommender.recommend`` takes it."""
        result = self.recommend_many([dict(user_id=user_id, history=history, text=text, k=k, filters=filters,
                                           exclude=exclude, exclude_seen=exclude_seen, explain=explain,
                                           diversity=diversity)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_many(self, queries: list[dict]) -> list[dict | Exception]:
        """Several ``recommend`` calls (keyword dicts) answered together: the user / history queries that
        share exclude_seen, filters and explain are scored in one model call (one matrix product for all
        instead of one per query). Each query gets its own result, or the error its call would raise."""
        out: list[dict | Exception | None] = [None] * len(queries)
        groups: dict[tuple, list[tuple[int, _Query]]] = {}
        with self._model_lock.read():
            model = self.model
            for i, q in enumerate(queries):
                try:
                    prepared = self._prepare(**q)
                except LLMRecError as e:
                    out[i] = e
                    continue
                if isinstance(prepared, dict):  # a text query, already answered
                    out[i] = prepared
                else:
                    groups.setdefault(prepared.group, []).append((i, prepared))
            for (exclude_seen, _, explain, diversity, _), members in groups.items():
                qs = [p for _, p in members]
                k = max(p.k for p in qs)
                try:
                    recs = model.recommend_indices([p.hist for p in qs], pool(k, len(model.catalog)) if diversity
                                                   else k, exclude_seen=exclude_seen, candidates=qs[0].mask,
                                                   explain=explain, exclude_rows=[p.excl for p in qs])
                    if diversity:
                        recs = model.diversify(recs, k, diversity)
                except Exception as e:  # noqa: BLE001 - the error belongs to these queries' answers
                    for i, _ in members:
                        out[i] = e
                    continue
                for row, (i, p) in enumerate(members):
                    out[i] = {**p.head, "model": model.name, "items": recs.records(model.catalog, row)[:p.k]}
        return out

    def _prepare(self, *, user_id=None, history=None, text=None, k=10, filters=None, exclude=None,
                 exclude_seen=True, explain=False, diversity=0.0) -> _Query | dict:
        """Validate one query; a text query is answered here (its own model call), others come back as a
        ``_Query`` to be scored with the rest of their group. Call with the model lock held (to read)."""
        given = [n for n, v in (("user_id", user_id), ("history", history), ("text", text)) if v is not None]
        if len(given) != 1:
            raise field_error("user_id", "give exactly one of user_id, history or text"
                              + (f" (got {', '.join(given)})" if given else ""))
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise field_error("k", f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        diversity = number(diversity, "diversity", "a diversity weight")
        if not 0.0 <= diversity <= 1.0:
            raise field_error("diversity", f"diversity must be from 0 (off) to 1, got {diversity!r}")
        mask = self._filter_mask(filters) if filters else None
        excl = self._indices(exclude, "exclude") if exclude else EMPTY
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise field_error("text", "text must be a non-empty string")
            if len(text) > MAX_TEXT:
                raise field_error("text", f"text is longer than {MAX_TEXT} characters")
            check_unicode(text, "text")
            recs = self._recommend_text(text, k, excl, mask, explain, diversity)
            return {"model": self.model.name, "items": recs.records(self.model.catalog)}
        head: dict = {}
        if user_id is not None and str(user_id) in self._relations and not len(self._hist.get(str(user_id), EMPTY)):
            return self._recommend_community(str(user_id), k, excl, mask, explain)
        if user_id is not None:
            hist = self._user_history(str(user_id))
            dis = self._disliked.get(str(user_id))
            if dis:
                excl = np.union1d(excl, np.fromiter(dis, dtype=np.int64))
            head["user_id"] = str(user_id)
        else:
            if len(history) > MAX_HISTORY:
                raise field_error("history", f"history holds more than {MAX_HISTORY} items")
            hist = self._indices(history, "history")
        group = (bool(exclude_seen), json.dumps(filters, sort_keys=True, default=str) if filters else "",
                 bool(explain), diversity, k if diversity else 0)  # MMR's pool depends on k
        return _Query(hist, excl, k, mask, head, group)

    def _recommend_community(self, user_id: str, k, excl, mask, explain) -> dict:
        """A user with relations and no history: from the histories of the people they are related to."""
        dis = self._disliked.get(user_id)
        if dis:
            excl = np.union1d(excl, np.fromiter(dis, dtype=np.int64))
        related = self._relations[user_id]
        recs = community.recommend(self.model, [related], k=k, histories=self._hist, candidates=mask,
                                   explain=explain, exclude_rows=[excl])
        return {"user_id": user_id, "model": self.model.name, "from_relations": len(related),
                "items": recs.records(self.model.catalog)}

    def _recommend_text(self, text, k, excl, mask, explain, diversity=0.0):
        m, cat = self.model, self.model.catalog
        exclude_ids = list(cat.ids.ids(excl)) if len(excl) else None
        if isinstance(m, TextQueries):
            recs = m.recommend_text([text], k=pool(k, len(cat)) if diversity else k, exclude=exclude_ids,
                                    candidates=mask, explain=explain)
            return m.diversify(recs, k, diversity) if diversity else recs
        raise Unsupported(f"field 'text': model {m.name!r} cannot recommend for free text; serve a "
                          "text model (e.g. the zero-shot model) or send user_id or history", "text")

    def _indices(self, ids, field: str) -> np.ndarray:
        ids_map = self.catalog.ids
        out = np.empty(len(ids), dtype=np.int64)
        for j, x in enumerate(ids):
            if str(x) not in ids_map:
                raise not_found("item", str(x), f"{field}[{j}]")
            out[j] = ids_map.index(x)
        return out

    def _filter_mask(self, filters: dict) -> np.ndarray:
        """Items whose field holds one of the wanted values (comma-separated tokens, case-insensitive);
        several fields must all match."""
        cat = self.catalog
        mask = np.ones(len(cat), dtype=bool)
        for name, want in filters.items():
            if not isinstance(name, str) or name not in cat.frame.columns or name == "item_id":
                cols = [c for c in cat.frame.columns if c != "item_id"]
                raise field_error(f"filters.{name}", f"no such item field; fields are {', '.join(cols)}")
            values = [want] if isinstance(want, (str, int)) and not isinstance(want, bool) else want
            if (not isinstance(values, list) or not values or len(values) > MAX_FILTER_VALUES
                    or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)):
                raise field_error(f"filters.{name}", f"expected a text value or a list of 1 to "
                                  f"{MAX_FILTER_VALUES} text values")
            for v in values:
                check_unicode(str(v), f"filters.{name}")
            key = (self._catalog_version, name, tuple(sorted(str(v).strip().casefold() for v in values)))
            m = self._masks.get(key)
            if m is None:
                wanted = set(key[2])
                col = cat.frame[name].fillna("").astype(str).str.casefold()
                m = np.fromiter((bool(wanted & {t.strip() for t in s.split(",")}) for s in col),
                                dtype=bool, count=len(col))
                if len(self._masks) > 256:
                    self._masks.clear()
                self._masks[key] = m
            mask &= m
        return mask

    # -- writes --------------------------------------------------------------------------------------
    def add_events(self, events: list[dict]) -> dict:
        """Validate all, store all (durably, one transaction), then apply the new ones in memory.
        Each event: user_id, item_id, type, optional value (ratings), event_id (for safe retries),
        timestamp. Returns counts and the event ids."""
        if not isinstance(events, list) or not events:
            raise field_error("events", "expected one event or a non-empty list of events")
        if len(events) > MAX_BATCH:
            raise field_error("events", f"at most {MAX_BATCH} events per request, got {len(events)}")
        parsed = [self._parse_event(e, f"events[{j}]" if len(events) > 1 else "event")
                  for j, e in enumerate(events)]
        new = self._commit_events(parsed)
        return {"stored": int(sum(new)), "duplicates": int(len(new) - sum(new)),
                "event_ids": [e.event_id for e in parsed]}

    def _commit_events(self, events: list[Event]) -> list[bool]:
        """Store ``events`` and apply the new ones, with the calls that arrive meanwhile: group commit. One
        caller at a time leads: it stores every queued call's events in one transaction (one disk flush for
        all), applies them in order, wakes those callers and hands the lead to the first call that queued
        since; the others only wait for their own answer. A failed transaction fails every call in it (none
        of them was acknowledged)."""
        slot = _PendingEvents(events)
        with self._queue_lock:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wake.wait()  # answered, or handed the lead
        if not slot.done:
            with self._queue_lock:
                group, self._queue = self._queue, []
            try:
                with self._write_lock:
                    new = self.store.add_events([e for s in group for e in s.events])
                    at = 0
                    for s in group:
                        s.new = new[at:at + len(s.events)]
                        at += len(s.events)
                        for ev, is_new in zip(s.events, s.new, strict=True):
                            if is_new:
                                self._apply(ev)
            except BaseException as e:  # every call of the group is answered, one way or the other
                for s in group:
                    s.error = e
            finally:
                for s in group:
                    s.done = True
                    s.wake.set()
                with self._queue_lock:
                    if self._queue:
                        self._queue[0].wake.set()  # the next leader
                    else:
                        self._leading = False
        if slot.error is not None:
            raise slot.error
        return slot.new

    def _parse_event(self, e: dict, where: str) -> Event:
        if not isinstance(e, dict):
            raise field_error(where, "an event is an object with user_id, item_id and type")
        unknown = set(e) - {"user_id", "item_id", "type", "value", "event_id", "timestamp"}
        if unknown:
            raise field_error(f"{where}.{sorted(unknown)[0]}", "unknown field")
        user, item = check_id(e.get("user_id"), f"{where}.user_id"), check_id(e.get("item_id"), f"{where}.item_id")
        if item not in self.catalog.ids:
            raise not_found("item", item, f"{where}.item_id")
        kind = e.get("type")
        if kind not in EVENT_TYPES:
            raise field_error(f"{where}.type", f"expected one of {', '.join(EVENT_TYPES)}, got {kind!r}")
        cfg = self.config
        value = e.get("value")
        if value is not None:
            value = number(value, f"{where}.value", "a number")
            if not cfg.rating_min <= value <= cfg.rating_max:
                raise field_error(f"{where}.value", f"{value:g} is outside the rating scale "
                                  f"{cfg.rating_min:g} to {cfg.rating_max:g}")
        if kind == "rating" and value is None:
            raise field_error(f"{where}.value", "a rating needs a value")
        eid = e.get("event_id")
        eid = uuid.uuid4().hex if eid is None else check_id(eid, f"{where}.event_id")
        ts, now = e.get("timestamp"), time.time()
        if ts is None:
            ts = now
        else:
            ts = number(ts, f"{where}.timestamp", "seconds since 1970")
            if ts < 0:
                raise field_error(f"{where}.timestamp", f"{ts:g} is before 1970 (expected seconds since 1970)")
            if ts > now + cfg.max_clock_skew:
                raise field_error(f"{where}.timestamp", f"{ts:g} is more than {cfg.max_clock_skew:g} s ahead "
                                  "of the server's clock (expected seconds since 1970)")
        return Event(eid, user, item, kind, value, ts)

    def _apply(self, ev: Event) -> None:
        """Fold one event into the user's history: positives move the item to the end of the history,
        negatives remove it and exclude it from now on. Arrays are replaced, never mutated, so readers
        need no lock."""
        idx = self.catalog.ids.index(ev.item_id)
        h = self._hist.get(ev.user_id, EMPTY)
        dis = self._disliked.get(ev.user_id, frozenset())
        negative = ev.type == "dislike" or (ev.type == "rating" and ev.value < self.config.like_rating)
        if negative:
            self._hist[ev.user_id] = h[h != idx]
            self._disliked[ev.user_id] = dis | {idx}
        else:
            self._hist[ev.user_id] = np.append(h[h != idx], np.int64(idx))
            if idx in dis:
                self._disliked[ev.user_id] = dis - {idx}

    def set_relations(self, user_id: str, related: list) -> dict:
        """Replace the people ``user_id`` is related to (follows, friends, household): a list of user ids,
        or of ``{"user_id", "weight"}`` (weight > 0, default 1); an empty list removes them. Each related
        user must be known to the service. Stored durably, then used at once: while the user has no
        history, ``recommend(user_id=...)`` answers from the related users' histories."""
        user_id = check_id(user_id, "user_id")
        if not isinstance(related, list):
            raise field_error("relations", "expected a list of user ids")
        if len(related) > MAX_RELATIONS:
            raise field_error("relations", f"at most {MAX_RELATIONS} relations, got {len(related)}")
        parsed: dict[str, float] = {}
        for j, r in enumerate(related):
            where = f"relations[{j}]"
            weight = 1.0
            if isinstance(r, dict):
                unknown = set(r) - {"user_id", "weight"}
                if unknown:
                    raise field_error(f"{where}.{sorted(unknown)[0]}", "unknown field")
                if r.get("weight") is not None:
                    weight = number(r["weight"], f"{where}.weight", "a weight above 0")
                    if weight <= 0:
                        raise field_error(f"{where}.weight", f"a weight must be above 0, got {weight:g}")
                r, where = r.get("user_id"), f"{where}.user_id"
            other = check_id(r, where)
            if other == user_id:
                raise field_error(where, "a user cannot be related to themself")
            if other not in self._hist:
                raise not_found("user", other, where)
            parsed[other] = parsed.get(other, 0.0) + weight
        with self._write_lock:
            self.store.set_relations(user_id, parsed)
            if parsed:
                self._relations[user_id] = parsed
            else:
                self._relations.pop(user_id, None)
        return {"user_id": user_id, "relations": len(parsed)}

    def relations(self, user_id: str) -> dict:
        """The people the user is related to, with their weights."""
        if user_id not in self._relations and user_id not in self._hist:
            raise not_found("user", user_id, "user_id")
        return {"user_id": user_id, "relations": [{"user_id": v, "weight": w}
                                                  for v, w in self._relations.get(user_id, {}).items()]}

    def delete_user(self, user_id: str) -> dict:
        """Forget a user: their events, profile and history, in the store and in memory. ``erased`` says
        whether the files already hold no copy of their rows; when another reader of the database holds
        an old snapshot it is False, ``health()`` says ``erasure_pending`` and the engine keeps trying
        (every ``ERASURE_RETRY_S``) until it is done. A later retry of one of their acknowledged events
        is answered as a duplicate and brings nothing back."""
        user_id = check_id(user_id, "user_id")
        with self._write_lock:
            # a user whose stored events all name items the served catalogue lacks (skipped on load) is
            # not in memory, and is still forgotten: their rows are on disk
            if user_id not in self._hist and not self.store.has_user(user_id):
                raise not_found("user", user_id, "user_id")
            n, erased = self.store.forget_user(user_id)
            self._hist.pop(user_id, None)
            self._disliked.pop(user_id, None)
            self._relations.pop(user_id, None)
            for other in [u for u, rel in self._relations.items() if user_id in rel]:  # relations naming them
                rel = {v: w for v, w in self._relations[other].items() if v != user_id}
                if rel:
                    self._relations[other] = rel
                else:
                    del self._relations[other]
        if not erased:
            self._retry_erasure()
        return {"user_id": user_id, "deleted": True, "events_deleted": n, "erased": erased}

    def _retry_erasure(self) -> None:
        """Try the pending erasure again shortly, on a timer thread, until it succeeds."""
        with self._write_lock:
            if self._erasure_timer is not None or not self.store.erasure_pending:
                return

            def attempt():
                with self._write_lock:
                    self._erasure_timer = None
                    try:
                        done = self.store.finish_erasure()
                    except Exception:  # noqa: BLE001 - the store was closed: the next start completes it
                        return
                if not done:
                    self._retry_erasure()
            self._erasure_timer = threading.Timer(ERASURE_RETRY_S, attempt)
            self._erasure_timer.daemon = True
            self._erasure_timer.start()

    def upsert_item(self, item_id: str, fields: dict, merge: bool = False) -> dict:
        """Add an item, or replace it, by its text fields (title, description, tags, genres, year): the
        item becomes exactly ``fields``, every field not given is emptied. ``merge=True`` changes only the
        fields given (``None`` empties one). An item without a title is shown by its id."""
        item_id = check_id(item_id, "item_id")
        if not isinstance(fields, dict):
            raise field_error("item", "expected an object of text fields")
        given: dict[str, str | None] = {}
        for k, v in fields.items():
            if k not in TEXT_FIELDS:
                raise field_error(str(k), f"unknown item field; fields are {', '.join(TEXT_FIELDS)}")
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (str, int)):
                    raise field_error(k, f"expected text, got {type(v).__name__}")
                v = str(v)
                if len(v) > MAX_FIELD:
                    raise field_error(k, f"longer than {MAX_FIELD} characters")
                check_unicode(v, k)
            given[k] = v
        with self._write_lock:  # the model lock only around the catalogue swap, not the disk write
            created = item_id not in self.catalog.ids
            old = {} if created or not merge else self.catalog.row(self.catalog.ids.index(item_id))
            columns = [c for c in self.catalog.frame.columns if c != "item_id"]
            row = {"item_id": item_id, **{c: None for c in dict.fromkeys([*TEXT_FIELDS, *columns])}}
            row.update({k: v for k, v in old.items() if k in row})
            row.update(given)
            if not any(isinstance(v, str) and v.strip() for k, v in row.items() if k in TEXT_FIELDS):
                raise field_error("title", "an item needs some text: at least one of "
                                  + ", ".join(TEXT_FIELDS))
            self.store.upsert_items([row])
            self._upsert_catalog([row])
        return {"item_id": item_id, "created": created,
                "scored_by_text": isinstance(self.model, AddsItems)}

    def _upsert_catalog(self, rows: list[dict]) -> None:
        frame = pd.DataFrame(rows)
        with self._model_lock.write():
            if isinstance(self.model, AddsItems):
                self.model.add_items(frame)
            else:
                self.model.upsert_catalog(frame)
            self._catalog_version += 1
            self._masks.clear()

    # -- retraining ----------------------------------------------------------------------------------
    def snapshot(self) -> Dataset:
        """Everything known now as a Dataset: the catalogue (with added items) and each user's current
        history in order (timestamps are positions; dislikes are left out)."""
        with self._write_lock:
            hist = dict(self._hist)
        users = IdMap(hist, kind="user")
        lens = np.fromiter((len(h) for h in hist.values()), dtype=np.int64, count=len(hist))
        items = np.concatenate(list(hist.values())) if hist else EMPTY
        n = len(items)
        pos = np.concatenate([np.arange(x) for x in lens]).astype(np.float64) if n else np.zeros(0)
        inter = Interactions(np.repeat(np.arange(len(hist), dtype=np.int64), lens), items, pos,
                             np.full(n, np.nan, dtype=np.float32))
        return Dataset(name=f"{self.source or 'service'}+events", catalog=self.catalog,
                       interactions=inter, users=users)

    def retrain(self, out: str | Path | None = None, progress: bool = False) -> dict:
        """Fit a fresh model of the same kind and config on ``snapshot()``, swap it in, and save it to
        ``out`` when given (a checkpoint ``llmrec serve --model-dir`` serves)."""
        from . import models
        version = self._catalog_version  # read first: a change before the snapshot also keeps the old model
        ds = self.snapshot()
        t0 = time.perf_counter()
        fresh = models.get(self.model.name, self.model.config).fit(ds, progress=progress)
        fit_s = time.perf_counter() - t0
        if out is not None:
            # saved with each user's current history: a user forgotten while fitting (and perhaps back with
            # new events) keeps nothing of the snapshot's history
            with self._write_lock:
                current = [self._hist.get(uid, EMPTY) for uid in fresh.users.ids()]
            fresh.set_histories(current)
            fresh.save(out, card={"dataset": ds.name, "trained_on": "service snapshot",
                                  "interactions": int(len(ds.interactions))})
        fresh.take_histories()  # the engine keeps owning them
        with self._write_lock, self._model_lock.write():
            # items added or replaced while fitting are not in ``fresh``: keep serving the old model then
            swapped = self._catalog_version == version
            if swapped:
                self.model = fresh
                self._catalog_version += 1
                self._masks.clear()
        return {"model": fresh.name, "swapped": swapped, "users": ds.n_users, "items": ds.n_items,
                "interactions": int(len(ds.interactions)), "fit_seconds": round(fit_s, 3),
                "out": None if out is None else str(out)}


# -- where to keep state -------------------------------------------------------------------------------
def default_data_dir(source: str) -> Path:
    """``<user data dir>/llmrec/serve/<source slug>``: one store per thing served."""
    import hashlib

    from platformdirs import user_data_dir
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.split(":")[-1].split("/")[-1])[:60].strip("_")
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return Path(user_data_dir("llmrec")) / "serve" / f"{slug}-{digest}"


def open_engine(model: Recommender, data_dir: str | Path, source: str = "",
                config: ServiceConfig | None = None, database: str | None = None) -> Engine:
    """An engine over ``store.open_store(database, data_dir)``: SQLite in ``data_dir`` by default, or the
    Postgres database at a ``postgresql://`` URL (the keyed hashes' secret still in ``data_dir``)."""
    store = open_store(database, data_dir)
    try:
        return Engine(model, store, config, source)
    except BaseException:
        store.close()
        raise
