"""The labelling web app: FastAPI on uvicorn (why FastAPI: docs/label.md, "Web stack").

Routes (the contract with the page: notes in docs/label.md, "HTTP API"):
    GET  /  /admin  /static/...           the page, every asset served from the package
    GET  /api/me                          {"name", "done", "queue"}
    GET  /api/tasks/next                  200 the task as shown to this annotator | 204 empty
    POST /api/judgments                   201 {"judgment_id"} | 200 the same again | 422 | 409
    POST /api/tasks/{task_id}/skip        200
    GET  /api/admin/summary[?tag=PREFIX]  progress, agreement, per-annotator table
    POST /api/admin/annotators            201 {"name", "token", "link"}
    POST /api/admin/annotators/{name}/disable | /enable
    GET  /api/admin/export?format=ranked|pairs[&keep_all_bad=true]   JSONL download
    GET  /api/admin/leaderboard[?tag=PREFIX&bootstrap=N]  rows as `label leaderboard --json`

Security: ``Authorization: Bearer <token>``; no or an unknown token → 401, a disabled
annotator → 403, an annotator token on an admin route (or the admin token on an annotator
route) → 403. Only token hashes are stored. Bodies over ``max_body_bytes`` → 413 before they
are parsed. Handlers are plain ``def`` (FastAPI runs them in its thread pool): the store is
synchronous SQLAlchemy. Tests: tests/label/test_app.py.
"""
from __future__ import annotations

import contextlib
import gc
import hmac
import os
import time
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError

from rlhfkit.label import queue
from rlhfkit.label.export import FORMATS, export_lines, summary
from rlhfkit.label.store import (
    StoreError,
    add_annotator,
    hash_token,
    open_store,
    set_annotator_active,
)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024
TOKEN_TTL = 2.0
# store threads per server process by default (docs/label.md, "Measured"): on SQLite the
# submits and leases waiting in them share commits (store.Store.write: group commit);
# PostgreSQL overlaps its round trips
STORE_THREADS = {"sqlite": 16, "postgresql": 4}


class JudgmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: int
    ranks: list[int] = Field(min_length=2, max_length=64)
    flags: list[str] = Field(default_factory=list, max_length=8)
    comment: str = Field(default="", max_length=queue.MAX_COMMENT)
    seconds: float | None = Field(default=None, ge=0)


class AnnotatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by Content-Length or as it streams."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await JSONResponse({"detail": f"request body over {self.limit} bytes"},
                                      413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


async def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def app_from_env() -> FastAPI:
    """The app `label serve --workers N` starts in each worker process (uvicorn imports it by
    name): settings come from RLHFKIT_LABEL_* variables set by `serve`."""
    env = os.environ
    app = create_app(env["RLHFKIT_LABEL_DB"], env.get("RLHFKIT_LABEL_ADMIN_TOKEN") or None,
                     max_body_bytes=int(env.get("RLHFKIT_LABEL_MAX_BODY", MAX_BODY_BYTES)),
                     store_threads=int(env.get("RLHFKIT_LABEL_STORE_THREADS") or 0) or None)
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """In a server process, once its app is built: what it holds then (modules, the app, the
    tables) lives as long as the process, so keep it out of the garbage collector's full
    collections (``gc.freeze``), which otherwise walk all of it with every thread stopped —
    40–90 ms each in the bench (docs/label.md, schema 5), on the submits' p99. Not called
    where apps come and go (tests): what it freezes is never collected."""
    gc.collect()
    gc.freeze()


def create_app(db_url: str, admin_token: str | None = None, base_url: str = "",
               max_body_bytes: int = MAX_BODY_BYTES, store_threads: int | None = None
               ) -> FastAPI:
    """The app over the store at ``db_url``. ``admin_token`` None: the admin token is the one
    `rlhfkit label init` printed (its hash is in the store). ``base_url`` prefixes the login
    links the admin API hands out (default: the address the request came to)."""
    store = open_store(db_url)
    with store.engine.connect() as conn:
        admin_hash = hash_token(admin_token) if admin_token else store.get_meta(
            conn, "admin_token_hash")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = FastAPI(title="rlhfkit label", version="1", lifespan=lifespan,
                  description="Rank model responses; the judgments train `rlhfkit rm`/`dpo`.")
    app.state.store = store
    app.state.store_threads = store_threads or STORE_THREADS[store.engine.dialect.name]
    # the connections the store threads will use, opened before the first request (not
    # while it waits): docs/label.md, "Start-up"
    store.open_connections(app.state.store_threads)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    annotator, admin, forget = _auth(store, admin_hash)
    _add_pages(app)
    _add_annotator_routes(app, store, annotator)
    _add_admin_routes(app, store, admin, forget, base_url)
    return app


def _auth(store, admin_hash: str | None):
    """The token checks the handlers call: ``annotator(token)`` → the active annotator (else
    401/403), ``admin(token)`` → None (else 401/403), and ``forget()``, which empties the token
    cache (called when an annotator is disabled or enabled)."""

    def is_admin(token: str) -> bool:
        return admin_hash is not None and hmac.compare_digest(hash_token(token), admin_hash)

    known: dict[str, tuple[float, queue.Annotator | None]] = {}  # token hash → (when, who)

    def lookup(token: str) -> queue.Annotator | None:
        """Token → annotator, remembered for TOKEN_TTL seconds (a disable through this app
        forgets at once; through the CLI it takes effect within TOKEN_TTL)."""
        digest, now = hash_token(token), time.monotonic()
        hit = known.get(digest)
        if hit is None or now - hit[0] > TOKEN_TTL:
            if len(known) > 10_000:
                known.clear()
            hit = known[digest] = now, queue.annotator_by_token_hash(store, digest)
        return hit[1]

    def annotator(token: str) -> queue.Annotator:
        """Called inside each handler (one trip to the thread pool per request, not two)."""
        if is_admin(token):
            raise HTTPException(403, "the admin token is not an annotator's")
        found = lookup(token)
        if found is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        if not found.active:
            raise HTTPException(403, f"annotator {found.name!r} is disabled")
        return found

    def admin(token: str) -> None:
        if is_admin(token):
            return
        if lookup(token) is not None:
            raise HTTPException(403, "admin only")
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})

    return annotator, admin, known.clear


def _refused(err: queue.QueueError):
    return JSONResponse({"detail": str(err)}, err.status)


def _page(name: str):
    path = STATIC / name
    if not path.exists():
        raise HTTPException(404, f"{name} is not installed")
    return FileResponse(path, headers={"Cache-Control": "no-store"})


def _add_pages(app: FastAPI) -> None:
    """GET / and /admin (the pages, never cached) and /static/... (their assets)."""

    @app.get("/", include_in_schema=False)
    def index():
        return _page("index.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page():
        return _page("admin.html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_annotator_routes(app: FastAPI, store, annotator) -> None:
    """/api/me, /api/tasks/next, /api/judgments, /api/tasks/{task_id}/skip.

    The hot routes are ``async``: FastAPI parses and checks the request on the event loop and
    the store call (token look-up included) runs in a worker thread, at most ``store_threads``
    at a time (``_store_call``)."""
    limiter = anyio.CapacityLimiter(app.state.store_threads)

    async def _store_call(fn, *args):
        """``fn(*args)`` in a store thread. A pooled connection the database dropped (a
        restart) fails its first statement and SQLAlchemy renews the pool: the call runs once
        more (repeating a store call changes nothing twice: a retried submit finds its judgment)."""
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
        except DBAPIError as err:
            if not err.connection_invalidated:
                raise
            return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def progress(token: str) -> dict:
        who = annotator(token)
        with store.engine.connect() as conn:
            return {"name": who.name, "done": queue.done_count(conn, who.id),
                    "queue": queue.queue_size(conn, who.id)}

    @app.get("/api/me")
    async def me(token: str = Depends(bearer)):
        return JSONResponse(await _store_call(progress, token))

    def lease(token: str):
        return queue.next_task(store, annotator(token))

    @app.get("/api/tasks/next", responses={204: {"description": "queue empty"}})
    async def next_task(token: str = Depends(bearer)):
        task = await _store_call(lease, token)
        return Response(status_code=204) if task is None else JSONResponse(task)

    def judge(token: str, body: JudgmentIn):
        return queue.submit(store, annotator(token), body.task_id, body.ranks, body.flags,
                            body.comment, body.seconds)

    @app.post("/api/judgments", status_code=201)
    async def post_judgment(body: JudgmentIn, token: str = Depends(bearer)):
        try:
            judgment_id, created = await _store_call(judge, token, body)
        except queue.QueueError as err:
            return _refused(err)
        return JSONResponse({"judgment_id": judgment_id}, 201 if created else 200)

    def release(token: str, task_id: int):
        queue.skip(store, annotator(token), task_id)

    @app.post("/api/tasks/{task_id}/skip")
    async def skip(task_id: int, token: str = Depends(bearer)):
        try:
            await _store_call(release, token, task_id)
        except queue.QueueError as err:
            return _refused(err)
        return {"skipped": task_id}


def _add_admin_routes(app: FastAPI, store, admin, forget, base_url: str) -> None:
    """/api/admin/summary, /api/admin/annotators (add, disable, enable), /api/admin/export,
    /api/admin/leaderboard."""

    @app.get("/api/admin/summary")
    def admin_summary(tag: str | None = Query(None, max_length=100),
                      token: str = Depends(bearer)):
        """Progress, agreement and the per-annotator table (`rlhfkit label stats`); ``tag``:
        only tasks whose tag starts with it (as `label stats --tag`)."""
        admin(token)
        return summary(store, tag)

    @app.post("/api/admin/annotators", status_code=201)
    def admin_add(body: AnnotatorIn, request: Request, token: str = Depends(bearer)):
        admin(token)
        try:
            token = add_annotator(store, body.name)
        except StoreError as err:
            return JSONResponse({"detail": str(err)}, 409)
        root = base_url or str(request.base_url).rstrip("/")
        return {"name": body.name.strip(), "token": token, "link": f"{root}/?token={token}"}

    def set_active(name: str, active: bool):
        forget()
        try:
            set_annotator_active(store, name, active)
        except StoreError as err:
            return JSONResponse({"detail": str(err)}, 404)
        return {"name": name, "active": active}

    @app.post("/api/admin/annotators/{name}/disable")
    def admin_disable(name: str, token: str = Depends(bearer)):
        admin(token)
        return set_active(name, False)

    @app.post("/api/admin/annotators/{name}/enable")
    def admin_enable(name: str, token: str = Depends(bearer)):
        admin(token)
        return set_active(name, True)

    @app.get("/api/admin/export")
    def admin_export(format: str = "ranked", keep_all_bad: bool = False,
                     token: str = Depends(bearer)):
        admin(token)
        if format not in FORMATS:
            return JSONResponse({"detail": f"format: expected one of {list(FORMATS)}"}, 422)
        return Response("".join(export_lines(store, format, keep_all_bad)),
                        media_type="application/x-ndjson", headers={
                            "Content-Disposition": f'attachment; filename="{format}.jsonl"'})

    @app.get("/api/admin/leaderboard")
    def admin_leaderboard(tag: str | None = Query(None, max_length=100),
                          bootstrap: int = Query(1000, ge=0, le=10_000),
                          token: str = Depends(bearer)):
        """The rows of `rlhfkit label leaderboard --json` (best first): Bradley–Terry ratings
        of the models whose candidates were ranked, ``tag``: only tasks whose tag starts with
        it; ``bootstrap``: resamples for the 95% intervals (0: none)."""
        admin(token)
        # imported here: the fit needs torch, which the serving routes never load
        from rlhfkit.label.leaderboard import leaderboard

        return leaderboard(store, tag, n=bootstrap)
