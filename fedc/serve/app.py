"""The HTTP layer: a Starlette app over a Coordinator (API under /api/v1, the bundle at /).

Request handlers only authenticate, read bounded bodies and translate errors; the coordinator
(a worker thread, one lock) decides. Every refusal is a 4xx JSON object
``{"error": code, "reason": text}`` (docs/protocol.md lists the codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .protocol import CONTENT_TYPE, MAX_META, ProtocolError
from .rounds import Coordinator

log = logging.getLogger("fedc.serve")

# ES modules and streaming Wasm compilation need these exact types
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def _error(err: ProtocolError) -> JSONResponse:
    return JSONResponse({"error": err.code, "reason": err.reason}, status_code=err.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 as the API's JSON refusal under /api/; its plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/api/"):
        return PlainTextResponse(exc.detail, exc.status_code, exc.headers)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse({"error": code, "reason": f"{request.method} {request.url.path}: "
                                                  f"{exc.detail} (docs/protocol.md lists "
                                                  f"the endpoints)"},
                        exc.status_code, exc.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over `limit` bytes before reading all of it."""
    declared = request.headers.get("content-length")
    too_big = ProtocolError(413, "too_large", f"the body is over {limit} bytes")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProtocolError(400, "truncated", "the client closed the connection mid-body") \
            from None
    return b"".join(chunks)


def build_app(coord: Coordinator, bundle_dir: Path | None, tick_seconds: float = 0.2,
              on_finished: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app; a background task ticks the round clock while it runs and calls
    `on_finished` (once) when the federation is over and its clients know it."""
    limit = 16 + MAX_META + 4 * coord.num_params + 1024

    async def auth(request: Request) -> str:
        header = request.headers.get("authorization")
        return await run_in_threadpool(coord.authenticate, header)  # type: ignore[no-any-return]

    async def join(request: Request) -> Response:
        try:
            client = await auth(request)
        except ProtocolError as err:
            return _error(err)
        return JSONResponse(await run_in_threadpool(coord.join, client))

    async def task(request: Request) -> Response:
        try:
            client = await auth(request)
        except ProtocolError as err:
            return _error(err)
        body = await run_in_threadpool(coord.task, client)
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    async def update(request: Request) -> Response:
        try:
            client = await auth(request)
            try:
                body = await _read_body(request, limit)
            except ProtocolError as err:
                raise await run_in_threadpool(coord.refuse, client, err) from None
            reply = await run_in_threadpool(coord.submit, client, body)
        except ProtocolError as err:
            return _error(err)
        return JSONResponse(reply)

    async def model(request: Request) -> Response:
        try:
            await auth(request)
        except ProtocolError as err:
            return _error(err)
        body = await run_in_threadpool(coord.model_frame)
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        with_log = request.query_params.get("log") == "1"
        return JSONResponse(await run_in_threadpool(coord.status, with_log))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def clock() -> None:
            while True:
                await asyncio.sleep(tick_seconds)
                try:
                    await run_in_threadpool(coord.tick)
                    if on_finished is not None and await run_in_threadpool(coord.finished):
                        log.info("federation finished and its clients told: stopping")
                        on_finished()
                        return
                except Exception:  # keep serving: a failed tick is retried on the next one
                    log.exception("round clock failed")

        ticker = asyncio.create_task(clock())
        try:
            yield
        finally:
            ticker.cancel()

    routes: list[Any] = [
        Route("/api/v1/join", join, methods=["POST"]),
        Route("/api/v1/task", task, methods=["GET"]),
        Route("/api/v1/update", update, methods=["POST"]),
        Route("/api/v1/model", model, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
    ]
    if bundle_dir is not None:
        routes.append(Mount("/", StaticFiles(directory=bundle_dir, html=True), name="bundle"))
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_error})
