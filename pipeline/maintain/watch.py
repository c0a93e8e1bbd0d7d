"""clipdex watch: keep a collection in line with folders as they change, by itself.

A Watcher observes its roots (watchdog: inotify on Linux, FSEvents on macOS; polling where inotify
is out of watches, or when asked for), gathers the paths that events touch, and once the events
have been quiet for ``quiet`` seconds (or have gone on for ``max_wait``) runs the same incremental
sync as ``clipdex ingest`` (Clipdex.ingest) on the folders those paths lie in: unchanged files are
not decoded, a moved file keeps its vector, a deleted one leaves, a failing one is recorded once.

- At start every root is synced in full, so changes made while no watcher ran are caught.
- A file still being written (its size or mtime changed within the quiet window) holds back its
  folder until it settles (SETTLE_MAX_S at most); temporary files (``*.part``, ``*.crdownload``,
  ``~$*``, dotfiles) and the collection's own folder are never looked at.
- A sync touches only the folders that changed, unless a root itself changed, there are more than
  MAX_SCOPES of them, or --include / --exclude are set (their globs are relative to the roots):
  then the whole roots are synced. An emptied subfolder of a root that is still there loses its rows;
  a root that yields nothing keeps them (an unmounted drive), unless prune_empty.
- A root that disappears (unmounted, removed) is said once and watched again when it is back,
  with a full sync; the other roots are watched meanwhile.
- While another process writes to the collection (a `clipdex ingest`), syncs wait and retry; a
  `clipdex ingest` started during a sync is refused at once (CollectionBusy), as for any writer.
- Missed: changes on network file systems made by other machines (inotify sees only this
  machine's writes: poll=True), and folders under a followed symlink (synced at start only).
- Setting ``stop`` (Ctrl-C in the CLI) ends the loop; a sync in progress stops after the batch
  being written, keeping everything written so far (the next start picks up the rest).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from pipeline.errors import USER_ERRORS, BadOption, InputNotFound, ModelMismatch, first_line
from pipeline.ingest.plan import in_scope
from pipeline.ingest.scan import SKIPPED_FOLDERS
from pipeline.ingest.sources import is_uri
from pipeline.ingest.sync import IngestReport
from pipeline.library import Clipdex
from storage import Collection, CollectionBusy

QUIET_S = 1.0  # events must have stopped this long before a sync (and a file kept its size and mtime)
MAX_WAIT_S = 10.0  # a steady stream of events still gets a sync this often
SETTLE_MAX_S = 60.0  # a folder held this long by files still being written is synced as it is
POLL_S = 5.0  # how often the polling observer walks its roots
BUSY_RETRY_S = 2.0  # another writer holds the collection: try again this soon
ERROR_RETRY_S = 30.0  # a sync failed (full disk, ...): try again this late
ROOT_CHECK_S = 1.0  # how often to look whether a root disappeared or came back
TICK_S = 0.25  # the loop's longest sleep: how soon a stop is seen
MAX_SCOPES = 32  # more changed folders than this: sync the whole roots
# Browsers, download tools and editors write under these names, then rename.
TEMP_GLOBS = (
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.temp",
    "*.swp",
    "*.!qb",
    "*.!ut",
    "~$*",
    "*~",
)
IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})  # reads; a write ends with "closed"


@dataclass(frozen=True)
class Synced:
    """One sync the watcher ran, and what it did."""

    report: IngestReport  # new, changed, moved, removed, new failures, notes (each note said once)
    scopes: tuple[str, ...]  # the folders synced
    full: bool  # whole roots: at start, a root back, or too many folders
    seconds: float  # the whole sync, lock and index upkeep included


@dataclass(frozen=True)
class Notice:
    """Something about the watching itself, one line, said once when it happens.

    kind: watching (the roots and how they are watched), polling (inotify unusable for a root),
    gone / back (a root disappeared or came back), busy (another writer; retrying), error (a sync
    failed; retrying), stopped (the watcher cannot go on: the collection changed model).
    """

    kind: str
    message: str
    path: str | None = None


SyncFn = Callable[[Synced], None]
NoticeFn = Callable[[Notice], None]


def _ignore_sync(_: Synced) -> None:
    pass


def _ignore_notice(_: Notice) -> None:
    pass


class _Handler(FileSystemEventHandler):
    """Hands every event to the watcher, from the observer's thread."""

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher.touch_event(event)


@dataclass
class _Root:
    path: str
    ident: tuple[int, int] | None  # (st_dev, st_ino) when watched: a change means remounted or replaced
    watch: ObservedWatch | None = None
    observer: BaseObserver | None = None


class Watcher:
    """Keeps lib's collection in line with the folders roots (see the module docstring).

    >>> watcher = Watcher(lib, ["~/Pictures"], on_sync=print)
    >>> watcher.start()   # in a thread; or watcher.run() in this one, until stop is set
    >>> watcher.stop()

    on_sync is called after every sync, on_notice for the lines in Notice's docstring; both from the
    watcher's thread. Raises InputNotFound for a root that does not exist, BadOption for a file or
    an object-store URI.
    """

    def __init__(
        self,
        lib: Clipdex,
        roots: Sequence[str | os.PathLike[str]],
        *,
        quiet: float = QUIET_S,
        max_wait: float = MAX_WAIT_S,
        poll: bool = False,
        poll_interval: float = POLL_S,
        prune_empty: bool = False,
        on_sync: SyncFn | None = None,
        on_notice: NoticeFn | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.roots = _check_roots(roots)
        settings = lib.settings.override(exclude=(*lib.settings.exclude, *TEMP_GLOBS))
        # Its own collection handle: a server reading through lib meanwhile shares no table object.
        self._lib = Clipdex(Collection.open(lib.collection.uri), lib.encoder, settings)
        self._user_globs = bool(lib.settings.include or lib.settings.exclude)
        self._skip = os.path.realpath(lib.collection.uri) if not is_uri(lib.collection.uri) else None
        self.quiet = quiet
        self.max_wait = max_wait
        self.poll = poll
        self.poll_interval = poll_interval
        self.prune_empty = prune_empty
        self._on_sync = on_sync or _ignore_sync
        self._on_notice = on_notice or _ignore_notice
        self.stop_event = stop or threading.Event()
        self._cond = threading.Condition()
        self._pending: dict[str, float] = {}  # path -> when first touched (monotonic)
        self._stats: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, seen since)
        self._first = self._last = 0.0  # first and last event of what is pending
        self._not_before = 0.0  # after a busy or failed sync
        self._now = False  # sync without waiting (start, a root back)
        self._said: set[str] = set()  # notes and busy lines already said
        self._state = {r: _Root(r, None) for r in self.roots}
        self._observer: BaseObserver | None = None
        self._poller: BaseObserver | None = None
        self._handler = _Handler(self)
        self._thread: threading.Thread | None = None
        self._checked = 0.0
        self.error: BaseException | None = None  # what ended a watcher started with start()
        self.syncs = 0  # syncs run so far

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the watcher in a thread of its own (a server's process); stop() ends it."""
        self._thread = threading.Thread(target=self._run_in_thread, name="clipdex-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end (a sync in progress stops after the batch being written) and wait."""
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Watch and sync until stop_event is set: a full sync first, then one per burst of changes."""
        self._begin()
        try:
            while not self.stop_event.is_set():
                self._check_roots()
                touched = self._take_due()
                if touched:
                    self._round(touched)
        finally:
            self._end()

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # a bug: said, and kept for whoever started the thread
            self.error = exc
            self._on_notice(Notice("stopped", f"watching stopped: {first_line(exc)}"))

    def _begin(self) -> None:
        observer: BaseObserver = PollingObserver(timeout=self.poll_interval) if self.poll else Observer()
        observer.start()
        self._observer = observer
        for root in self.roots:
            state = self._state[root]
            state.ident = _ident(root)
            self._watch(state)
        self._on_notice(
            Notice("watching", f"watching {_folders(len(self.roots))} ({self.how}): {', '.join(self.roots)}")
        )
        with self._cond:  # the full sync at start: what changed while nobody watched
            for root in self.roots:
                self._pending.setdefault(root, time.monotonic())
            self._now = True

    def _end(self) -> None:
        for observer in (self._observer, self._poller):
            if observer is not None:
                observer.stop()
        for observer in (self._observer, self._poller):
            if observer is not None and observer.is_alive():
                observer.join(5)

    @property
    def how(self) -> str:
        """How the roots are watched, in words."""
        if self.poll:
            return f"polling every {self.poll_interval:g} s"
        name = type(self._observer).__name__.removesuffix("Observer") if self._observer else "events"
        return {"Inotify": "inotify", "FSEvents": "FSEvents", "Polling": f"polling every {self.poll_interval:g} s"}.get(
            name, name
        )

    def _watch(self, state: _Root) -> None:
        """Schedule a recursive watch on a root; polling where inotify is out of watches or instances."""
        assert self._observer is not None
        try:
            state.watch = self._observer.schedule(self._handler, state.path, recursive=True)
            state.observer = self._observer
            return
        except OSError as exc:
            if self.poll:
                self._notice("error", f"{state.path}: cannot watch ({exc.strerror or exc}); check permissions", state)
                return
            reason = exc
        if self._poller is None:
            self._poller = PollingObserver(timeout=self.poll_interval)
            self._poller.start()
        limit = {
            errno.ENOSPC: "inotify watch limit reached (raise fs.inotify.max_user_watches)",
            errno.EMFILE: "inotify instance limit reached (raise fs.inotify.max_user_instances)",
        }.get(reason.errno or 0, f"inotify cannot watch it ({reason.strerror or reason})")
        try:
            state.watch = self._poller.schedule(self._handler, state.path, recursive=True)
            state.observer = self._poller
        except OSError as exc:
            self._notice("error", f"{state.path}: cannot watch ({exc.strerror or exc}); check permissions", state)
            return
        self._notice("polling", f"{state.path}: {limit}; polling it every {self.poll_interval:g} s instead", state)

    def _unwatch(self, state: _Root) -> None:
        if state.watch is not None and state.observer is not None:
            with contextlib.suppress(KeyError):  # its emitter already went with the folder
                state.observer.unschedule(state.watch)
        state.watch = state.observer = None

    def _check_roots(self) -> None:
        """Say when a root disappears; watch it again, and sync it in full, when it is back."""
        now = time.monotonic()
        if now - self._checked < ROOT_CHECK_S:
            return
        self._checked = now
        for root, state in self._state.items():
            ident = _ident(root)
            if ident == state.ident:
                continue
            was, state.ident = state.ident, ident
            self._unwatch(state)
            if ident is None:
                others = len(self.roots) - sum(s.ident is None for s in self._state.values())
                self._notice(
                    "gone",
                    f"{root} is gone (unmounted or removed): its images stay in the collection; "
                    f"watching {_folders(others, 'other ')} meanwhile, and this one again when it is back",
                    state,
                )
                continue
            self._watch(state)
            what = "is back" if was is None else "was replaced or (un)mounted"
            self._notice("back", f"{root} {what}: watching it again, and syncing it in full", state)
            with self._cond:
                self._pending[root] = now
                self._now = True

    # --- events ----------------------------------------------------------------------------

    def touch_event(self, event: FileSystemEvent) -> None:
        """Note the paths an event touched (called from the observer's thread)."""
        if event.event_type in IGNORED_EVENTS or (event.is_directory and event.event_type == "modified"):
            return  # a folder's "modified" only says that a file in it changed: that file has its own event
        paths = [os.fsdecode(event.src_path)]
        if event.event_type == "moved" and event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        self.touch(paths)

    def touch(self, paths: Iterable[str]) -> None:
        """Mark paths (files or folders, present or gone) for the next sync."""
        now = time.monotonic()
        wanted = [p for p in (os.path.abspath(p) for p in paths) if not self._ignored(p)]
        if not wanted:
            return
        stamps = {p: _stamp(p) for p in wanted}
        with self._cond:
            if not self._pending:
                self._first = now
            self._last = now
            for path in wanted:
                self._pending.setdefault(path, now)
                stamp = stamps[path]
                seen = self._stats.get(path)
                if stamp is not None and (seen is None or seen[:2] != stamp):
                    self._stats[path] = (*stamp, now)
            self._cond.notify_all()

    def pending(self) -> list[str]:
        """The paths waiting for the next sync, sorted."""
        with self._cond:
            return sorted(self._pending)

    def _ignored(self, path: str) -> bool:
        """Paths the scan would skip anyway, temporary files, and the collection's own files."""
        if self._skip is not None and in_scope(path, [self._skip]):
            return True
        root = self._root_of(path)
        if root is None:
            return True
        if path == root:
            return False
        parts = os.path.relpath(path, root).split(os.sep)
        if any(p.startswith(".") or p in SKIPPED_FOLDERS for p in parts):
            return True
        name = parts[-1].lower()
        return any(fnmatch.fnmatchcase(name, g) for g in TEMP_GLOBS)

    def _root_of(self, path: str) -> str | None:
        found = [r for r in self.roots if in_scope(path, [r])]
        return max(found, key=len) if found else None

    def _take_due(self) -> dict[str, float]:
        """What is pending once it is due (quiet for self.quiet, or pending for max_wait); else
        wait a little and return nothing."""
        with self._cond:
            now = time.monotonic()
            wait = TICK_S
            if self._pending:
                due = self._not_before if now < self._not_before else now if self._now else None
                if due is None:
                    due = min(self._last + self.quiet, self._first + self.max_wait)
                if due <= now:
                    touched, self._pending, self._now = self._pending, {}, False
                    return touched
                wait = min(TICK_S, due - now)
            self._cond.wait(wait)
            return {}

    # --- syncing ---------------------------------------------------------------------------

    def _round(self, touched: dict[str, float]) -> None:
        """Sync the folders of what is settled; put back what is still being written, or what a
        busy collection or a failed sync left undone."""
        folders, full, waiting = self._plan(touched)
        delay = 0.0
        if folders:
            outcome = self._sync(folders, full, self.prune_empty if full else True)
            if outcome != "done":
                waiting = dict(touched)
                delay = BUSY_RETRY_S if outcome == "busy" else ERROR_RETRY_S
        with self._cond:
            for path in touched:
                if path not in waiting:
                    self._stats.pop(path, None)
            if waiting:
                now = time.monotonic()
                if not self._pending:
                    self._first = now
                self._last = max(self._last, now)
                for path, t in waiting.items():
                    self._pending[path] = min(t, self._pending.get(path, t))
                self._not_before = now + delay if delay else 0.0

    def _plan(self, touched: dict[str, float]) -> tuple[list[str], bool, dict[str, float]]:
        """The folders to sync now, whether they are whole roots, and the paths that must wait
        (under a folder with a file still being written)."""
        now = time.monotonic()
        where: dict[str, tuple[str, str]] = {}  # path -> (root, folder to sync)
        for path in touched:
            root = self._root_of(path)
            if root is not None and self._state[root].ident is not None:
                where[path] = (root, _scope(path, root))  # a gone root is synced in full when it is back
        folders = _outermost({scope for _, scope in where.values()})
        full = (
            self._user_globs
            or len(folders) > MAX_SCOPES
            or any(scope == root or not _same_device(scope, root) for root, scope in where.values())
        )
        if full:
            folders = sorted({root for root, _ in where.values()})
        unsettled = {p for p in where if not self._settled(p, now)}
        held = set()
        for folder in folders:
            under = [p for p in where if in_scope(p, [folder])]
            # Held while a file in it is being written, but not for ever: a copy that goes on for
            # minutes gets its finished files in (and a partial one is read again once it changes).
            if unsettled.intersection(under) and now - min(touched[p] for p in under) < SETTLE_MAX_S:
                held.add(folder)
        waiting = {p: touched[p] for p in where if any(in_scope(p, [f]) for f in held)}
        return [f for f in folders if f not in held], full, waiting

    def _settled(self, path: str, now: float) -> bool:
        """False while a file's size or mtime changed within the quiet window."""
        stamp = _stamp(path)
        if stamp is None:
            return True  # gone, or a folder: nothing is being written
        with self._cond:
            seen = self._stats.get(path)
            if seen is None or seen[:2] != stamp:
                self._stats[path] = (*stamp, now)
                return False
            return now - seen[2] >= self.quiet

    def _sync(self, folders: list[str], full: bool, prune_empty: bool) -> str:
        """One incremental ingest of these folders: "done", or "busy" / "failed" to try again later."""
        present = [f for f in folders if os.path.isdir(f)]
        if not present:
            return "done"
        if not self._lib.collection.is_current():
            raise ModelMismatch(
                f"--db {self._lib.collection.uri} now holds another model's vectors (clipdex reembed); "
                "start clipdex watch again"
            )
        started = time.monotonic()
        try:
            report = self._lib.ingest(present, prune_empty=prune_empty, stop=self.stop_event, command="watch")
        except CollectionBusy as exc:
            self._notice("busy", f"{exc} (clipdex watch waits: it tries again every {BUSY_RETRY_S:g} s)")
            return "busy"
        except InputNotFound:
            return "done"  # a folder went between the check and the scan: its own event follows
        except USER_ERRORS as exc:
            self._notice("error", f"sync of {', '.join(present)} failed: {exc}; trying again in {ERROR_RETRY_S:g} s")
            return "failed"
        self._said = {s for s in self._said if not s.startswith(("busy: ", "error: "))}
        report.notes = [n for n in report.notes if self._once("note: " + n)]
        self.syncs += 1
        self._on_sync(Synced(report, tuple(present), full, time.monotonic() - started))
        return "done"

    def _notice(self, kind: str, message: str, state: _Root | None = None) -> None:
        if kind in ("busy", "error") and not self._once(f"{kind}: {message}"):
            return
        self._on_notice(Notice(kind, message, state.path if state else None))

    def _once(self, line: str) -> bool:
        if line in self._said:
            return False
        self._said.add(line)
        return True


def _check_roots(roots: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Real, absolute folder paths, as ingest stores them."""
    if not roots:
        raise BadOption("give at least one folder to watch")
    found = []
    for given in roots:
        text = os.fspath(given)
        if is_uri(text):
            raise BadOption(
                f"{text}: object stores send no change events; run clipdex ingest {text} on a schedule instead"
            )
        path = os.path.abspath(os.path.expanduser(text))
        if not os.path.lexists(path):
            raise InputNotFound(f"{path} does not exist; check the folder to watch")
        if not os.path.isdir(path):
            raise BadOption(f"{path} is not a folder; watch the folder it is in")
        found.append(os.path.realpath(path))
    return [r for r in dict.fromkeys(found) if not any(o != r and in_scope(r, [o]) for o in found)]  # outermost


def _ident(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def _stamp(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a regular file; None for anything else."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def _scope(path: str, root: str) -> str:
    """The folder to sync for a touched path: the root itself, else the nearest existing folder
    above the path (a deleted file's folder, or above a deleted folder)."""
    if path == root:
        return root
    folder = os.path.dirname(path)
    while folder != root and in_scope(folder, [root]) and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return folder if in_scope(folder, [root]) else root


def _outermost(folders: set[str]) -> list[str]:
    """The folders that lie under no other one of them."""
    return sorted(f for f in folders if not any(o != f and in_scope(f, [o]) for o in folders))


def _same_device(folder: str, root: str) -> bool:
    """False for a folder on another file system than its root (a mount inside a root): when it
    looks empty, that may be an unmounted drive, so it is synced like a root."""
    a, b = _ident(folder), _ident(root)
    return a is None or b is None or a[0] == b[0]


def _folders(n: int, adjective: str = "") -> str:
    return f"{n} {adjective}folder" + ("" if n == 1 else "s")


__all__ = ["MAX_WAIT_S", "QUIET_S", "TEMP_GLOBS", "Notice", "Synced", "Watcher"]
