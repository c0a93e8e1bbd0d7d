"""What one request may cost the server: body and upload sizes, pixels, text lengths, connections."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024  # bytes of an uploaded image
MULTIPART_SLACK = 64 * 1024  # a request body may exceed the upload by this much (multipart framing)
MAX_UPLOAD_PIXELS = 50_000_000  # below ingest's cap: an upload is anyone's, a stored file is the user's
MAX_TEXT_CHARS = 1000  # a search or embed text; CLIP reads 77 tokens, far fewer
MAX_WHERE_CHARS = 4000  # a --where filter
MAX_QUEUED = 256  # images and texts waiting for the model (pipeline.server.batching); above it 503
# uvicorn, in serve():
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 128  # open connections at once (64 keep-alive clients fit); from there uvicorn answers 503
MAX_HEADER_BYTES = 16 * 1024  # request line and headers (h11), above it the connection is refused
GRACEFUL_SHUTDOWN_S = 10  # on Ctrl-C, requests in flight get this long to finish


def size_text(limit: int) -> str:
    """A byte count for a message: 32 MB, 195 KB."""
    if limit >= 1024 * 1024:
        return f"{limit / (1024 * 1024):g} MB"
    return f"{limit // 1024} KB"


def too_large(limit: int) -> str:
    """The detail of a 413."""
    return f"the upload is over {size_text(limit)}; send a smaller image"


class BodyLimit:
    """Refuse a request body over the cap: from its Content-Length before reading it, else as it streams in."""

    def __init__(self, app: ASGIApp, max_upload: int) -> None:
        self.app = app
        self.max_upload = max_upload
        self.max_body = max_upload + MULTIPART_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            refusal = None
            if not declared.isdigit():
                refusal = JSONResponse({"detail": "Content-Length is not a number; send a valid request"}, 400)
            elif int(declared) > self.max_body:
                refusal = JSONResponse({"detail": too_large(self.max_upload)}, 413)
            if refusal is not None:
                refusal.headers["Connection"] = "close"  # the body is never read
                await refusal(scope, receive, send)
                return
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # chunked, or longer than declared
                    raise HTTPException(413, too_large(self.max_upload))
            return message

        await self.app(scope, capped, send)
