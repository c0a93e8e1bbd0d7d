"""One writer at a time: an flock on a file in a local collection's folder; LanceDB write errors in one line."""

from __future__ import annotations

import contextlib
import fcntl  # POSIX: clipdex runs on Linux and macOS
import os
from collections.abc import Iterator
from datetime import datetime

from storage.damage import damaged, is_damage
from storage.errors import CollectionBusy, StorageError, first_line

LOCK_FILE = ".clipdex-writer"  # inside a local collection's folder: who is writing now


@contextlib.contextmanager
def writer_lock(uri: str, command: str) -> Iterator[None]:
    """Hold the collection's writer lock while a command writes (ingest, reembed, ...).

    A second writer is refused at once with CollectionBusy, naming the holder; readers never
    wait. The lock is an flock on a file in the folder, so a killed holder releases it. On
    object storage there is no lock: run one writer per collection there.
    """
    if "://" in uri:
        yield
        return
    try:
        lock = open(os.path.join(uri, LOCK_FILE), "a+", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StorageError(
            f"--db {uri}: cannot write ({exc.strerror or exc}); check free space and permissions, or use another --db"
        ) from exc
    with lock as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another clipdex process"
            raise CollectionBusy(
                f"--db {uri}: {holder} is writing to this collection; "
                "wait for it to finish (searches work meanwhile), or stop it"
            ) from None
        except OSError as exc:  # a file system without locks (some NFS, FUSE and SMB mounts)
            raise StorageError(
                f"--db {uri}: cannot lock the collection for writing ({exc.strerror or exc}); "
                "put it on a local disk, or on object storage"
            ) from exc
        try:
            f.seek(0)
            f.truncate()
            f.write(f"clipdex {command} (pid {os.getpid()}, since {datetime.now():%Y-%m-%d %H:%M:%S})")
            f.flush()
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def writing(uri: str) -> Iterator[None]:
    """Turn LanceDB's write errors (full disk, read-only folder, ...) into one line with the fix."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if is_damage(exc):
            raise damaged(uri, exc) from exc
        raise StorageError(
            f"--db {uri}: cannot write ({first_line(exc)}); check free space and permissions, or use another --db"
        ) from exc
