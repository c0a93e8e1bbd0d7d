"""The HTTP API and the web page: FastAPI over one Clipdex, the model loaded once per process.

Security: the server answers only with files that are in the collection, addressed by id; a
token, when set, is required on every request (header ``Authorization: Bearer T`` or ``?token=T``
for image URLs); uploads are capped in size.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import mimetypes
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel

from models import ModelError
from pipeline.config import TARGETS
from pipeline.errors import ClipdexError
from pipeline.ingest.decode import DecodeFailed, decode_bytes, thumbnail_image
from pipeline.ingest.sources import is_uri, read_bytes
from pipeline.library import Clipdex
from pipeline.shapes import hit_dict, stats_dict
from storage import BadFilter, StorageError

DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024
THUMBNAIL_SIZES = (128, 256, 512)


class TextIn(BaseModel):
    """A text to embed."""

    text: str


def create_app(
    lib: Clipdex,
    *,
    token: str | None = None,
    thumbnails: Path | None = None,
    max_upload: int = DEFAULT_MAX_UPLOAD,
) -> FastAPI:
    """The FastAPI app serving one collection."""
    app = FastAPI(title="clipdex", summary="Search your own images by meaning.", version="0.1.0")
    thumbs = thumbnails or Path(tempfile.gettempdir()) / "clipdex-thumbnails" / _digest(lib.collection.uri)
    model_lock = threading.Lock()  # one forward pass at a time: the model already uses every core

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is not None:
            given = request.query_params.get("token") or request.headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "a token is required: ?token=... or Authorization: Bearer ..."}, 401)
        return await call_next(request)

    @app.exception_handler(ClipdexError)
    @app.exception_handler(BadFilter)
    def bad_request(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 400)

    @app.exception_handler(StorageError)
    @app.exception_handler(ModelError)
    def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503)

    @app.exception_handler(Exception)
    def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if not lib.collection.is_current():  # `clipdex reembed` switched models under this server
            detail = f"{lib.collection.uri} now holds another model's vectors; restart clipdex serve"
            return JSONResponse({"detail": detail}, 503)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("pipeline.server").joinpath("web", "index.html").read_text(encoding="utf-8")

    @app.get("/api/info", summary="Counts, model and location of the collection")
    def info() -> dict[str, Any]:
        return stats_dict(lib.stats())

    @app.get("/api/search", summary="Images that match a text, best first")
    def search(
        q: Annotated[str, Query(description="the text", min_length=1, max_length=1000, pattern=r"\S")],
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: str | None = None,
        target: Annotated[str, Query(pattern="^(" + "|".join(TARGETS) + ")$")] = "image",
    ) -> dict[str, Any]:
        started = time.perf_counter()
        with model_lock:
            vector = lib.embed_text(q)
        hits = lib.search_vector(vector, k=k, where=where, min_score=min_score, target=target)
        return _hits(hits, started)

    @app.post("/api/similar", summary="Images like an uploaded image, best first")
    async def similar_upload(
        file: Annotated[UploadFile, File(description="an image file")],
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: str | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        vector = _embed_upload(await _read_upload(file, max_upload), file.filename or "upload")
        return _hits(lib.search_vector(vector, k=k, where=where, min_score=min_score), started)

    @app.get("/api/similar/{image_id}", summary="Images like a stored image (itself left out)")
    def similar_id(
        image_id: str,
        k: Annotated[int, Query(ge=1, le=1000)] = 10,
        min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
        where: str | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if lib.collection.get(image_id) is None:
            raise HTTPException(404, f"no image with id {image_id}")
        return _hits(lib.similar_to(image_id, k=k, where=where, min_score=min_score), started)

    @app.post("/api/embed/text", summary="The vector of a text")
    def embed_text(body: TextIn) -> dict[str, Any]:
        with model_lock:
            vector = lib.embed_text(body.text)
        return {"vector": [round(float(x), 7) for x in vector], "model": lib.encoder.fingerprint.label}

    @app.post("/api/embed/image", summary="The vector of an uploaded image")
    async def embed_image(file: Annotated[UploadFile, File(description="an image file")]) -> dict[str, Any]:
        vector = _embed_upload(await _read_upload(file, max_upload), file.filename or "upload")
        return {"vector": [round(float(x), 7) for x in vector], "model": lib.encoder.fingerprint.label}

    @app.get("/api/images/{image_id}/thumbnail", summary="A JPEG thumbnail, made on first request")
    def thumbnail(image_id: str, size: Annotated[int, Query()] = 256) -> FileResponse:
        if size not in THUMBNAIL_SIZES:
            raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        record = lib.collection.get(image_id)
        if record is None:
            raise HTTPException(404, f"no image with id {image_id}")
        target = thumbs / f"{record.id}-{record.hash}-{size}.jpg"
        if not target.exists():
            _make_thumbnail(record.path, target, size)
        return FileResponse(target, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/images/{image_id}", summary="The original image file")
    def original(image_id: str) -> Response:
        record = lib.collection.get(image_id)
        if record is None:
            raise HTTPException(404, f"no image with id {image_id}")
        media = mimetypes.guess_type(record.path)[0] or f"image/{record.format.lower()}"
        if is_uri(record.path):  # on object storage: read it through, no local file to send
            try:
                return Response(read_bytes(record.path), media_type=media)
            except OSError as exc:
                raise HTTPException(410, f"{record.path} cannot be read any more ({exc}); run clipdex ingest") from exc
        if not os.path.isfile(record.path):
            raise HTTPException(410, f"{record.path} is no longer on disk; run clipdex ingest")
        return FileResponse(record.path, media_type=media)

    def _embed_upload(data: bytes, name: str) -> Any:
        result = decode_bytes(name, data, lib.encoder.transform, lib.settings.max_pixels)
        if isinstance(result, DecodeFailed) or result.pixels is None:
            reason = result.reason if isinstance(result, DecodeFailed) else "no pixels"
            raise HTTPException(400, f"{name}: {reason}")
        with model_lock:
            return lib.encoder.embed_pixels(result.pixels[None])[0]

    return app


def _hits(hits: list[Any], started: float) -> dict[str, Any]:
    return {"hits": [hit_dict(h) for h in hits], "took_ms": round((time.perf_counter() - started) * 1000, 1)}


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the upload is over {limit // (1024 * 1024)} MB; send a smaller image")
    if not data:
        raise HTTPException(400, "the upload is empty; send an image file")
    return data


def _make_thumbnail(source: str, target: Path, size: int) -> None:
    try:
        thumb = thumbnail_image(source, size)
    except (OSError, ValueError, SyntaxError) as exc:
        raise HTTPException(410, f"{source} cannot be read any more ({exc}); run clipdex ingest") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=85)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(buffer.getvalue())
    partial.replace(target)  # atomic: a concurrent request never sees half a file


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def serve(lib: Clipdex, host: str, port: int, token: str | None) -> None:
    """Run the server until interrupted (the CLI checks the token rule before calling this)."""
    uvicorn.run(create_app(lib, token=token), host=host, port=port, log_level="warning")
