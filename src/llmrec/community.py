"""Community cold start: a user with no history is recommended what the people they are related to
(follows, friends, household) would be recommended.

A relation ``(user, related, weight)`` says that ``user``'s recommendations may draw on ``related``'s
history. It is directed, as written: a mutual relation (friends) is two rows. The related user must be
known (hold a history); the user side may be new. For a user with relations and no history, every related
user's history is scored by the model (``score_histories``: any registered model), each row of scores
standardised (mean 0, standard deviation 1, so models with different score scales mix alike), and the rows
averaged with the relation weights. With a text profile and a model that reads text (``TextQueries``), the
profile's standardised scores are mixed in: ``text_weight * text + (1 - text_weight) * relations``.

One place for every model: ``scores`` and ``recommend`` here; the CLI (``llmrec recommend --relations``)
and the service engine (``PUT /users/{id}/relations``) call them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .data import Dataset
from .errors import DataError, LLMRecError
from .io import iter_chunks, line_of_row
from .metrics import hit_rate, ndcg, target_ranks, top_k_excluding
from .models.base import Recommendations, Recommender, TextQueries

RELATION_COLUMNS = ("user_id", "related_id", "weight")
UNKNOWN_USERS = ("error", "drop")


class Relations:
    """``user -> {related user: weight}`` (external ids, weights > 0). ``dropped``: rows that
    ``read(..., unknown_users="drop")`` left out because their related user is unknown."""

    def __init__(self, graph: Mapping[str, Mapping[str, float]] | None = None, dropped: int = 0):
        self.graph: dict[str, dict[str, float]] = {str(u): {str(v): float(w) for v, w in rel.items()}
                                                   for u, rel in (graph or {}).items()}
        self.dropped = dropped

    def __len__(self) -> int:
        return sum(len(r) for r in self.graph.values())

    def __contains__(self, user: object) -> bool:
        return str(user) in self.graph

    def of(self, user: object) -> dict[str, float]:
        """The user's related users and weights (empty when they have none)."""
        return dict(self.graph.get(str(user), {}))

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame) -> Relations:
        """From a frame with ``user_id``, ``related_id`` and optional ``weight`` (default 1)."""
        w = pairs["weight"] if "weight" in pairs else pd.Series(1.0, index=pairs.index)
        graph: dict[str, dict[str, float]] = {}
        for u, v, x in zip(pairs["user_id"].astype(str), pairs["related_id"].astype(str), w.astype(float)):
            graph.setdefault(u, {})
            graph[u][v] = graph[u].get(v, 0.0) + x
        return cls(graph)

    @classmethod
    def read(cls, path: str | Path, known_users, columns: dict[str, str] | None = None,
             unknown_users: str = "error", fmt: str | None = None) -> Relations:
        """Read a relation file (CSV, TSV, JSONL, Parquet) with columns ``user_id``, ``related_id`` and
        optional ``weight`` (a mapping renames the file's columns). ``known_users``: the ids that hold a
        history (anything with ``in``). A row whose related user is not known stops the read with its
        file, line and field (``unknown_users="error"``), or is left out and counted in ``dropped``
        (``"drop"``). A user related to themself, an empty id or a weight that is not a number above 0
        always stops it."""
        if unknown_users not in UNKNOWN_USERS:
            raise LLMRecError(f"unknown_users must be one of {', '.join(UNKNOWN_USERS)}, got {unknown_users!r}")
        kept, dropped, row0 = [], 0, 0
        for df in iter_chunks(path, fmt, columns):
            n_rows = len(df)
            for col in ("user_id", "related_id"):
                if col not in df.columns:
                    raise DataError(f"no {col!r} column (columns: {list(df.columns)}); map one with "
                                    f"--relation-columns {col}=NAME", path=str(path), field=col)
            df = df[[c for c in RELATION_COLUMNS if c in df.columns]].copy()

            def bad(message: str, row: int, field: str, start: int = row0) -> DataError:
                return DataError(message, path=str(path), line=line_of_row(path, start + row, fmt), field=field)
            for col in ("user_id", "related_id"):
                df[col] = df[col].astype(str).str.strip()
                empty = np.flatnonzero((df[col] == "").to_numpy() | df[col].isin(["nan", "None"]).to_numpy())
                if len(empty):
                    raise bad("empty user id", int(empty[0]), col)
            same = np.flatnonzero((df["user_id"] == df["related_id"]).to_numpy())
            if len(same):
                raise bad(f"user {df['user_id'].iloc[same[0]]!r} is related to themself", int(same[0]),
                          "related_id")
            if "weight" in df.columns:
                w = pd.to_numeric(df["weight"], errors="coerce").to_numpy(np.float64)
                wrong = np.flatnonzero(~(np.isfinite(w) & (w > 0)))
                if len(wrong):
                    raise bad(f"weight {df['weight'].iloc[wrong[0]]!r} is not a number above 0",
                              int(wrong[0]), "weight")
                df["weight"] = w
            unknown = np.flatnonzero(~df["related_id"].map(lambda u: u in known_users).to_numpy(bool))
            if len(unknown):
                if unknown_users == "error":
                    raise bad(f"unknown user {df['related_id'].iloc[unknown[0]]!r}: a related user must "
                              "hold a history (or pass --unknown-relations drop)", int(unknown[0]), "related_id")
                dropped += len(unknown)
                df = df.drop(df.index[unknown])
            kept.append(df)
            row0 += n_rows
        out = cls.from_pairs(pd.concat(kept, ignore_index=True))
        out.dropped = dropped
        return out


def _check_fitted(model: Recommender) -> None:
    if model.catalog is None:
        raise LLMRecError(f"model {model.name!r} is not fitted: call fit() or load a checkpoint")


def _standardise(s: np.ndarray) -> np.ndarray:
    """Each row to mean 0 and standard deviation 1 (a constant row to 0); float32."""
    s = np.asarray(s, np.float64)
    sd = s.std(axis=1, keepdims=True)
    return ((s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def scores(model: Recommender, related: list[dict[str, float]], histories: Mapping[str, np.ndarray],
           texts: list[str | None] | None = None, text_weight: float = 0.5) -> np.ndarray:
    """float32 [b, n_items]: for each query's related users (``{user id: weight}``), the weighted mean of
    their histories' standardised scores; ``histories`` maps a user id to its item indices. Related users
    with an empty history count for nothing; a query with none left (and no text) scores every item 0.
    ``texts[b]`` (a profile, or None) is mixed in with ``text_weight`` when the model reads text."""
    if not 0.0 <= text_weight <= 1.0:
        raise LLMRecError(f"text_weight must lie in [0, 1], got {text_weight}")
    _check_fitted(model)
    n = len(model.catalog)
    out = np.zeros((len(related), n), np.float32)
    rows, owner, weight = [], [], []
    for b, rel in enumerate(related):
        for u, w in rel.items():
            h = histories.get(u)
            if h is not None and len(h):
                rows.append(np.asarray(h, np.int64))
                owner.append(b)
                weight.append(w)
    has = np.zeros(len(related), bool)
    if rows:
        s = _standardise(model.score_histories(rows))
        owner_a, w_a = np.asarray(owner), np.asarray(weight, np.float64)
        total = np.bincount(owner_a, weights=w_a, minlength=len(related))
        np.add.at(out, owner_a, (s * (w_a / total[owner_a])[:, None]).astype(np.float32))
        has = total > 0
    if texts is not None and any(t for t in texts):
        if not isinstance(model, TextQueries):
            raise LLMRecError(f"model {model.name!r} cannot read a text profile; use a text model "
                              "(e.g. zero-shot) or leave the text out")
        with_text = [b for b, t in enumerate(texts) if t]
        ts = _standardise(model.score_texts([texts[b] for b in with_text]))
        for j, b in enumerate(with_text):
            out[b] = text_weight * ts[j] + (1 - text_weight) * out[b] if has[b] else ts[j]
    return out


def recommend(model: Recommender, related: list[dict[str, float]], k: int = 10,
              histories: Mapping[str, np.ndarray] | None = None, texts: list[str | None] | None = None,
              text_weight: float = 0.5, exclude: list | None = None, candidates: np.ndarray | None = None,
              explain: bool = False, exclude_rows: list[np.ndarray] | None = None) -> Recommendations:
    """Top-k per query from its related users (``{user id: weight}``) and optional text profile.
    ``histories``: user id -> item indices (default: the model's known users); ``exclude``: external item
    ids no query returns; ``exclude_rows``: per query, item indices it never returns. Explanations name the
    related users whose history holds the item, heaviest first."""
    _check_fitted(model)
    if k < 1:
        raise LLMRecError(f"k must be at least 1, got {k}")
    if histories is None:
        histories = {u: model.history_of(u) for rel in related for u in rel if u in model.users}
    s = scores(model, related, histories, texts, text_weight)
    everyone = model.catalog.ids.indices(exclude) if exclude else np.zeros(0, np.int64)
    rows = list(exclude_rows or ()) + [np.zeros(0, np.int64)] * (len(related) - len(exclude_rows or ()))
    banned = [np.concatenate([everyone, np.asarray(r, np.int64)]) for r in rows]
    ids, top = top_k_excluding(s, k, banned, candidates, copy=False)
    ext = model.catalog.ids.ids_or_none(ids)
    expl = None
    if explain:
        expl = []
        for b, rel in enumerate(related):
            order = sorted(rel, key=lambda u: -rel[u])
            held = {u: set(np.asarray(histories.get(u, ()), np.int64).tolist()) for u in order}
            row = []
            for i in ids[b]:
                if i < 0:
                    row.append({})
                    continue
                who = [u for u in order if int(i) in held[u]]
                row.append({"related_users": who[:5], "reason": (
                    f"in the history of {len(who)} of the {len(rel)} people related to this user"
                    if who else "like the histories of the people related to this user")})
            expl.append(row)
    return Recommendations(ext, top, expl)


# -- evaluation: users whose history is hidden --------------------------------------------------------
def hold_out_users(data: Dataset, share: float = 0.2, seed: int = 0) -> tuple[Dataset, dict[str, int]]:
    """Hide the whole history of a random ``share`` of the users (those with at least one interaction):
    (the data set without their interactions, held-out user id -> the item index they will interact with
    last, the target). The held-out users stay in the user map with empty histories."""
    if not 0.0 < share < 1.0:
        raise LLMRecError(f"share must lie strictly between 0 and 1, got {share}")
    hist = data.histories()
    active = np.flatnonzero([len(h) > 0 for h in hist])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(active, size=max(1, int(round(share * len(active)))), replace=False))
    train = data.with_interactions(data.interactions.subset(~np.isin(data.interactions.user, chosen)))
    return train, {str(u): int(hist[i][-1]) for i, u in zip(chosen, data.users.ids(chosen))}


def evaluate_cold(model: Recommender, targets: dict[str, int], relations: Relations | None = None,
                  texts: Mapping[str, str] | None = None, text_weight: float = 0.5,
                  ks: tuple[int, ...] = (10, 20)) -> dict:
    """HR@k and NDCG@k of held-out users' targets (``hold_out_users``), ranked over every item with
    nothing excluded (the users have no history). With ``relations`` and/or ``texts`` the community
    scores; with neither, the model's scores for an empty history (for ``popular``: popularity)."""
    users = list(targets)
    if relations is None and texts is None:
        s = model.score_histories([np.zeros(0, np.int64)] * len(users))
    else:
        related = [relations.of(u) if relations is not None else {} for u in users]
        histories = {v: model.history_of(v) for rel in related for v in rel if v in model.users}
        s = scores(model, related, histories, [texts.get(u) for u in users] if texts else None, text_weight)
    ranks = target_ranks(np.asarray(s, np.float32), np.array([targets[u] for u in users], np.int64))
    with_relations = sum(1 for u in users if relations is not None and relations.of(u))
    out: dict = {"users": len(users), "with_relations": with_relations}
    for k in ks:
        out[f"HR@{k}"] = round(hit_rate(ranks, k), 4)
        out[f"NDCG@{k}"] = round(ndcg(ranks, k), 4)
    return out
