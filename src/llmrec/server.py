"""The HTTP adapter: FastAPI routes over ``llmrec.service.Engine``, plus the web page. Delete this file and
the engine still works; nothing else imports it.

Who may do what (``Authorization: Bearer KEY``, KEY the configured ``LLMREC_API_KEY``):
- writes (events, items, a user's relations, deleting a user, retraining) need the key; with no key
  configured they are refused unless the app was made ``insecure``;
- user data (the user list, a user's history, events and relations, and recommendations for a ``user_id``)
  needs the key too, unless the app was made with ``public_user_data`` (for demos); with no key it is refused;
- recommendations for a ``history`` or a ``text``, items and ``/health``'s model and counts are open,
  unless ``protect_reads`` (which needs a key) closes them too; the page, ``/docs``, ``/openapi.json`` and
  ``/health``'s status and access settings (what the page needs to ask for the key) stay open.

Bodies are capped at ``max_body`` bytes and must arrive within ``body_timeout`` seconds; ``serve_config``
bounds the request head (``MAX_HEADER_BYTES``, ``HEADER_TIMEOUT``). With ``allowed_hosts`` only those Host
names are answered (DNS rebinding). Every bad request gets a 4xx whose JSON names the field:
``{"error", "field"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Annotated

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .config import json_default
from .errors import LLMRecError, StoreUnavailable, UnknownNameError
from .schemas import (
    EVENT_EXAMPLE,
    EVENTS_DOC,
    RELATIONS_DOC,
    EventsBody,
    EventsIn,
    ItemIn,
    PathId,
    RecommendIn,
    RecommendOut,
    RelationsBody,
)
from .service import Engine
from .validation import Unsupported

log = logging.getLogger("llmrec.server")
PAGE_HEADERS = {"x-frame-options": "DENY", "content-security-policy": "frame-ancestors 'none'",
                "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
MAX_BODY = 1 << 20
BODY_TIMEOUT = 10.0      # seconds for a whole request body to arrive
MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 10.0    # seconds for a request line and headers to arrive


def _default(o):
    try:
        return json_default(o)
    except TypeError:
        return str(o)


def _json(obj, status: int = 200) -> Response:
    """Faster than FastAPI's jsonable_encoder, and numpy-safe. ``nosniff``: a title holding HTML is never
    rendered as a page."""
    return Response(json.dumps(obj, ensure_ascii=False, default=_default, allow_nan=False).encode(),
                    status_code=status, media_type="application/json",
                    headers={"x-content-type-options": "nosniff"})


def _error(status: int, message: str, field: str | None = None, **extra) -> Response:
    return _json({"error": message, "field": field, **extra}, status)


def _refusal(status: int, message: str, field: str) -> Response:
    """An error sent before the body was read: the connection is closed, not left to the unread body."""
    r = _error(status, message, field)
    r.headers["connection"] = "close"
    return r


class BodyGuard:
    """ASGI middleware: a request body must be at most ``max_bytes`` (413, by Content-Length or counted when
    chunked) and arrive whole within ``timeout`` seconds (408, and the connection is closed): a client that
    stalls half-way holds a connection no longer than that."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
            return await _refusal(415, "content-encoding is not supported: send the body uncompressed",
                                  "content-encoding")(scope, receive, send)
        te = headers.get(b"transfer-encoding")
        if te is not None and te.strip().lower() != b"chunked":  # httptools undoes chunked only
            return await _refusal(400, "transfer-encoding: only chunked is supported", "transfer-encoding"
                                  )(scope, receive, send)
        cl = headers.get(b"content-length")
        if cl is not None and (not cl.isdigit() or int(cl) > self.max):
            return await _refusal(413, f"request body over {self.max} bytes", "body")(scope, receive, send)
        if cl is None and b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)  # no body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                r = _error(408, f"request body not received within {self.timeout:g} s", "body")
                r.headers["connection"] = "close"
                return await r(scope, receive, send)
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.max:
                r = _error(413, f"request body over {self.max} bytes", "body")
                r.headers["connection"] = "close"
                return await r(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


def host_name(value: str) -> str | None:
    """The name a Host header (or an allowed host) names: lower-case, without its port, its trailing dot
    or an IPv6 address's brackets (``[::1]:8000`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``); None
    when it is not a host name."""
    v = value.strip().lower()
    if v.startswith("["):
        name, bracket, port = v[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
    elif v.count(":") > 1:  # a bare IPv6 address (an allowed host; a Host header puts it in brackets)
        name = v
    else:
        name, colon, port = v.partition(":")
        if colon and not port.isdigit():
            return None
    name = name[:-1] if name.endswith(".") else name
    return name if name and not any(c in name for c in " ,/@\\") else None


class HostGuard:
    """ASGI middleware: answer only requests whose one Host header names an allowed host (DNS rebinding);
    others get 400. Names compare as ``host_name`` writes them (case, port, trailing dot, IPv6 brackets)."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.any = "*" in allowed_hosts
        self.allowed = {n for n in map(host_name, allowed_hosts) if n and not n.startswith("*.")}
        self.suffixes = tuple(n[1:] for n in map(host_name, allowed_hosts) if n and n.startswith("*."))

    def allows(self, name: str | None) -> bool:
        """``name`` is allowed, or is a subdomain of a ``*.example.com`` pattern."""
        return name is not None and (name in self.allowed or name.endswith(self.suffixes))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any:
            return await self.app(scope, receive, send)
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        name = host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
        if not self.allows(name):
            why = "send one Host header" if len(hosts) != 1 else "this server does not answer that Host name"
            return await _refusal(400, f"invalid Host header: {why}", "host")(scope, receive, send)
        return await self.app(scope, receive, send)


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET (RFC 9110: a server supports both); the server sends the
    head without the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        return await self.app(scope, receive, send)


class _Batcher:
    """Concurrent /recommend calls for users or histories, answered by one ``Engine.recommend_many`` call on
    a scoring thread: the requests parsed in one turn of the event loop are scored together (one matrix
    product instead of one per request), and those that arrive while a batch is being scored form the next
    one. The event loop never waits for the model: it only hands batches over and answers."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: list[tuple[dict, asyncio.Future]] = []
        self.busy = False
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmrec-score")

    async def submit(self, query: dict) -> dict:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((query, fut))
        if not self.busy:
            self.busy = True
            loop.call_soon(self._flush, loop)
        return await fut

    def _flush(self, loop) -> None:
        batch, self.pending = self.pending, []
        job = loop.run_in_executor(self.pool, self.engine.recommend_many, [q for q, _ in batch])
        job.add_done_callback(lambda j: self._answer(loop, batch, j))

    def _answer(self, loop, batch, job) -> None:
        try:
            results = job.result()
        except Exception as e:  # noqa: BLE001 - a bug: every waiting request gets it (as a 500)
            results = [e] * len(batch)
        for (_, fut), r in zip(batch, results):
            if fut.done():  # the client went away
                continue
            if isinstance(r, Exception):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        if self.pending:
            loop.call_soon(self._flush, loop)
        else:
            self.busy = False


def check_access(api_key: str | None, protect_reads: bool, public_user_data: bool) -> None:
    """Refuse access settings that would not do what they say."""
    if api_key is not None and (api_key != api_key.strip() or any(c < " " or c == "\x7f" for c in api_key)):
        raise LLMRecError("the API key (LLMREC_API_KEY) starts or ends with whitespace or holds a control "
                          "character: no client could send it in a header")
    if api_key is not None and not api_key.isascii():
        try:
            api_key.encode("utf-8")
        except UnicodeEncodeError:  # bytes of the environment that are not UTF-8 (surrogate-escaped)
            raise LLMRecError("the API key (LLMREC_API_KEY) is not valid UTF-8") from None
    if protect_reads and not api_key:
        raise LLMRecError("--protect-reads needs an API key (set LLMREC_API_KEY): without one every read "
                          "would stay open")
    if protect_reads and public_user_data:
        raise LLMRecError("--protect-reads and --public-user-data contradict each other: pick one")


def create_app(engine: Engine, *, api_key: str | None = None, insecure: bool = False,
               protect_reads: bool = False, public_user_data: bool = False,
               allowed_hosts: list[str] | None = None, max_body: int = MAX_BODY,
               body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The service app (see the module doc for who may do what). ``allowed_hosts``: the Host names to
    answer (None answers any; ``llmrec serve`` always passes a list)."""
    check_access(api_key, protect_reads, public_user_data)
    app = FastAPI(title="llmrec", version=__version__,
                  description="Recommendations made by language models, with a durable feedback loop.")
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyGuard, max_bytes=max_body, timeout=body_timeout)
    if allowed_hosts is not None:
        app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)
    app.state.engine = engine
    batcher = _Batcher(engine)
    writes = "key" if api_key else ("open" if insecure else "disabled")
    reads = "key" if protect_reads else "open"
    user_data = "key" if api_key and not public_user_data else ("public" if public_user_data else "closed")

    def check_key(request: Request) -> None:
        if not api_key:
            return
        auths = request.headers.getlist("authorization")
        if len(auths) > 1:  # which one counts would depend on who reads it (a proxy, this server)
            raise _AuthError(400, "more than one Authorization header: send one")
        scheme, _, token = (auths[0] if auths else "").strip().partition(" ")
        # Header values arrive as bytes (Starlette decodes them as Latin-1): a key with non-ASCII
        # characters is compared as the UTF-8 bytes a client sends.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"),
                                                                 api_key.encode("utf-8")):
            raise _AuthError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")

    async def write_guard(request: Request) -> None:  # async: no thread hop per request
        if not api_key and not insecure:
            raise _AuthError(403, "writes are disabled: set LLMREC_API_KEY (and send it as "
                                  "'Authorization: Bearer KEY') or start the server with --insecure")
        check_key(request)

    async def read_guard(request: Request) -> None:
        check_key(request)

    def check_user_data(request: Request) -> None:
        if public_user_data:
            return
        if not api_key:
            raise _AuthError(403, "user data is closed: set LLMREC_API_KEY (and send it as 'Authorization: "
                                  "Bearer KEY') or start the server with --public-user-data")
        check_key(request)

    async def user_guard(request: Request) -> None:
        check_user_data(request)

    Write = [Depends(write_guard)]
    Read = [Depends(read_guard)] if protect_reads else []
    UserData = [Depends(user_guard)]

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
        ct = request.headers.get("content-type", "")
        if first.get("loc", ())[:1] == ("body",) and not _is_json(ct):  # the body was not read as JSON
            return _error(415, f"body: send JSON with 'content-type: application/json' (got "
                               f"{ct or 'no content-type'})", "content-type")
        if first.get("type") == "json_invalid":  # loc is (body, character position)
            pos = first.get("loc", ("body", "?"))[-1]
            return _error(422, f"body: invalid JSON at character {pos}", "body")
        field = _field(first.get("loc", ()))
        detail = [{"field": _field(er.get("loc", ())), "message": er.get("msg", "")} for er in errs[:10]]
        return _error(422, f"{field}: {first.get('msg', 'invalid request')}", field, detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        if e.status_code == 400:  # FastAPI could not decode the body (e.g. not UTF-8)
            return _error(400, f"body: could not be read as JSON ({e.detail}); send UTF-8 JSON", "body")
        r = _error(e.status_code, str(e.detail))
        r.headers.update(e.headers or {})  # e.g. a 405's Allow
        return r

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request, e: StoreUnavailable):  # nothing was stored: the client may retry
        r = _error(503, str(e), "store")
        r.headers["retry-after"] = "1"
        return r

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
    # Ids in paths take any character an id may hold, "/" included (percent-encoded): {name:path}.
    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        # never inside another site's frame (a click there would be a like or a dislike: clickjacking)
        return HTMLResponse(resources.files("llmrec.web").joinpath("index.html").read_text("utf-8"),
                            headers=PAGE_HEADERS)

    @app.get("/health")
    def health(request: Request) -> dict:
        """Status and who may do what; with ``protect_reads``, the model, its source and the counts only
        with the key."""
        access = {"writes": writes, "reads": reads, "user_data": user_data, "version": __version__}
        if protect_reads:
            try:
                check_key(request)
            except _AuthError:
                return {"status": "ok", **access}
        return {**engine.health(), **access}

    @app.post("/recommend", response_model=RecommendOut, dependencies=Read)
    async def recommend(req: RecommendIn, request: Request) -> Response:
        """Top-k for a `user_id` (user data: needs the key unless the data is public), a `history` (item
        ids) or a free `text`; the same `{"items": [...]}` shape as `llmrec recommend --json`."""
        if req.user_id is not None:
            check_user_data(request)
        query = dict(user_id=req.user_id, history=req.history, text=req.text, k=req.k, filters=req.filters,
                     exclude=req.exclude, exclude_seen=req.exclude_seen, explain=req.explain,
                     diversity=req.diversity)
        # Encoding a text (a language model) and explaining take milliseconds: the thread pool. Scoring a
        # user or a history takes a fraction of one: batched with the requests that arrived at the same time.
        if req.text is not None or req.explain:
            return _json(await run_in_threadpool(lambda: engine.recommend(**query)))
        return _json(await batcher.submit(query))

    @app.get("/items/{item_id:path}", dependencies=Read)
    def get_item(item_id: PathId) -> Response:
        return _json(engine.item(item_id))

    @app.put("/items/{item_id:path}", dependencies=Write)
    def put_item(item_id: PathId, item: ItemIn) -> Response:
        """Add an item or replace it by its text (fields not given are emptied); recommendable on the next
        call."""
        return _json(engine.upsert_item(item_id, item.model_dump(exclude_none=True)))

    @app.patch("/items/{item_id:path}", dependencies=Write)
    def patch_item(item_id: PathId, item: ItemIn) -> Response:
        """Change the fields given (null empties one), keep the others."""
        return _json(engine.upsert_item(item_id, item.model_dump(exclude_unset=True), merge=True))

    @app.get("/users", dependencies=UserData)
    def list_users(limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                   offset: Annotated[int, Query(ge=0)] = 0) -> dict:
        return {"users": engine.user_ids(limit, offset)}

    @app.get("/users/{user_id:path}/history", dependencies=UserData)
    def get_history(user_id: PathId) -> Response:
        return _json(engine.history(user_id))

    @app.get("/users/{user_id:path}/events", dependencies=UserData)
    def get_events(user_id: PathId) -> Response:
        return _json(engine.events(user_id))

    @app.get("/users/{user_id:path}/relations", dependencies=UserData)
    def get_relations(user_id: PathId) -> Response:
        return _json(engine.relations(user_id))

    @app.put("/users/{user_id:path}/relations", dependencies=[*Write, *UserData])
    def put_relations(user_id: PathId, body: Annotated[RelationsBody, Body(description=RELATIONS_DOC,
                                                                          examples=[["196", "186"]])]) -> Response:
        """Replace whom the user is related to (follows, friends, household). Stored durably; while the
        user has no history, the next `/recommend` for them answers from these people's histories."""
        return _json(engine.set_relations(user_id, body))

    @app.delete("/users/{user_id:path}", dependencies=Write)
    def delete_user(user_id: PathId) -> Response:
        """Forget a user and all their events. 200 when no copy is left on disk; 202 while another reader
        of the database delays the erasure (`erased: false`; `/health` says `erasure_pending` until done)."""
        out = engine.delete_user(user_id)
        return _json(out, 200 if out["erased"] else 202)

    @app.post("/events", dependencies=Write)
    def post_events(body: Annotated[EventsBody, Body(description=EVENTS_DOC, examples=[EVENT_EXAMPLE])]
                    ) -> Response:
        """Feedback: one event, a list, or `{"events": [...]}`. Stored durably before the answer; the next
        `/recommend` reflects it. Values and timestamps are checked by the engine, which names the field."""
        events = body.events if isinstance(body, EventsIn) else body if isinstance(body, list) else [body]
        return _json(engine.add_events([e.model_dump() for e in events]))

    @app.post("/retrain", dependencies=Write)
    def retrain() -> Response:
        """Fit the same kind of model on everything known now (stored events folded in) and serve it."""
        return _json(engine.retrain())

    return app


def _is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this content type as JSON (``application/json`` or ``+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


_EVENT_TAGS = {"one": "event", "list": "events", "wrapped": None}


def _field(loc) -> str:
    """A validation error's location as the field name the engine would use: ``history[0]``,
    ``filters.genres``, ``events[3].user_id``; union member tags left out."""
    parts: list[str] = []
    for x in loc:
        if x in ("body", "query", "path") and not parts:
            continue
        if isinstance(x, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{x}]"]
        elif x in _EVENT_TAGS:
            if _EVENT_TAGS[x]:
                parts.append(_EVENT_TAGS[x])
        elif isinstance(x, str) and (x in ("str", "int", "float", "bool", "dict", "list") or "[" in x):
            continue  # a union member's type tag
        else:
            parts.append(str(x))
    return ".".join(parts) or "body"


class _AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def serve_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *,
                 max_header_bytes: int = MAX_HEADER_BYTES, header_timeout: float = HEADER_TIMEOUT):
    """The uvicorn config ``run`` serves with: asyncio's loop, httptools with the request head bounded
    (431 past ``max_header_bytes``, the connection closed after ``header_timeout`` seconds without a
    complete head)."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHead(HttpToolsProtocol):
        """httptools buffers a request head of any size; this one counts it as it arrives."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = None
            self._open_head()

        def _open_head(self) -> None:
            self._head_bytes, self._in_head, self._tail = 0, True, b""
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def _head_late(self) -> None:
            if self._in_head and not self.transport.is_closing():
                self._refuse(408, b"request head not received in time")

        def _refuse(self, status: int, msg: bytes, field: str = "head") -> None:
            """Answer with the same JSON error as the app's (``{"error", "field"}``) and close."""
            reason = {400: b"Bad Request", 408: b"Request Timeout",
                      431: b"Request Header Fields Too Large"}[status]
            body = json.dumps({"error": msg.decode(), "field": field}).encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, reason, len(body), body))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:  # a request httptools cannot parse
            self._refuse(400, b"not a valid HTTP/1.1 request: " + msg.encode("ascii", "replace"), "request")

        def data_received(self, data: bytes) -> None:
            if not self._in_head and (self.cycle is None or (self.cycle.response_complete
                                                             and not self.cycle.more_body)):
                # bytes after an answer start the next head, timed from here: blank lines (which the
                # parser skips without starting a request) cannot hold the connection open
                self._open_head()
            if self._in_head:  # count the head's bytes only: a chunk may carry the body too
                seen = self._tail + data
                end = seen.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                self._tail = seen[-3:]
                if self._head_bytes > max_header_bytes:
                    self._refuse(431, b"request head over %d bytes" % max_header_bytes)
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_head:  # the next request on a kept-alive connection
                self._open_head()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_timer.cancel()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

    # asyncio's own loop, not uvloop: with handlers that hold the loop, uvloop serves the waiting
    # connections unevenly (measured: p99 85 ms under uvloop, 18 ms under asyncio, same throughput).
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, loop="asyncio",
                          http=BoundedHead)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, sock=None) -> None:
    """Serve ``app`` with uvicorn (one process; ``sock``: a listening socket shared with other processes,
    as ``llmrec serve --workers N`` passes)."""
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
    uvicorn.Server(serve_config(app, host, port)).run(sockets=None if sock is None else [sock])
