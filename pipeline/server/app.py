"""The HTTP API and the web page: FastAPI over one Clipdex, the model loaded once per process.

Security: the server answers only with files that are in the collection, addressed by id, and only
while each is still the regular file ingest indexed (pipeline.server.files); a token, when set, is
required on every request (header ``Authorization: Bearer T`` or ``?token=T`` for image URLs);
request bodies, uploads, their pixels and texts are capped (pipeline.server.limits); thumbnails
are cached in a folder only this user can read (pipeline.server.thumbnails).

The model is used only through a Batcher (pipeline.server.batching): concurrent embeds and searches
share forward passes, and a full queue is a 503 with Retry-After, never a growing backlog.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from models import ModelError
from pipeline.config import TARGETS
from pipeline.errors import BadOption, ClipdexError
from pipeline.ingest.decode import FORMATS, DecodeFailed, decode_bytes
from pipeline.ingest.sources import is_uri, read_bytes
from pipeline.library import Clipdex
from pipeline.server.batching import Batcher, QueueFull, Stopped
from pipeline.server.files import MEDIA_TYPES, check_indexed, chunks, media_type, open_indexed, read_indexed
from pipeline.server.limits import (
    DEFAULT_MAX_UPLOAD,
    GRACEFUL_SHUTDOWN_S,
    KEEP_ALIVE_S,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_QUEUED,
    MAX_TEXT_CHARS,
    MAX_UPLOAD_PIXELS,
    MAX_WHERE_CHARS,
    BodyLimit,
    too_large,
)
from pipeline.server.thumbnails import THUMBNAIL_SIZES, ThumbnailCache, default_folder, make_thumbnail
from pipeline.shapes import hit_dict, stats_dict
from storage import BadFilter, ImageRecord, StorageError

PAGE_HEADERS = {
    # The page is one file with inline script and style; it fetches only this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ERRORS = {
    400: "A bad request (filter, upload, size); the detail says what to change",
    401: "A token is required (when the server has one)",
    404: "No image with this id",
    410: "The stored file is gone or changed since ingest; run clipdex ingest",
    413: "The request body, upload or its pixels are over the cap",
    503: "The collection or model cannot be used now (another model's vectors, a storage error, the model's "
    "queue full: then Retry-After says when to try again)",
}
MAX_NAME_CHARS = 200  # of an upload's file name, in messages
TOKEN_COOKIE = "clipdex_token"  # set when the page is opened as /?token=T: HttpOnly, SameSite=Strict
PAGES = ("/", "/docs")  # opened in a browser: /?token=T sets the cookie and drops the token from the URL
ORIGINAL_TYPES = sorted({*MEDIA_TYPES.values(), "application/octet-stream"})

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "MAX_TEXT_CHARS",
    "MAX_UPLOAD_PIXELS",
    "THUMBNAIL_SIZES",
    "create_app",
    "serve",
]


class TextIn(BaseModel):
    """A text to embed."""

    text: str = Field(max_length=MAX_TEXT_CHARS, description=f"at most {MAX_TEXT_CHARS} characters")


class ErrorOut(BaseModel):
    """Every error but a validation error (422): one line saying what is wrong and what to do."""

    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": ERRORS[code], "model": ErrorOut} for code in codes}


def create_app(
    lib: Clipdex,
    *,
    token: str | None = None,
    thumbnails: Path | None = None,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    max_queued: int = MAX_QUEUED,
) -> FastAPI:
    """The FastAPI app serving one collection.

    thumbnails: the cache folder (default: the user's cache folder, one per collection), made 0o700.
    max_queued: images and texts waiting for the model; one more is a 503 with Retry-After.
    Raises BadOption for an empty token.
    """
    if token is not None and (not token.strip() or token != token.strip()):
        raise BadOption("--token is empty or has spaces around it; give a token like $(openssl rand -hex 16)")
    # Started here, not at startup: an app used without its lifespan (a bare TestClient) works too.
    batcher = Batcher(lib.encoder, max_queued)
    batcher.start()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(title="clipdex", summary="Search your own images by meaning.", version="0.1.0", lifespan=lifespan)
    app.state.batcher = batcher
    cache = ThumbnailCache(thumbnails or default_folder(_digest(lib.collection.uri)))
    upload_pixels = min(lib.settings.max_pixels, MAX_UPLOAD_PIXELS)
    app.add_middleware(BodyLimit, max_upload=max_upload)

    @app.middleware("http")  # added last, so it runs first: no work at all for a stranger
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is not None and not hmac.compare_digest(_presented(request).encode(), token.encode()):
            return JSONResponse(
                {"detail": "a token is required: Authorization: Bearer ..., or open the page once as /?token=..."},
                401,
                headers={"WWW-Authenticate": "Bearer", "X-Content-Type-Options": "nosniff"},
            )
        if token is not None and request.url.path in PAGES and "token" in request.query_params:
            # The page's own requests (images, fetches) then carry the token in a cookie, never in a
            # URL that scripts, logs and Referer headers could see.
            to_page = RedirectResponse(request.url.path, 303)
            to_page.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return to_page
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer repeats each bad value: a 10 MB text would come back as 10 MB.
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(ClipdexError)
    @app.exception_handler(BadFilter)
    def bad_request(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 400)

    @app.exception_handler(StorageError)
    @app.exception_handler(ModelError)
    def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503)

    @app.exception_handler(QueueFull)
    @app.exception_handler(Stopped)
    def busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if not lib.collection.is_current():  # `clipdex reembed` switched models under this server
            detail = f"{lib.collection.uri} now holds another model's vectors; restart clipdex serve"
            return JSONResponse({"detail": detail}, 503)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = resources.files("pipeline.server").joinpath("web", "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @app.get("/api/info", summary="Counts, model and location of the collection", responses=_errors(401, 503))
    def info() -> dict[str, Any]:
        return stats_dict(lib.stats())

    @app.get("/api/search", summary="Images that match a text, best first", responses=_errors(400, 401, 503))
    async def search(
        q: Annotated[str, Query(description="the text", min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")],
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: Annotated[str | None, Query(max_length=MAX_WHERE_CHARS)] = None,
        target: Annotated[str, Query(pattern="^(" + "|".join(TARGETS) + ")$")] = "image",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        vector = await batcher.embed_text(q)
        hits = await run_in_threadpool(lib.search_vector, vector, k=k, where=where, min_score=min_score, target=target)
        return _hits(hits, started)

    @app.post(
        "/api/similar",
        summary="Images like an uploaded image, best first",
        responses=_errors(400, 401, 413, 503),
    )
    async def similar_upload(
        file: Annotated[UploadFile, File(description="an image file")],
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: Annotated[str | None, Query(max_length=MAX_WHERE_CHARS)] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        vector = await _embed_upload(file)
        hits = await run_in_threadpool(lib.search_vector, vector, k=k, where=where, min_score=min_score)
        return _hits(hits, started)

    @app.get(
        "/api/similar/{image_id}",
        summary="Images like a stored image (itself left out)",
        responses=_errors(400, 401, 404, 503),
    )
    def similar_id(
        image_id: str,
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: Annotated[str | None, Query(max_length=MAX_WHERE_CHARS)] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if lib.collection.get(image_id, vectors=False) is None:
            raise HTTPException(404, f"no image with id {image_id}")
        return _hits(lib.similar_to(image_id, k=k, where=where, min_score=min_score), started)

    @app.post("/api/embed/text", summary="The vector of a text", responses=_errors(401, 413, 503))
    async def embed_text(body: TextIn) -> dict[str, Any]:
        vector = await batcher.embed_text(body.text)  # a text over MAX_TEXT_CHARS is a 422 before this
        return {"vector": [round(float(x), 7) for x in vector], "model": lib.encoder.fingerprint.label}

    @app.post("/api/embed/image", summary="The vector of an uploaded image", responses=_errors(400, 401, 413, 503))
    async def embed_image(file: Annotated[UploadFile, File(description="an image file")]) -> dict[str, Any]:
        vector = await _embed_upload(file)
        return {"vector": [round(float(x), 7) for x in vector], "model": lib.encoder.fingerprint.label}

    @app.get(
        "/api/images/{image_id}/thumbnail",
        summary="A JPEG thumbnail, made on first request",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG"}, **_errors(400, 401, 404, 410, 503)},
    )
    def thumbnail(image_id: str, size: Annotated[int, Query(description="128, 256 or 512")] = 256) -> Response:
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        record = _record(image_id)
        local = not is_uri(record.path)
        if local:
            check_indexed(record)  # a cached thumbnail too is sent only while its file is the one indexed
        data = cache.cached(record, size)
        if data is None:
            data = _thumbnail_of(record, size, lib.settings.max_pixels)
            cache.store(record, size, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get(
        "/api/images/{image_id}",
        summary="The original image file, typed by its decoded format",
        response_class=Response,
        responses={
            200: {"content": {kind: {} for kind in ORIGINAL_TYPES}, "description": "the file's bytes"},
            **_errors(401, 404, 410, 503),
        },
    )
    def original(image_id: str) -> Response:
        record = _record(image_id)
        media = media_type(record.format)
        if is_uri(record.path):  # on object storage: read it through, no local file to send
            try:
                return Response(read_bytes(record.path), media_type=media)
            except OSError as exc:
                raise HTTPException(410, f"{record.path} cannot be read any more ({exc}); run clipdex ingest") from exc
        file, size = open_indexed(record)
        return StreamingResponse(chunks(file, size), media_type=media, headers={"Content-Length": str(size)})

    def _record(image_id: str) -> ImageRecord:
        record = lib.collection.get(image_id, vectors=False)  # its file's facts: no vectors read
        if record is None:
            raise HTTPException(404, f"no image with id {image_id}")
        return record

    async def _embed_upload(file: UploadFile) -> np.ndarray:
        """Read and decode an upload in a worker thread, then embed it in a batch with the others."""
        batcher.check_room()  # a busy model: refuse before decoding
        data = await _read_upload(file, max_upload)
        pixels = await run_in_threadpool(_decode_upload, data, _upload_name(file))
        return await batcher.embed_pixels(pixels)

    def _decode_upload(data: bytes, name: str) -> np.ndarray:
        """The pixels of an upload, as ingest decodes a file: in a worker thread, never on the event loop."""
        _check_pixels(name, data, upload_pixels)
        result = decode_bytes(name, data, lib.encoder.transform, upload_pixels)
        if isinstance(result, DecodeFailed) or result.pixels is None:
            reason = result.reason if isinstance(result, DecodeFailed) else "no pixels"
            raise HTTPException(400, f"{name}: {reason}")
        return result.pixels

    return app


def _presented(request: Request) -> str:
    """The token a request carries: the credentials of an Authorization: Bearer header, else the
    page's cookie, else ?token= (which only the first visit to the page should need)."""
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""  # RFC 7235: the scheme is case-blind
    return bearer or request.cookies.get(TOKEN_COOKIE, "") or request.query_params.get("token", "")


def _upload_name(file: UploadFile) -> str:
    """The client's name for an upload, as one short line for messages."""
    return " ".join((file.filename or "").split())[:MAX_NAME_CHARS] or "upload"


def _hits(hits: list[Any], started: float) -> dict[str, Any]:
    return {"hits": [hit_dict(h) for h in hits], "took_ms": round((time.perf_counter() - started) * 1000, 1)}


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, too_large(limit))
    if not data:
        raise HTTPException(400, "the upload is empty; send an image file")
    return data


def _check_pixels(name: str, data: bytes, cap: int) -> None:
    """A 413 for an upload whose header claims more pixels than the cap (decode_bytes checks again)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
    except Exception:  # not an image, or not one Pillow opens: decode_bytes says which
        return
    if width * height > cap:
        raise HTTPException(
            413,
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} MP, over the {cap / 1e6:g} MP cap for "
            "uploads; send a smaller image",
        )


def _thumbnail_of(record: ImageRecord, size: int, max_pixels: int) -> bytes:
    """A new thumbnail of a stored image, from bytes read through the checks of pipeline.server.files."""
    try:
        data = read_bytes(record.path) if is_uri(record.path) else read_indexed(record)
        return make_thumbnail(record.path, data, size, max_pixels)
    except HTTPException:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(410, f"{record.path} cannot be read any more ({exc}); run clipdex ingest") from exc


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def serve(lib: Clipdex, host: str, port: int, token: str | None) -> None:
    """Run the server until interrupted (the CLI checks the token rule before calling this)."""
    uvicorn.run(
        create_app(lib, token=token),
        host=host,
        port=port,
        log_level="warning",
        http="h11",  # the header cap below is h11's
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
