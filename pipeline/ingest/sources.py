"""Images on object storage: s3:// and gs:// prefixes as ingest sources, read through pyarrow.fs.

Local files stay plain paths read with open(); a path with "://" is an object URI. Credentials and
the endpoint come from the same environment variables LanceDB reads (AWS_ACCESS_KEY_ID, AWS_REGION,
AWS_ENDPOINT or AWS_ENDPOINT_URL for S3-compatible stores, AWS_ALLOW_HTTP), so one set of variables
serves both the images and the collection. pyarrow is imported only when a URI is used.
"""

from __future__ import annotations

import functools
import os
import stat
from typing import TYPE_CHECKING, Any, BinaryIO

from pipeline.errors import InputNotFound, first_line

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

SCHEMES = ("s3", "gs", "gcs")
NOT_REGULAR = "not a regular file"


class NotRegularFile(OSError):
    """A path that names a FIFO, socket or device: never read (it could block or never end)."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a folder" if stat.S_ISDIR(mode) else "not a file"


def is_uri(path: str) -> bool:
    """True for an object-store URI (s3://bucket/key), False for a local path."""
    return "://" in path


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The whole file or object (or its first `limit` bytes); raises OSError (FileNotFoundError
    when it is gone, NotRegularFile for a FIFO, socket or device, which could block or never end)."""
    if not is_uri(path):
        # O_NONBLOCK: opening a FIFO must not wait for a writer; on a regular file it changes nothing.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegularFile(f"{NOT_REGULAR} ({_kind(os.fstat(fd).st_mode)})")
            return f.read() if limit is None else f.read(limit)
    fs, key = _resolve(path)
    try:
        with fs.open_input_stream(key) as stream:
            return bytes(stream.read() if limit is None else stream.read(limit))
    except OSError:
        raise
    except Exception as exc:  # other pyarrow errors (transport, auth) as the OSError callers expect
        raise OSError(first_line(exc)) from exc


def open_binary(path: str) -> BinaryIO:
    """A file or object opened for reading in pieces (a video is never read whole); raises OSError
    as read_bytes does. Objects are opened as seekable pyarrow files (ranged reads)."""
    if not is_uri(path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            mode = os.fstat(fd).st_mode
            os.close(fd)
            raise NotRegularFile(f"{NOT_REGULAR} ({_kind(mode)})")
        return os.fdopen(fd, "rb")
    fs, key = _resolve(path)
    try:
        return fs.open_input_file(key)  # type: ignore[no-any-return]
    except OSError:
        raise
    except Exception as exc:
        raise OSError(first_line(exc)) from exc


def list_objects(root: str) -> list[tuple[str, int, int]]:
    """(uri, size, mtime_ns) of every object under a prefix (or the object itself), sorted by uri."""
    from pyarrow.fs import FileSelector, FileType  # noqa: PLC0415 - see the module docstring

    fs, key = _resolve(root)
    scheme = root.split("://", 1)[0]
    try:
        info = fs.get_file_info(key)
        if info.type == FileType.File:
            entries = [info]
        else:
            entries = fs.get_file_info(FileSelector(key.rstrip("/"), recursive=True, allow_not_found=True))
    except Exception as exc:
        raise InputNotFound(
            f"{root}: cannot list ({first_line(exc)}); "
            "check the bucket name and the AWS_* (or GOOGLE_*) credentials and endpoint variables"
        ) from exc
    found = []
    for entry in entries:
        if entry.type != FileType.File:
            continue
        mtime_ns = entry.mtime_ns if entry.mtime_ns is not None else 0
        found.append((f"{scheme}://{entry.path}", int(entry.size or 0), int(mtime_ns)))
    return sorted(found)


def _resolve(uri: str) -> tuple[FileSystem, str]:
    # Split by hand: urlparse would take a '#' or '?' in a key for a fragment or a query.
    scheme, _, key = uri.partition("://")
    if scheme not in SCHEMES:
        raise InputNotFound(f"{uri}: clipdex reads images from s3:// and gs:// URIs, not {scheme}://")
    if scheme != "s3":
        return _filesystem("gs", None, None), key
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _filesystem("s3", endpoint, region), key


@functools.cache
def _filesystem(scheme: str, endpoint: str | None, region: str | None) -> FileSystem:
    from pyarrow import fs  # noqa: PLC0415 - see the module docstring

    if scheme != "s3":
        return fs.GcsFileSystem()
    options: dict[str, Any] = {}
    if endpoint:
        scheme_part, _, host = endpoint.rpartition("://")
        options["endpoint_override"] = host.rstrip("/")
        options["scheme"] = scheme_part or "https"
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)
