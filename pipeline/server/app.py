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

import dataclasses
import hashlib
import hmac
import io
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from models import ModelError
from pipeline.analyse.duplicates import summarise
from pipeline.config import TARGETS
from pipeline.errors import BadOption, ClipdexError
from pipeline.ingest.decode import FORMATS, DecodeFailed, decode_bytes, thumbnail_of
from pipeline.ingest.sources import is_uri, read_bytes
from pipeline.ingest.video import frame_at
from pipeline.library import KINDS, Clipdex
from pipeline.server.batching import Batcher, QueueFull, Stopped
from pipeline.server.expression import parse_box
from pipeline.server.files import (
    MEDIA_TYPES,
    RangeNotSatisfiable,
    byte_range,
    check_indexed,
    chunks_from,
    media_type,
    open_indexed,
    read_indexed,
)
from pipeline.server.filters import Filters, parse_filters
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
from pipeline.server.overview import Overview
from pipeline.server.thumbnails import (
    THUMBNAIL_QUALITY,
    THUMBNAIL_SIZES,
    ThumbnailCache,
    default_folder,
    make_thumbnail,
)
from pipeline.shapes import hit_dict, stats_dict
from storage import BadFilter, ImageRecord, StorageError

PAGE_HEADERS = {
    # The page is one file with inline script and style; it fetches only this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self'; "
    "style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ERRORS = {
    400: "A bad request (filter, upload, size); the detail says what to change",
    401: "A token is required (when the server has one)",
    404: "No image, video or video moment with this id",
    410: "The stored file is gone or changed since ingest; run clipdex ingest",
    413: "The request body, upload or its pixels are over the cap",
    503: "The collection or model cannot be used now (another model's vectors, a storage error, the model's "
    "queue full: then Retry-After says when to try again)",
}
EXIF_MAKE, EXIF_MODEL = 0x010F, 0x0110
MAX_NAME_CHARS = 200  # of an upload's file name, in messages
TOKEN_COOKIE = "clipdex_token"  # set when the page is opened as /?token=T: HttpOnly, SameSite=Strict
PAGES = ("/", "/docs", "/map")  # opened in a browser: /?token=T sets the cookie and drops the token from the URL
ORIGINAL_TYPES = sorted({*MEDIA_TYPES.values(), "application/octet-stream"})
DOCS_SCHEMA = "/docs-openapi.json"  # /openapi.json as the bundled Swagger UI reads it (see docs_schema)
DOCS_ASSETS = "/docs-assets"  # Swagger UI's files, from the swagger-ui-bundle package: /docs works offline
# Formats every current browser shows; the rest (HEIC, TIFF, RAW) are sent as JPEG for ?format=jpeg.
BROWSER_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "AVIF"})
MAX_CONVERTED = 4096  # pixels on the longer side of an original converted to JPEG for a browser
CONVERTED_QUALITY = 90
KIND = Query(pattern="^(" + "|".join(KINDS) + ")$", description="image or video: only those")
MOMENTS = Query(description="a video hit lists its other matching moments (id, timestamp, score)")
MAX_PAGE = 200  # images or groups in one page of /api/browse and /api/duplicates
UNAUTHORIZED = (
    "a token is required: the CLI takes --token or CLIPDEX_TOKEN; other clients send Authorization: Bearer ...; "
    "a browser opens the page once as /?token=..."
)

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

    app = FastAPI(
        title="clipdex",
        summary="Search your own images by meaning.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below with assets of our own, not a CDN's
        redoc_url=None,
    )
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    overview = Overview(lib.collection)
    app.state.overview = overview
    app.state.batcher = batcher
    cache = ThumbnailCache(thumbnails or default_folder(_digest(lib.collection.uri)))
    upload_pixels = min(lib.settings.max_pixels, MAX_UPLOAD_PIXELS)
    app.add_middleware(BodyLimit, max_upload=max_upload)

    @app.middleware("http")  # added last, so it runs first: no work at all for a stranger
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is not None and not hmac.compare_digest(_presented(request).encode(), token.encode()):
            return JSONResponse(
                {"detail": UNAUTHORIZED},
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
        return JSONResponse({"detail": errors, "message": _sentence(errors)}, 422)

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
        return _web_page("index.html")

    @app.get("/map", response_class=HTMLResponse, include_in_schema=False)
    def map_page() -> HTMLResponse:
        return _web_page("map.html")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=DOCS_SCHEMA,
            title="clipdex API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )

    @app.get(DOCS_SCHEMA, include_in_schema=False)
    def docs_schema() -> dict[str, Any]:
        # swagger-ui-bundle ships Swagger UI 4, which refuses an "openapi: 3.1" document outright but
        # renders FastAPI's schema when told 3.0; /openapi.json itself stays as FastAPI writes it.
        return {**app.openapi(), "openapi": "3.0.3"}

    @app.get(
        "/api/info",
        summary="Counts, model, location and size of the collection, its roots, last ingest and indexes",
        responses=_errors(401, 503),
    )
    def info() -> dict[str, Any]:
        return stats_dict(lib.stats(), lib.details())

    @app.get("/api/search", summary="Images that match a text, best first", responses=_errors(400, 401, 503))
    async def search(
        q: Annotated[str, Query(description="the text", min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")],
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: Annotated[str | None, Query(max_length=MAX_WHERE_CHARS)] = None,
        target: Annotated[str, Query(pattern="^(" + "|".join(TARGETS) + ")$")] = "image",
        kind: Annotated[str | None, KIND] = None,
        moments: Annotated[bool, MOMENTS] = False,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        await run_in_threadpool(lib.check_request, where, target, kind)
        vector = await batcher.embed_text(q)
        hits = await run_in_threadpool(
            lib.search_vector, vector, k=k, where=where, min_score=min_score, target=target, kind=kind, moments=moments
        )
        return _hits(hits, started)

    @app.post(
        "/api/similar",
        summary="Images like an uploaded image, best first",
        responses=_errors(400, 401, 413, 503),
    )
    async def similar_upload(
        file: Annotated[UploadFile, File(description="an image file")],
        narrowed: Narrowed,
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: Annotated[str | None, Query(max_length=MAX_WHERE_CHARS)] = None,
        moments: Annotated[bool, MOMENTS] = False,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        where = _both(where, narrowed.where())  # narrowed.where() holds kind=
        await run_in_threadpool(lib.check_request, where)  # before the upload is decoded
        vector = await _embed_upload(file)
        hits = await run_in_threadpool(
            lib.search_vector, vector, k=k, where=where, min_score=min_score, moments=moments
        )
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
        kind: Annotated[str | None, KIND] = None,
        moments: Annotated[bool, MOMENTS] = False,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        record = _record(image_id)  # a video's id stands for its first moment
        hits = lib.similar_to(record.id, k=k, where=where, min_score=min_score, kind=kind, moments=moments)
        return _hits(hits, started)

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
        summary="A JPEG thumbnail, made on first request (of a video moment: its frame)",
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
        data = cache.cached(record, size)  # keyed by id: a moment's frame is cached apart from its video's others
        if data is None:
            data = _thumbnail_of(record, size, lib.settings.max_pixels)
            cache.store(record, size, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get(
        "/api/images/{image_id}",
        summary="The original file (of a moment: its whole video), typed by its format; Range gives 206",
        response_class=Response,
        responses={
            200: {"content": {kind: {} for kind in ORIGINAL_TYPES}, "description": "the file's bytes"},
            **_errors(401, 404, 410, 503),
        },
    )
    def original(
        request: Request,
        image_id: str,
        format: Annotated[
            str | None,
            Query(description="jpeg: HEIC, TIFF and RAW originals converted for a browser (a moment: its frame)"),
        ] = None,
    ) -> Response:
        record = _record(image_id)
        if format not in (None, "jpeg"):
            raise HTTPException(400, f"format={format}: the only conversion is format=jpeg")
        if format == "jpeg" and record.kind == "video":
            return Response(_frame_jpeg(record, MAX_CONVERTED, lib.settings.max_pixels), media_type="image/jpeg")
        if format == "jpeg" and record.format.upper() not in BROWSER_FORMATS:
            data = _read_record(record)
            return Response(_as_jpeg(record, data, lib.settings.max_pixels), media_type="image/jpeg")
        media = media_type(record.format)
        if is_uri(record.path):  # on object storage: read it through, no local file to send
            data = _read_record(record)
            try:
                asked = byte_range(request.headers.get("range"), len(data))
            except RangeNotSatisfiable:
                return _unsatisfiable(len(data))
            return _ranged(asked, len(data), media, lambda a, n: iter([data[a : a + n]]))
        file, size = open_indexed(record)
        try:
            asked = byte_range(request.headers.get("range"), size)
        except RangeNotSatisfiable:
            file.close()
            return _unsatisfiable(size)
        return _ranged(asked, size, media, lambda a, n: chunks_from(file, a, n))

    @app.get(
        "/api/images/{image_id}/details",
        summary="What the lightbox shows: path, size, dates, caption, camera, tags, cluster; a video's time and codec",
        responses=_errors(401, 404, 503),
    )
    def details(image_id: str) -> dict[str, Any]:
        record = _record(image_id)
        extra = sorted(overview.tag_columns() | ({"cluster", "cluster_name"} if overview.has_clusters() else set()))
        row = overview.row(image_id) or {}
        return {
            "id": record.id,
            "path": record.path,
            "size": record.size,
            "width": record.width,
            "height": record.height,
            "format": record.format,
            "taken_at": record.taken_at.isoformat() if record.taken_at else None,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.mtime_ns / 1e9)),
            "caption": record.caption,
            "caption_source": record.caption_source,
            "description": record.description,
            "camera": None if is_uri(record.path) or record.kind == "video" else _camera(record),
            "labels": {c: row.get(c) for c in extra if row.get(c) is not None},
            "kind": record.kind,
            "file_id": record.file_id or record.id,
            "timestamp": record.timestamp,  # the moment's, seconds; null for an image
            "duration": record.duration,
            "fps": record.fps,
            "codec": record.codec,
        }

    @app.get(
        "/api/facets",
        summary="The filter choices: kinds (image, video), formats, folders, tags, clusters, dates",
        responses=_errors(401, 503),
    )
    def facets() -> dict[str, Any]:
        found = overview.facets()
        return {
            "images": found.images,
            "kinds": found.kinds,
            "formats": found.formats,
            "folders": found.folders,
            "tags": found.tags,
            "clusters": found.clusters,
            "first": found.first.date().isoformat() if found.first else None,
            "last": found.last.date().isoformat() if found.last else None,
        }

    @app.get(
        "/api/browse",
        summary="The collection's images and videos (each once), the newest first (capture time, else mtime), filtered",
        responses=_errors(400, 401, 503),
    )
    def browse(
        narrowed: Narrowed,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 60,
    ) -> dict[str, Any]:
        total, rows = overview.browse(narrowed, offset, limit)
        return {"total": total, "offset": offset, "images": [_row_dict(r) for r in rows]}

    @app.get(
        "/api/query",
        summary="The search box: query algebra (beach + photo.jpg - crowd, 2:beach, like:ID), filtered",
        responses=_errors(400, 401, 503),
    )
    async def query(
        narrowed: Narrowed,
        q: Annotated[str, Query(max_length=MAX_TEXT_CHARS, description="texts, file names, like:ID, + and -")] = "",
        like: Annotated[list[str], Query(description="ids of stored images to search like")] = [],  # noqa: B006
        k: Annotated[int, Query(ge=1, le=1000)] = 24,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        target: Annotated[str, Query(pattern="^(" + "|".join(TARGETS) + ")$")] = "image",
        moments: Annotated[bool, MOMENTS] = False,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        terms = parse_box(q, like, await run_in_threadpool(overview.finder))
        where = narrowed.where()
        await run_in_threadpool(lib.check_request, where, target)
        total = np.zeros(lib.encoder.dimension, np.float32)
        # like=ID may name a video (its first moment stands for it); an id stored nowhere is a 404.
        rows = {t.value: overview.first_moment(t.value) or t.value for t in terms if t.kind == "id"}
        ids = list(rows.values())
        stored = dict(zip(*await run_in_threadpool(lib.collection.vectors, ids), strict=True)) if ids else {}
        if missing := [i for i, row in rows.items() if row not in stored]:
            raise HTTPException(404, f"no image with id {missing[0]}")
        for term in terms:
            vector = stored[rows[term.value]] if term.kind == "id" else await batcher.embed_text(term.value)
            total += term.weight * vector
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise HTTPException(400, "the query's terms cancel each other out; change a weight or drop a term")
        hits = await run_in_threadpool(
            lib.search_vector,
            total / norm,
            k=k,
            where=where,  # narrowed.where() holds kind=
            min_score=min_score,
            target=target,
            exclude_ids=ids,
            # a liked moment's whole video is left out, as similar_to leaves it out
            exclude_files=[(overview.row(i) or {}).get("file_id") or i for i in ids],
            moments=moments,
        )
        out = _hits(hits, started)
        out["terms"] = [{"kind": t.kind, "value": t.value, "weight": t.weight} for t in terms]
        return out

    @app.get(
        "/api/map", summary="The 2-D map of the collection: points and cluster labels", responses=_errors(401, 503)
    )
    def map_data() -> dict[str, Any]:
        points = overview.points()
        groups: dict[int, list[Any]] = {}
        for p in points:
            if p.cluster is not None:
                groups.setdefault(p.cluster, [p.label, 0.0, 0.0, 0])
                groups[p.cluster][1] += p.x
                groups[p.cluster][2] += p.y
                groups[p.cluster][3] += 1
        labels = [
            {"cluster": c, "label": g[0], "x": round(g[1] / g[3], 4), "y": round(g[2] / g[3], 4), "images": g[3]}
            for c, g in sorted(groups.items())
        ]
        return {"images": lib.collection.count(), "points": [dataclasses.asdict(p) for p in points], "clusters": labels}

    @app.get(
        "/api/duplicates",
        summary="Duplicate groups (exact, near, similar shots), a page at a time",
        responses=_errors(401, 503),
    )
    def duplicates(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10
    ) -> dict[str, Any]:
        groups = overview.duplicates()
        totals = summarise(groups)  # what clipdex duplicates counts: similar shots are kept
        return {
            "total": len(groups),
            "offset": offset,
            "limit": limit,
            "summary": {
                "groups": totals.groups,
                "by_tier": totals.by_tier,
                "files": totals.files,
                "deletable": totals.deletable,
                "bytes": totals.deletable_bytes,
                "tiers": list(totals.tiers),
            },
            "groups": [dataclasses.asdict(g) for g in groups[offset : offset + limit]],
        }

    def _read_record(record: ImageRecord) -> bytes:
        if not is_uri(record.path):
            return read_indexed(record)
        try:
            return read_bytes(record.path)
        except OSError as exc:
            raise HTTPException(410, f"{record.path} cannot be read any more ({exc}); run clipdex ingest") from exc

    def _record(image_id: str) -> ImageRecord:
        """The row of an image or a video moment; a video's own id gives its first moment."""
        record = lib.collection.get(image_id, vectors=False)  # its file's facts: no vectors read
        if record is None and (first := overview.first_moment(image_id)) is not None:
            record = lib.collection.get(first, vectors=False)
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


def _web_page(name: str) -> HTMLResponse:
    html = resources.files("pipeline.server").joinpath("web", name).read_text(encoding="utf-8")
    return HTMLResponse(html, headers=PAGE_HEADERS)


def _sentence(errors: list[dict[str, Any]]) -> str:
    """A 422's errors as one sentence for people: 'k: must be at least 1'."""
    parts = []
    for e in errors:
        where = [str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path")]
        parts.append(f"{'.'.join(where) or 'the request'}: {str(e.get('msg', 'is not valid')).lower()}")
    return "; ".join(parts)


def _both(where: str | None, other: str | None) -> str | None:
    """Two filters ANDed (each in parentheses), or the one given."""
    return f"({where}) AND ({other})" if where and other else where or other


def _unsatisfiable(size: int) -> Response:
    """The 416 for a range past the end: Content-Range says how long the file is."""
    return Response(status_code=416, headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})


def _ranged(
    asked: tuple[int, int] | None, size: int, media: str, read: Callable[[int, int], Iterator[bytes]]
) -> Response:
    """The whole file (200) or the byte range asked for (206, Content-Range)."""
    headers = {"Accept-Ranges": "bytes"}
    if asked is None:
        return StreamingResponse(read(0, size), media_type=media, headers={**headers, "Content-Length": str(size)})
    first, last = asked
    headers |= {"Content-Range": f"bytes {first}-{last}/{size}", "Content-Length": str(last - first + 1)}
    return StreamingResponse(read(first, last - first + 1), status_code=206, media_type=media, headers=headers)


def _as_jpeg(record: ImageRecord, data: bytes, max_pixels: int) -> bytes:
    """An original a browser cannot show (HEIC, TIFF, RAW) as a JPEG, decoded as ingest decodes it."""
    longest = min(max(record.width, record.height), MAX_CONVERTED)
    try:
        picture = thumbnail_of(record.path, data, longest, max_pixels)
    except (OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(410, f"{record.path} cannot be decoded any more ({exc}); run clipdex ingest") from exc
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=CONVERTED_QUALITY)
    return buffer.getvalue()


def _camera(record: ImageRecord) -> str | None:
    """'Make Model' from the file's EXIF (only its header is read), or None."""
    try:
        file, _ = open_indexed(record)
    except HTTPException:
        return None
    try:
        with file, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(file, formats=FORMATS) as image:
                exif = image.getexif()
    except Exception:  # RAW, or an odd file: the lightbox shows no camera
        return None
    make, model = (" ".join(str(exif.get(tag) or "").split()) for tag in (EXIF_MAKE, EXIF_MODEL))
    if model.lower().startswith(make.lower()):
        make = ""  # "Canon Canon EOS 5D" reads "Canon EOS 5D"
    return " ".join(x for x in (make, model) if x) or None


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A browsed image in the shape of a hit (score None)."""
    taken = row.get("taken_at")
    return {
        "id": row["id"],
        "path": row["path"],
        "score": None,
        "caption": row.get("caption"),
        "width": row["width"],
        "height": row["height"],
        "format": row["format"],
        "taken_at": taken.isoformat() if taken else None,
        "kind": row.get("kind") or "image",
        "timestamp": row.get("timestamp"),
        **({"file_id": row.get("file_id"), "duration": row.get("duration")} if row.get("kind") == "video" else {}),
    }


def _filters(
    request: Request,
    after: Annotated[str | None, Query(description="from this day (capture time, else mtime): 2024-06-01")] = None,
    before: Annotated[str | None, Query(description="up to and including this day")] = None,
    folder: Annotated[str | None, Query(max_length=MAX_TEXT_CHARS, description="a folder: images in it")] = None,
    format: Annotated[list[str], Query(description="JPEG, PNG, ...")] = [],  # noqa: B006
    tag: Annotated[list[str], Query(max_length=MAX_TEXT_CHARS, description="column:value")] = [],  # noqa: B006
    cluster: Annotated[list[int], Query(description="a cluster number")] = [],  # noqa: B006
    kind: Annotated[str | None, Query(description="image or video: only those")] = None,
) -> Filters:
    """The page's filters from structured query parameters (pipeline.server.filters quotes them)."""
    overview: Overview = request.app.state.overview
    return parse_filters(
        after=after,
        before=before,
        folder=folder,
        formats=format,
        tags=tag,
        clusters=cluster,
        tag_columns=overview.tag_columns(),
        has_clusters=overview.has_clusters(),
        kind=kind,
    )


Narrowed = Annotated[Filters, Depends(_filters)]


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
    if record.kind == "video":
        return _frame_jpeg(record, size, max_pixels, THUMBNAIL_QUALITY)
    try:
        data = read_bytes(record.path) if is_uri(record.path) else read_indexed(record)
        return make_thumbnail(record.path, data, size, max_pixels)
    except HTTPException:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(410, f"{record.path} cannot be read any more ({exc}); run clipdex ingest") from exc


def _frame_jpeg(record: ImageRecord, size: int, max_pixels: int, quality: int = CONVERTED_QUALITY) -> bytes:
    """A video moment's frame as a JPEG, at most size pixels on its longer side."""
    try:
        if is_uri(record.path):
            picture = frame_at(record.path, record.timestamp or 0.0, size, max_pixels)
        else:
            file, _ = open_indexed(record)
            with file:
                # The file checked and opened here, by its descriptor: never the name again, which a
                # link or another file could have taken since.
                picture = frame_at(f"/proc/self/fd/{file.fileno()}", record.timestamp or 0.0, size, max_pixels)
    except OSError as exc:
        raise HTTPException(410, f"{record.path} cannot be decoded any more ({exc}); run clipdex ingest") from exc
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


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
