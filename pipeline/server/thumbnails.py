"""The thumbnail cache: JPEGs made on first request, in a folder only this user can read.

The folder is private (0o700) and nothing in it is trusted to be what its name says: a cached
file is opened without following a link and used only if it is a regular file; a new one is
written to a unique temporary file and renamed over whatever the name held, link or not.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from pathlib import Path

import platformdirs
from fastapi import HTTPException

from pipeline.ingest.decode import thumbnail_of
from storage import ImageRecord

THUMBNAIL_SIZES = (128, 256, 512)
THUMBNAIL_QUALITY = 85  # JPEG quality of a thumbnail
MAX_CACHED_BYTES = 4 * 1024 * 1024  # a cached thumbnail larger than this was not written by us
FOLDER_MODE = 0o700
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def default_folder(digest: str) -> Path:
    """Where a collection's thumbnails go unless told: the user's cache folder, one folder per collection."""
    return Path(platformdirs.user_cache_dir("clipdex")) / "thumbnails" / digest


class ThumbnailCache:
    """JPEG thumbnails of stored images, keyed by id, content hash and size."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, record: ImageRecord, size: int) -> Path:
        """Where the thumbnail of this record at this size is cached."""
        return self.folder / f"{record.id}-{record.hash}-{size}.jpg"

    def cached(self, record: ImageRecord, size: int) -> bytes | None:
        """The cached thumbnail, or None when there is none (or what is there is not a plain file)."""
        self._prepare()
        try:
            fd = os.open(self.path(record, size), READ_FLAGS)
        except OSError:  # missing, or a planted link (ELOOP): made afresh and renamed over it
            return None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CACHED_BYTES:
                return None
            data = file.read(MAX_CACHED_BYTES + 1)
        return data or None

    def store(self, record: ImageRecord, size: int, data: bytes) -> None:
        """Cache a thumbnail: a unique temporary file, renamed into place (atomic, never through a link)."""
        self._prepare()
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".part")  # mode 0o600
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, self.path(record, size))  # replaces a link itself, not its target
        except OSError:  # a folder planted at the name, a full disk: serve it uncached
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _prepare(self) -> None:
        os.makedirs(self.folder, mode=FOLDER_MODE, exist_ok=True)
        info = os.lstat(self.folder)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise HTTPException(
                503, f"the thumbnail folder {self.folder} is a link or not this user's; remove it and retry"
            )
        if stat.S_IMODE(info.st_mode) != FOLDER_MODE:
            os.chmod(self.folder, FOLDER_MODE)


def make_thumbnail(name: str, data: bytes, size: int, max_pixels: int) -> bytes:
    """A JPEG of the image in data (read safely, so the file decoded is the file checked) at most size
    pixels wide and high; raises OSError (also for a picture over max_pixels)."""
    buffer = io.BytesIO()
    thumbnail_of(name, data, size, max_pixels).save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
