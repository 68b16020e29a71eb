"""The HTTP bodies the server accepts and returns, as pydantic models: the limits of ``llmrec.validation``
declared for the OpenAPI schema, with every bad field named in a 422 (the server's ``{"error", "field"}``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
)

from .errors import LLMRecError
from .validation import (
    EVENT_TYPES,
    MAX_BATCH,
    MAX_FIELD,
    MAX_FILTER_VALUES,
    MAX_HISTORY,
    MAX_ID,
    MAX_K,
    MAX_RELATIONS,
    MAX_TEXT,
    check_id,
)


def _text_input(v):
    """JSON numbers are not text (an integer id is allowed), and NaN / Infinity are not JSON at all."""
    if isinstance(v, float):
        raise ValueError("NaN and Infinity are not JSON" if not math.isfinite(v) else
                         "expected text, got a number")
    return v


def _valid_unicode(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate such as \\ud800)") from None
    return v


def _valid_id(v: str) -> str:
    try:
        return check_id(v, "id")
    except LLMRecError as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None


def _text(max_length: int, min_length: int = 0):
    return Annotated[str, Field(min_length=min_length, max_length=max_length), BeforeValidator(_text_input),
                     AfterValidator(_valid_unicode)]


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID), BeforeValidator(_text_input),
               AfterValidator(_valid_id)]
PathId = Annotated[str, Path(min_length=1, max_length=MAX_ID)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class RecommendIn(_In):
    """Exactly one of user_id, history or text."""

    user_id: Id | None = None
    history: list[Id] | None = Field(None, max_length=MAX_HISTORY, description="item ids, oldest first")
    text: _text(MAX_TEXT, 1) | None = Field(None, description="interests, any language")
    k: int = Field(10, ge=1, le=MAX_K, strict=True)
    filters: dict[_text(64), _text(256) | Annotated[list[_text(256)],
                                                    Field(min_length=1, max_length=MAX_FILTER_VALUES)]] | None = Field(
        None, max_length=8, description='item field -> value(s), e.g. {"genres": "Comedy"}')
    exclude: list[Id] | None = Field(None, max_length=MAX_HISTORY, description="item ids never to return")
    exclude_seen: bool = Field(True, strict=True)
    explain: bool = Field(False, strict=True)
    diversity: float = Field(0.0, ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                             description="MMR re-ranking weight: 0 = off (the model's order), up to 1")


class EventIn(_In):
    """One piece of feedback. ``event_id`` makes a retry safe: a user's event id is stored once (and a
    retry after the user was forgotten stores nothing)."""

    user_id: Id
    item_id: Id
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    value: Number | None = Field(None, description="a rating, within the service's rating scale")
    event_id: Id | None = None
    timestamp: Number | None = Field(None, description="seconds since 1970; default: when received")


class EventsIn(_In):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


def _events_shape(body) -> str:
    if isinstance(body, list):
        return "list"
    return "wrapped" if isinstance(body, dict) and "events" in body else "one"


EventsBody = Annotated[
    Annotated[EventIn, Tag("one")]
    | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH), Tag("list")]
    | Annotated[EventsIn, Tag("wrapped")],
    Discriminator(_events_shape)]
EVENTS_DOC = (f"an event, a list of up to {MAX_BATCH} events, or {{\"events\": [...]}}; an event is "
              f"{{user_id, item_id, type: {'|'.join(EVENT_TYPES)}, value (ratings), event_id, timestamp}}")
EVENT_EXAMPLE = {"user_id": "196", "item_id": "242", "type": "like", "event_id": "196-242-1"}


# checked item by item by the engine (``Engine.set_relations``), which names the field: relations[3].weight
RelationsBody = Annotated[list[Any], Field(max_length=MAX_RELATIONS)]
RELATIONS_DOC = (f"up to {MAX_RELATIONS} related user ids, or {{user_id, weight > 0}} objects (weight default "
                 "1); [] removes them")


class ItemIn(_In):
    title: _text(MAX_FIELD) | None = None
    description: _text(MAX_FIELD) | None = None
    tags: _text(MAX_FIELD) | None = None
    genres: _text(MAX_FIELD) | None = None
    year: _text(16) | None = None


class ItemOut(BaseModel):
    item_id: str
    score: float
    title: str
    explanation: dict[str, Any] | None = None


class RecommendOut(BaseModel):
    user_id: str | None = None
    model: str
    from_relations: int | None = Field(None, description="a user with no history: the related users used")
    items: list[ItemOut]
