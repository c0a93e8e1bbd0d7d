"""Walking folders: which files are images, which folders to skip, and loops that must not trap us."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputNotFound
from pipeline.ingest.sources import is_uri, list_objects, read_bytes

IMAGE_EXTENSIONS = frozenset(
    [
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
        ".mpo",
    ]
)
VIDEO_EXTENSIONS = frozenset(
    [".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts", ".m2ts", ".3gp", ".wmv", ".mpg", ".mpeg"]
)
# A Live Photo's MOV beside its still (IMG_1.HEIC + IMG_1.MOV) belongs to the photo.
LIVE_PHOTO_VIDEO = ".mov"
LIVE_PHOTO_STILLS = (".heic", ".heif", ".jpg", ".jpeg")
SIDECAR_EXTENSIONS = (".txt",)
# Folders that hold thumbnails or trash made by NAS boxes, operating systems and photo tools.
SKIPPED_FOLDERS = frozenset(
    {"@eaDir", "#recycle", "#snapshot", "@Recycle", "@Recently-Snapshot", "$RECYCLE.BIN",
     "System Volume Information", "lost+found", "__MACOSX", "node_modules"}
)  # fmt: skip
HEADER_BYTES = 16


@dataclass(frozen=True, slots=True)  # one per file found: a million of them must stay small
class ScannedFile:
    """An image or video file found on disk."""

    path: str  # absolute, symlinks kept as found
    size: int
    mtime_ns: int
    sidecar: str | None = None  # IMG_1.txt beside IMG_1.jpg


@dataclass
class ScanResult:
    """Images and videos found, plus files that looked like images but could not be read."""

    files: list[ScannedFile] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    videos: int = 0  # of the files, how many are videos
    live_photos: int = 0  # Live Photo videos beside their stills: not listed (they belong to the photo)
    special: list[str] = field(default_factory=list)  # FIFOs, sockets, devices named like images: skipped
    listed: set[str] = field(default_factory=set)  # every object under URI roots, filtered or not
    # Folder symlinks pointing outside every root given: (link, real target), not walked.
    unfollowed: list[tuple[str, str]] = field(default_factory=list)

    def exists(self, path: str) -> bool:
        """Whether a file is still there: on disk, or in the listing of an object-store root."""
        return path in self.listed if is_uri(path) else os.path.lexists(path)


def sniff_image(header: bytes) -> bool:
    """True when the first bytes are those of an image format clipdex decodes."""
    return (
        header.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM"))
        or header.startswith((b"II*\x00", b"MM\x00*"))
        or (header[:4] == b"RIFF" and header[8:12] == b"WEBP")
        or (header[4:8] == b"ftyp" and header[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"heim"))
    )


class Scanner:
    """Finds image and video files under roots, honouring include/exclude globs and skipping hidden folders.

    A folder symlink pointing under a root given is an alias, not walked (its images are found
    under their real path); one pointing elsewhere is walked only with follow_links, else recorded
    in ScanResult.unfollowed. A folder reached twice (a loop, two links) is walked once.
    """

    def __init__(
        self,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        skip: Sequence[str] = (),
        *,
        follow_links: bool = False,
    ) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.skip = {os.path.abspath(p) for p in skip}
        self.follow_links = follow_links

    def scan(self, roots: Sequence[str | Path]) -> ScanResult:
        """Every image under the roots (files given directly are taken as they are)."""
        absolute = [str(r) if is_uri(str(r)) else os.path.abspath(os.path.expanduser(str(r))) for r in roots]
        for root in absolute:
            if not is_uri(root) and not os.path.lexists(root):
                raise InputNotFound(f"{root} does not exist; check the path to ingest")
        result = ScanResult()
        seen: set[str] = set()
        folders = [os.path.realpath(r) for r in absolute if not is_uri(r) and os.path.isdir(r)]
        for root in absolute:
            if is_uri(root):
                self._list(root, result, seen)
            elif os.path.isdir(root):
                self._walk(root, result, seen, folders)
            elif root not in seen:
                seen.add(root)
                self._consider(root, os.path.basename(root), set(), result, explicit=True)
        result.unfollowed.sort()
        return result

    def _walk(self, root: str, result: ScanResult, seen: set[str], roots: Sequence[str]) -> None:
        visited: set[tuple[int, int]] = set()
        for folder, names in self._folders(root, roots, visited, result):
            listing = set(names)
            lowered = {n.lower() for n in names}
            for name in sorted(names):
                path = os.path.join(folder, name)
                if path in seen or name.startswith(".") or self._excluded(root, path, name):
                    continue
                seen.add(path)
                if _live_photo_video(name, lowered):
                    result.live_photos += self._included(root, path, name)
                    continue
                self._consider(path, name, listing, result, included=self._included(root, path, name))

    def _list(self, root: str, result: ScanResult, seen: set[str]) -> None:
        """The images under an object-store prefix, by extension (objects are not opened to sniff)."""
        objects = list_objects(root)
        listing = {uri for uri, _, _ in objects}
        lowered = {uri.lower() for uri in listing}
        prefix = root.rstrip("/") + "/"
        result.listed |= listing
        for uri, size, mtime_ns in objects:
            parts = uri[len(prefix) :].split("/") if uri.startswith(prefix) else [uri.rsplit("/", 1)[-1]]
            name = parts[-1]
            hidden = any(p.startswith(".") or p in SKIPPED_FOLDERS for p in parts)
            # An excluded "folder" (a key prefix) leaves out everything under it, as on disk.
            folders = [(prefix + "/".join(parts[: i + 1]), parts[i]) for i in range(len(parts) - 1)]
            excluded = any(self._excluded(root, path, folder) for path, folder in folders)
            if (
                uri in seen
                or hidden
                or excluded
                or self._excluded(root, uri, name)
                or not self._included(root, uri, name)
            ):
                continue
            seen.add(uri)
            ext = os.path.splitext(name)[1].lower()
            if _live_photo_video(uri, lowered):
                result.live_photos += 1
            elif ext in VIDEO_EXTENSIONS:
                result.videos += 1
                result.files.append(ScannedFile(uri, size, mtime_ns))
            elif ext in IMAGE_EXTENSIONS:
                stem = uri[: len(uri) - len(ext)]
                sidecar = next((c for c in (stem + ".txt", uri + ".txt") if c in listing), None)
                result.files.append(ScannedFile(uri, size, mtime_ns, sidecar))

    def _folders(
        self, root: str, roots: Sequence[str], visited: set[tuple[int, int]], result: ScanResult
    ) -> Iterator[tuple[str, list[str]]]:
        """Depth-first folders with their file names; a folder reached twice (a loop) is walked once.

        roots: the real paths of every folder given to this run, root's among them.
        """
        stack = [(root, False)]  # (folder, reached through a folder symlink)
        while stack:
            folder, linked = stack.pop()
            try:
                info = os.stat(folder)
                if (info.st_dev, info.st_ino) in visited:
                    continue
                visited.add((info.st_dev, info.st_ino))
                entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
            except OSError as exc:
                result.errors.append((folder, f"cannot list folder: {exc.strerror or exc}; check permissions"))
                continue
            files = []
            for entry in entries:
                try:
                    is_dir = entry.is_dir()  # follows symlinks; loops are caught by `visited`
                except OSError:
                    is_dir = False
                if not is_dir:
                    files.append(entry.name)
                elif not self._skip_folder(root, entry.path, entry.name):
                    via_link = linked or entry.is_symlink()
                    if self._enter(entry, via_link, roots, result):
                        stack.append((entry.path, via_link))
            yield folder, files

    def _enter(self, entry: os.DirEntry[str], via_link: bool, roots: Sequence[str], result: ScanResult) -> bool:
        """Whether to walk a folder: a real one always; one reached through a symlink only if it lies
        outside the roots given, and then only with follow_links (a link to /etc must not make ingest
        walk /etc)."""
        if not via_link:
            return True
        target = os.path.realpath(entry.path)
        if any(_under(target, r) for r in roots):
            return False  # an alias: its images are found under their real path
        if not entry.is_symlink():
            return True  # a folder inside a followed link
        if not self.follow_links and (entry.path, target) not in result.unfollowed:  # overlapping roots
            result.unfollowed.append((entry.path, target))
        return self.follow_links

    def _skip_folder(self, root: str, path: str, name: str) -> bool:
        return (
            name.startswith(".")
            or name in SKIPPED_FOLDERS
            or os.path.abspath(path) in self.skip
            or self._excluded(root, path, name)
        )

    def _excluded(self, root: str, path: str, name: str) -> bool:
        return _matches(self.exclude, root, path, name)

    def _included(self, root: str, path: str, name: str) -> bool:
        return not self.include or _matches(self.include, root, path, name)

    def _consider(
        self,
        path: str,
        name: str,
        listing: set[str],
        result: ScanResult,
        *,
        included: bool = True,
        explicit: bool = False,
    ) -> None:
        """Add path to the result if it is an image (by extension, else by its first bytes) or a video
        (by extension)."""
        if not included:
            return
        ext = os.path.splitext(name)[1].lower()
        video = ext in VIDEO_EXTENSIONS
        known = video or ext in IMAGE_EXTENSIONS
        if explicit and _live_photo_video(path, None):
            result.live_photos += 1
            return
        try:
            info = os.stat(path)
        except OSError as exc:
            if known or explicit:
                result.errors.append((path, f"cannot read: {exc.strerror or exc} (a broken link?)"))
            return
        if not stat.S_ISREG(info.st_mode):
            if known and not stat.S_ISDIR(info.st_mode):
                result.special.append(path)  # reading a FIFO or device could block or never end
            return
        if video:
            result.videos += 1
            result.files.append(ScannedFile(path, info.st_size, info.st_mtime_ns))
            return
        if ext not in IMAGE_EXTENSIONS and not explicit and not _has_image_header(path):
            return
        result.files.append(ScannedFile(path, info.st_size, info.st_mtime_ns, _sidecar(path, name, listing)))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _matches(patterns: Sequence[str], root: str, path: str, name: str) -> bool:
    """A glob matches the name or the path below the root (also with a leading '/', so that
    '*/tmp/*' catches a top-level tmp folder too), ignoring case: cameras write IMG_1.JPG."""
    rel = os.path.relpath(path, root).replace(os.sep, "/").lower()
    candidates = (name.lower(), rel, "/" + rel, "/" + rel + "/")
    return any(fnmatch.fnmatchcase(c, p.lower()) for p in patterns for c in candidates)


def _live_photo_video(path: str, lowered: set[str] | None) -> bool:
    """A MOV with a HEIC or JPEG still of the same name beside it (looked up in the folder's
    lower-cased listing, or on disk when there is none): the video half of a Live Photo."""
    stem, ext = os.path.splitext(path)
    if ext.lower() != LIVE_PHOTO_VIDEO:
        return False
    if lowered is None:
        return any(os.path.isfile(stem + e) or os.path.isfile(stem + e.upper()) for e in LIVE_PHOTO_STILLS)
    return any((stem + e).lower() in lowered for e in LIVE_PHOTO_STILLS)


def _has_image_header(path: str) -> bool:
    try:
        return sniff_image(read_bytes(path, limit=HEADER_BYTES))
    except OSError:
        return False


def _sidecar(path: str, name: str, listing: set[str]) -> str | None:
    """IMG_1.txt or IMG_1.jpg.txt beside IMG_1.jpg, looked up in the folder listing we already have."""
    stem = os.path.splitext(name)[0]
    folder = os.path.dirname(path)
    for candidate in (stem + ".txt", name + ".txt"):
        if candidate == name:
            continue
        # A file given directly has no listing: look on disk instead.
        if candidate in listing if listing else os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None
