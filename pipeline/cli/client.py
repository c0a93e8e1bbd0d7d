"""Asking a running `clipdex serve` instead of loading the model: the CLI's --server path.

Only the standard library and light modules are imported here, so a query costs no model load,
no torch, and no LanceDB import.
"""

from __future__ import annotations

import json
import mimetypes
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from http import HTTPStatus
from typing import Any

from pipeline.errors import InputNotFound, ServerError
from storage.records import Hit, Moment

TIMEOUT_S = 60.0


class Client:
    """A clipdex server at a base URL, optionally with a token."""

    def __init__(self, url: str, token: str | None = None) -> None:
        if "://" not in url:
            raise ServerError(f"--server {url}: give the URL with its scheme, e.g. --server http://{url}")
        self.url = url.rstrip("/")
        self.token = token

    def info(self) -> dict[str, Any]:
        """The server's /api/info: counts, model and the location of its collection."""
        return self._call("GET", "/api/info", {})

    def check_db(self, db: str) -> None:
        """Refuse a --db that is not the collection the server serves: it would be silently ignored."""
        served = str(self.info().get("db", ""))
        if _same_location(db, served):
            return
        raise ServerError(
            f"--db {db} is not the collection --server {self.url} serves ({served}); "
            "drop --db to ask the server, or drop --server to search --db here"
        )

    def search(self, text: str, **params: Any) -> list[Hit]:
        """Images that match a text, best first."""
        return self._hits(self._call("GET", "/api/search", {"q": text, **params}))

    def similar_to(self, image_id: str, **params: Any) -> list[Hit]:
        """Images like a stored image."""
        return self._hits(self._call("GET", f"/api/similar/{urllib.parse.quote(image_id)}", params))

    def similar(self, path: str, **params: Any) -> list[Hit]:
        """Images like an image file, which is uploaded."""
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise InputNotFound(f"{path} does not exist; give the path of an image file")
        with open(path, "rb") as f:
            data = f.read()
        return self._hits(self._call("POST", "/api/similar", params, upload=(os.path.basename(path), data)))

    def _call(
        self, method: str, path: str, params: dict[str, Any], upload: tuple[str, bytes] | None = None
    ) -> dict[str, Any]:
        # False is left out, True sent as "true": the server's defaults are False.
        query = {k: ("true" if v is True else v) for k, v in params.items() if v is not None and v is not False}
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = None
        if upload is not None:
            body, content_type = _multipart(*upload)
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                data: dict[str, Any] = json.load(response)
                return data
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code == HTTPStatus.UNAUTHORIZED:
                fix = "the token given is not the server's" if self.token else "this server requires a token"
                raise ServerError(
                    f"--server {self.url}: {fix}; give it with --token TOKEN or CLIPDEX_TOKEN (401)"
                ) from exc
            raise ServerError(f"--server {self.url}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(
                f"--server {self.url}: cannot connect ({reason}); start it with `clipdex serve`, or drop --server"
            ) from exc

    @staticmethod
    def _hits(data: dict[str, Any]) -> list[Hit]:
        return [
            Hit(
                id=h["id"],
                path=h["path"],
                score=h["score"],
                caption=h["caption"],
                width=h["width"],
                height=h["height"],
                format=h["format"],
                taken_at=datetime.fromisoformat(h["taken_at"]) if h.get("taken_at") else None,
                kind=h.get("kind") or "image",  # a server from before videos says nothing: images
                file_id=h.get("file_id") or "",
                timestamp=h.get("timestamp"),
                duration=h.get("duration"),
                moments=tuple(Moment(m["id"], m["timestamp"], m["score"]) for m in h.get("moments") or ()),
            )
            for h in data["hits"]
        ]


def _same_location(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return f"{exc.code} {detail or exc.reason}"


def _multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {kind}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
