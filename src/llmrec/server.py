"""The HTTP adapter: FastAPI routes over ``llmrec.service.Engine``, plus the web page. Delete this file and
the engine still works; nothing else imports it.

Write endpoints need ``Authorization: Bearer KEY`` where KEY is the configured key (``LLMREC_API_KEY``);
with no key configured, writes are refused unless the app was made ``insecure``. Bodies are capped at
``max_body`` bytes; every bad request gets a 4xx whose JSON names the field: ``{"error", "field"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .errors import LLMRecError, UnknownNameError
from .service import (
    EVENT_TYPES,
    MAX_BATCH,
    MAX_FILTER_VALUES,
    MAX_HISTORY,
    MAX_ID,
    MAX_K,
    MAX_TEXT,
    Engine,
    Unsupported,
)

log = logging.getLogger("llmrec.server")
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}
MAX_BODY = 1 << 20
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class RecommendIn(_In):
    """Exactly one of user_id, history or text."""

    user_id: Id | None = None
    history: list[Id] | None = Field(None, max_length=MAX_HISTORY, description="item ids, oldest first")
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT, description="interests, any language")
    k: int = Field(10, ge=1, le=MAX_K, strict=True)
    filters: dict[Annotated[str, Field(max_length=64)],
                  str | Annotated[list[Annotated[str, Field(max_length=256)]],
                                  Field(min_length=1, max_length=MAX_FILTER_VALUES)]] | None = Field(
        None, max_length=8, description='item field -> value(s), e.g. {"genres": "Comedy"}')
    exclude: list[Id] | None = Field(None, max_length=MAX_HISTORY, description="item ids never to return")
    exclude_seen: bool = Field(True, strict=True)
    explain: bool = Field(False, strict=True)


EVENTS_DOC = (f"an event, a list of up to {MAX_BATCH} events, or {{\"events\": [...]}}; an event is "
              f"{{user_id, item_id, type: {'|'.join(EVENT_TYPES)}, value (ratings), event_id, timestamp}}")
EVENT_EXAMPLE = {"user_id": "196", "item_id": "242", "type": "like", "event_id": "196-242-1"}


class ItemIn(_In):
    title: str | None = Field(None, max_length=10_000)
    description: str | None = Field(None, max_length=10_000)
    tags: str | None = Field(None, max_length=10_000)
    genres: str | None = Field(None, max_length=10_000)
    year: str | None = Field(None, max_length=16)


class ItemOut(BaseModel):
    item_id: str
    score: float
    title: str
    explanation: dict[str, Any] | None = None


class RecommendOut(BaseModel):
    user_id: str | None = None
    model: str
    items: list[ItemOut]


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _json(obj, status: int = 200) -> Response:
    """Faster than FastAPI's jsonable_encoder, and numpy-safe."""
    return Response(json.dumps(obj, ensure_ascii=False, default=_default, allow_nan=False).encode(),
                    status_code=status, media_type="application/json")


def _error(status: int, message: str, field: str | None = None, **extra) -> Response:
    return _json({"error": message, "field": field, **extra}, status)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (by Content-Length, or counted when chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cl = dict(scope["headers"]).get(b"content-length")
        if cl is not None:
            if not cl.isdigit() or int(cl) > self.max:
                return await _error(413, f"request body over {self.max} bytes", "body")(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.max:
                return await _error(413, f"request body over {self.max} bytes", "body")(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


class _Batcher:
    """Concurrent /recommend calls for users or histories, answered by one ``Engine.recommend_many`` call:
    the requests parsed in one turn of the event loop are scored together in the next (one matrix product
    instead of one per request), each getting its own answer or error."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: list[tuple[dict, asyncio.Future]] = []

    async def submit(self, query: dict) -> dict:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((query, fut))
        return await fut

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        try:
            results = self.engine.recommend_many([q for q, _ in batch])
        except Exception as e:  # noqa: BLE001 - a bug: every waiting request gets it (as a 500)
            results = [e] * len(batch)
        for (_, fut), r in zip(batch, results):
            if fut.done():  # the client went away
                continue
            if isinstance(r, Exception):
                fut.set_exception(r)
            else:
                fut.set_result(r)


def create_app(engine: Engine, *, api_key: str | None = None, insecure: bool = False,
               protect_reads: bool = False, max_body: int = MAX_BODY) -> FastAPI:
    """The service app. ``api_key`` guards writes (and reads with ``protect_reads``); with no key,
    writes need ``insecure=True``."""
    app = FastAPI(title="llmrec", version=__version__,
                  description="Recommendations made by language models, with a durable feedback loop.")
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.state.engine = engine
    batcher = _Batcher(engine)
    writes = "key" if api_key else ("open" if insecure else "disabled")

    def check_key(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not api_key:
            return
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise _AuthError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")

    async def write_guard(request: Request) -> None:  # async: no thread hop per request
        if not api_key and not insecure:
            raise _AuthError(403, "writes are disabled: set LLMREC_API_KEY (and send it as "
                                  "'Authorization: Bearer KEY') or start the server with --insecure")
        check_key(request)

    async def read_guard(request: Request) -> None:
        check_key(request)

    Write, Read = [Depends(write_guard)], ([Depends(read_guard)] if protect_reads else [])

    # -- errors: 4xx naming the field, never a 500 for bad input ---------------------------------------
    @app.exception_handler(_AuthError)
    async def _auth(request, e: _AuthError):
        r = _error(e.status, str(e), "authorization")
        if e.status == 401:
            r.headers["WWW-Authenticate"] = "Bearer"
        return r

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":  # loc is (body, character position)
            pos = first.get("loc", ("body", "?"))[-1]
            return _error(422, f"body: invalid JSON at character {pos}", "body")
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")
               and not (isinstance(x, str) and (x in _TYPE_TAGS or "[" in x))]  # union member tags
        field = ".".join(loc) or "body"
        detail = [{"field": ".".join(str(x) for x in er.get("loc", ())), "message": er.get("msg", "")}
                  for er in errs[:10]]
        return _error(422, f"{field}: {first.get('msg', 'invalid request')}", field, detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        if e.status_code == 400:  # FastAPI could not decode the body (e.g. not UTF-8)
            return _error(400, f"body: could not be read as JSON ({e.detail}); send UTF-8 JSON", "body")
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(LLMRecError)
    async def _llmrec(request, e: LLMRecError):
        field = getattr(e, "field", None)
        if isinstance(e, UnknownNameError):
            return _error(404, str(e), field)
        return _error(400 if isinstance(e, Unsupported) else 422, str(e), field)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):  # a bug, not bad input: say so, keep serving
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(e).__name__}")

    # -- routes ----------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(resources.files("llmrec.web").joinpath("index.html").read_text("utf-8"))

    @app.get("/health")
    def health() -> dict:
        return {**engine.health(), "writes": writes, "version": __version__}

    @app.post("/recommend", response_model=RecommendOut, dependencies=Read)
    async def recommend(req: RecommendIn) -> Response:
        """Top-k for a `user_id`, a `history` (item ids) or a free `text`; the same `{"items": [...]}`
        shape as `llmrec recommend --json`."""
        query = dict(user_id=req.user_id, history=req.history, text=req.text, k=req.k, filters=req.filters,
                     exclude=req.exclude, exclude_seen=req.exclude_seen, explain=req.explain)
        # Encoding a text (a language model) and explaining take milliseconds: the thread pool. Scoring a
        # user or a history takes a fraction of one: on the event loop, batched with the requests that
        # arrived at the same time.
        if req.text is not None or req.explain:
            return _json(await run_in_threadpool(lambda: engine.recommend(**query)))
        return _json(await batcher.submit(query))

    @app.get("/items/{item_id}", dependencies=Read)
    def get_item(item_id: Annotated[str, Path(max_length=MAX_ID)]) -> Response:
        return _json(engine.item(item_id))

    @app.put("/items/{item_id}", dependencies=Write)
    def put_item(item_id: Annotated[str, Path(max_length=MAX_ID)], item: ItemIn) -> Response:
        """Add or update an item by its text; recommendable on the next call."""
        return _json(engine.upsert_item(item_id, item.model_dump(exclude_none=True)))

    @app.get("/users", dependencies=Read)
    def list_users(limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                   offset: Annotated[int, Query(ge=0)] = 0) -> dict:
        return {"users": engine.user_ids(limit, offset)}

    @app.get("/users/{user_id}/history", dependencies=Read)
    def get_history(user_id: Annotated[str, Path(max_length=MAX_ID)]) -> Response:
        return _json(engine.history(user_id))

    @app.get("/users/{user_id}/events", dependencies=Read)
    def get_events(user_id: Annotated[str, Path(max_length=MAX_ID)]) -> Response:
        return _json(engine.events(user_id))

    @app.delete("/users/{user_id}", dependencies=Write)
    def delete_user(user_id: Annotated[str, Path(max_length=MAX_ID)]) -> Response:
        """Forget a user and all their events."""
        return _json(engine.delete_user(user_id))

    @app.post("/events", dependencies=Write)
    def post_events(body: Annotated[Any, Body(description=EVENTS_DOC, examples=[EVENT_EXAMPLE])]) -> Response:
        """Feedback: one event, a list, or `{"events": [...]}`. Stored durably before the answer; the next
        `/recommend` reflects it. Each event is checked by the engine, which names the bad field."""
        if isinstance(body, dict) and set(body) == {"events"}:
            body = body["events"]
        return _json(engine.add_events(body if isinstance(body, list) else [body]))

    @app.post("/retrain", dependencies=Write)
    def retrain() -> Response:
        """Fit the same kind of model on everything known now (stored events folded in) and serve it."""
        return _json(engine.retrain())

    return app


class _AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn (one worker, as `llmrec serve` does)."""
    import gc

    import uvicorn
    from threadpoolctl import threadpool_limits
    # One request scores one user: a matrix-vector product that one core does in well under a millisecond.
    # BLAS worker threads only spin against the event loop and the other requests' work (measured: 259 ->
    # 418 requests/s at concurrency 32), so the server keeps BLAS to one thread.
    threadpool_limits(limits=1, user_api="blas")
    # The model, catalogue and histories are tens of thousands of long-lived objects: freeze them out of
    # the cyclic collector, whose full passes over them otherwise pause requests for tens of ms.
    gc.collect()
    gc.freeze()
    # asyncio's own loop, not uvloop: /recommend scores inline (about half a millisecond without yielding),
    # and with handlers that hold the loop uvloop serves the waiting connections unevenly. Measured with
    # a handler that only spins 0.4 ms, 32 connections: p99 85 ms under uvloop, 18 ms under asyncio, at
    # the same throughput (p50 16 ms in both).
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, loop="asyncio")
