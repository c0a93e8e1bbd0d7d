"""Stored files as the server reads them: only the regular file ingest indexed, never through a link.

A row names a path; between ingest and a request that path may have become a symbolic link (to a
private key, say), a FIFO (which would hang a read), a device, or another file. Every read here
checks the path with lstat against the row's size and mtime, opens it without following a link
and without blocking, and checks that what was opened is what was checked.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import HTTPException

from storage import ImageRecord

READ_CHUNK = 1024 * 1024  # bytes per read when streaming an original
# Content types by the format ingest found in the bytes, never by the file's name: a file named
# x.html holding a PNG is sent as image/png.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a multi-picture JPEG: its first picture is a plain JPEG
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
    # Videos: the format is the file's extension (pipeline.ingest.video), the container ffmpeg read.
    "MP4": "video/mp4",
    "M4V": "video/mp4",
    "MOV": "video/quicktime",
    "WEBM": "video/webm",
    "MKV": "video/x-matroska",
    "AVI": "video/x-msvideo",
    "3GP": "video/3gpp",
    "MTS": "video/mp2t",
    "M2TS": "video/mp2t",
    "WMV": "video/x-ms-wmv",
    "MPG": "video/mpeg",
    "MPEG": "video/mpeg",
}
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO never hangs


def media_type(image_format: str) -> str:
    """The content type of a stored image or video by its decoded format (application/octet-stream if unknown)."""
    return MEDIA_TYPES.get(image_format.upper(), "application/octet-stream")


def gone(path: str, why: str) -> HTTPException:
    """The 410 for a stored file the server will not send."""
    return HTTPException(410, f"{path} {why}; run clipdex ingest to bring the collection up to date")


def check_indexed(record: ImageRecord) -> os.stat_result:
    """lstat of the stored file, if it is still the regular file ingest saw; else raises a 410."""
    try:
        info = os.lstat(record.path)
    except FileNotFoundError as exc:
        raise gone(record.path, "is no longer on disk") from exc
    except OSError as exc:
        raise gone(record.path, f"cannot be read any more ({exc.strerror or exc})") from exc
    if stat.S_ISLNK(info.st_mode):
        raise gone(record.path, "is a symbolic link, which the server never follows (put the file itself there)")
    if not stat.S_ISREG(info.st_mode):
        raise gone(record.path, "is no longer a regular file")
    if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
        raise gone(record.path, "changed since it was ingested")
    return info


def open_indexed(record: ImageRecord) -> tuple[BinaryIO, int]:
    """(the stored file opened for reading, its size), if it is still the file ingest saw; else a 410."""
    checked = check_indexed(record)
    try:
        fd = os.open(record.path, OPEN_FLAGS)
    except OSError as exc:  # ELOOP: it became a link since the lstat
        raise gone(record.path, f"cannot be opened safely ({exc.strerror or exc})") from exc
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, opened.st_size, opened.st_mtime_ns) != (
        checked.st_dev,
        checked.st_ino,
        checked.st_size,
        checked.st_mtime_ns,
    ) or not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise gone(record.path, "was replaced while being opened")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), opened.st_size


def read_indexed(record: ImageRecord) -> bytes:
    """The whole stored file, if it is still the file ingest saw; else a 410."""
    file, size = open_indexed(record)
    with file:
        return file.read(size)


def chunks(file: BinaryIO, size: int) -> Iterator[bytes]:
    """The first size bytes of an open file, a chunk at a time; closes it at the end."""
    with file:
        left = size  # a file that grows while being sent must not break the Content-Length
        while left > 0 and (chunk := file.read(min(READ_CHUNK, left))):
            left -= len(chunk)
            yield chunk


class RangeNotSatisfiable(Exception):
    """A Range header that asks only for bytes past the end of the file (a 416)."""


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes (inclusive) a Range header asks for, or None for the whole file.

    One range only: a header that does not parse, or asks for several ranges, gets the whole file
    (RFC 9110 lets a server ignore Range); one that starts past the end raises RangeNotSatisfiable.
    """
    match = _RANGE.fullmatch((header or "").strip().replace(" ", ""))
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # bytes=-N: the last N bytes
        if int(last) == 0:
            raise RangeNotSatisfiable
        return max(size - int(last), 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # an invalid range: ignored
    if start >= size:
        raise RangeNotSatisfiable
    return start, end


def chunks_from(file: BinaryIO, first: int, length: int) -> Iterator[bytes]:
    """length bytes of an open file from offset first, a chunk at a time; closes it at the end."""
    file.seek(first)
    return chunks(file, length)
