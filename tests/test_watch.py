"""clipdex watch and serve --watch: a collection kept in line with its folders by filesystem events."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline import Clipdex
from pipeline.errors import BadOption, InputNotFound, ModelMismatch
from pipeline.ingest.sync import IngestReport
from pipeline.maintain.watch import Notice, Synced, Watcher
from storage import Collection, StorageError
from tests import corpus
from tests.conftest import free_port, open_library, run

QUICK = {"quiet": 0.3, "max_wait": 3.0}  # the defaults (1 s, 10 s) scaled down: the same logic, sooner


def until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll until condition() is true; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)


@dataclass
class Seen:
    """What a watcher reported."""

    syncs: list[Synced] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.notices]


@contextlib.contextmanager
def watching(lib: Clipdex, roots: list[Path], **options: object) -> Iterator[tuple[Watcher, Seen]]:
    """A Watcher in its thread, past its start-up sync; stopped (and checked for errors) after."""
    seen = Seen()
    kwargs = {**QUICK, **options}
    watcher = Watcher(lib, roots, on_sync=seen.syncs.append, on_notice=seen.notices.append, **kwargs)  # type: ignore[arg-type]
    watcher.start()
    try:
        until(lambda: watcher.syncs >= 1 or watcher.error, "the start-up sync")
        yield watcher, seen
    finally:
        watcher.stop(timeout=20)
        assert watcher.error is None


def next_sync(seen: Seen, since: int, wanted: Callable[[IngestReport], bool], what: str) -> Synced:
    """The first sync after the first `since` whose report is as wanted (waiting for it)."""
    until(lambda: any(wanted(s.report) for s in seen.syncs[since:]), what)
    return next(s for s in seen.syncs[since:] if wanted(s.report))


def photos(root: Path, names: list[str], seed: int = 0) -> list[Path]:
    return [corpus.pattern_image(root / name, seed + i) for i, name in enumerate(names)]


def stored(lib: Clipdex, path: Path) -> bool:
    return lib.collection.get_by_path(str(path)) is not None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    photos(folder / "a", ["p0.jpg", "p1.jpg", "p2.jpg"])
    photos(folder / "b", ["q0.png"], seed=20)
    return folder


def test_new_photo_is_found_deleted_leaves_moved_keeps_its_vector(root: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    with watching(lib, [root]) as (_, seen):
        assert seen.syncs[0].full and seen.syncs[0].report.added == 4
        assert seen.kinds() == ["watching"] and "(inotify)" in seen.notices[0].message

        mark = len(seen.syncs)
        (new,) = photos(root / "a", ["new.jpg"], seed=50)
        synced = next_sync(seen, mark, lambda r: r.added == 1, "a new photo stored")
        assert lib.similar(new, k=1)[0].path == str(new)  # searchable, by its own vector
        assert synced.scopes == (str(root / "a"),) and not synced.full  # only its folder was scanned

        before = lib.collection.get_by_path(str(root / "a" / "p0.jpg"))
        assert before is not None
        mark = len(seen.syncs)
        os.rename(root / "a" / "p0.jpg", root / "b" / "p0.jpg")
        synced = next_sync(seen, mark, lambda r: r.moved == 1, "a moved photo under its new path")
        after = lib.collection.get_by_path(str(root / "b" / "p0.jpg"))
        assert after is not None and after.id == before.id and np.array_equal(after.vector, before.vector)
        assert not stored(lib, root / "a" / "p0.jpg") and synced.report.added == 0

        mark = len(seen.syncs)
        os.remove(root / "a" / "p1.jpg")
        next_sync(seen, mark, lambda r: r.removed == 1, "a deleted photo gone")
        assert not stored(lib, root / "a" / "p1.jpg") and lib.collection.count() == 4

        mark = len(seen.syncs)
        (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        next_sync(seen, mark, lambda r: bool(r.new_failures), "the broken file reported")
        mark = len(seen.syncs)
        photos(root / "a", ["later.jpg"], seed=60)
        next_sync(seen, mark, lambda r: r.added == 1, "the next photo, after a broken one")
        reported = [f.path for s in seen.syncs for f in s.report.new_failures]
        assert reported == [str(root / "a" / "broken.jpg")]  # once, not at every later sync
        assert [f.path for f in lib.collection.failures()] == reported


def test_files_being_written_are_ingested_once_when_complete(root: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    source = corpus.pattern_image(root.parent / "elsewhere" / "big.jpg", 7, size=(400, 300))
    data = source.read_bytes()
    with watching(lib, [root], max_wait=0.6) as (_, seen):
        # A slow copy: new bytes every 0.1 s for 1.5 s, so syncs come due (max_wait) while it runs.
        target = root / "a" / "slow.jpg"
        with target.open("wb") as f:
            for start in range(0, len(data), len(data) // 15 + 1):
                f.write(data[start : start + len(data) // 15 + 1])
                f.flush()
                time.sleep(0.1)
        until(lambda: stored(lib, target), "the copied photo stored")

        # A download under a temporary name, renamed when complete: never read before that.
        partial = root / "b" / "c.jpg.crdownload"
        partial.write_bytes(data[: len(data) // 2])
        photos(root / "b", ["other.png"], seed=70)  # a sync of that folder while the download is half done
        until(lambda: stored(lib, root / "b" / "other.png"), "a photo beside the download")
        partial.write_bytes(data)
        partial.rename(root / "b" / "c.jpg")
        until(lambda: stored(lib, root / "b" / "c.jpg"), "the downloaded photo stored")

    assert not stored(lib, partial)
    assert [s.report.new_failures for s in seen.syncs if s.report.new_failures] == []  # no half file read
    assert lib.collection.failures() == []
    counts = [(s.report.added, s.report.updated) for s in seen.syncs[1:]]
    assert sum(a for a, _ in counts) == 3 and sum(u for _, u in counts) == 0, counts  # each read once, whole
    record = lib.collection.get_by_path(str(target))
    assert record is not None and record.size == len(data)


def test_the_start_up_sync_catches_what_changed_while_nobody_watched(root: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    lib.ingest([root])
    os.remove(root / "a" / "p2.jpg")
    photos(root / "b", ["while-down.jpg"], seed=80)
    with watching(lib, [root]) as (_, seen):
        first = seen.syncs[0]
        assert first.full and first.scopes == (str(root),)
        assert (first.report.added, first.report.removed) == (1, 1)
        assert stored(lib, root / "b" / "while-down.jpg") and not stored(lib, root / "a" / "p2.jpg")


def test_a_root_that_disappears_is_said_and_watched_again_when_back(tmp_path: Path, db: str, tiny_model: str) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    photos(one, ["x.jpg"])
    photos(two, ["y.jpg", "z.jpg"], seed=10)
    lib = open_library(db, tiny_model)
    with watching(lib, [one, two]) as (_, seen):
        two.rename(tmp_path / "away")
        until(lambda: "gone" in seen.kinds(), "the root's disappearance said")
        gone = seen.notices[-1]
        assert gone.path == str(two) and "watching 1 other folder meanwhile" in gone.message
        mark = len(seen.syncs)
        photos(one, ["still.jpg"], seed=30)
        synced = next_sync(seen, mark, lambda r: r.added == 1, "the other root still watched")
        assert synced.scopes == (str(one),) and stored(lib, one / "still.jpg")
        assert stored(lib, two / "y.jpg") and stored(lib, two / "z.jpg")  # an unmounted drive keeps its rows

        photos(tmp_path / "away", ["added-away.jpg"], seed=40)
        mark = len(seen.syncs)
        (tmp_path / "away").rename(two)
        synced = next_sync(seen, mark, lambda r: r.added == 1, "the root synced in full when back")
        assert seen.kinds()[-1] == "back" and synced.full and synced.scopes == (str(two),)
        photos(two, ["after.jpg"], seed=45)
        until(lambda: stored(lib, two / "after.jpg"), "the root watched again")


def test_a_busy_collection_makes_syncs_wait_not_fail(root: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    with watching(lib, [root]) as (_, seen):
        other = Collection.open(db)
        with other.writer("ingest"):  # as another process's clipdex ingest would
            photos(root / "a", ["meanwhile.jpg"], seed=90)
            until(lambda: "busy" in seen.kinds(), "the wait said")
            assert not stored(lib, root / "a" / "meanwhile.jpg")
        until(lambda: stored(lib, root / "a" / "meanwhile.jpg"), "the sync after the other writer")
        assert seen.kinds().count("busy") == 1
        assert "is writing to this collection" in seen.notices[-1].message


def test_temporary_hidden_and_collection_files_are_not_looked_at(tmp_path: Path, tiny_model: str) -> None:
    root = tmp_path / "photos"
    photos(root, ["x.jpg"])
    lib = open_library(str(root / "db.clipdex"), tiny_model)  # the collection inside a watched folder
    watcher = Watcher(lib, [root])
    ignored = ["db.clipdex/images.lance/x", "x.jpg.part", "~$x.jpg", "a/.hidden/y.jpg", "@eaDir/y.jpg", "y.jpg.tmp"]
    watcher.touch([str(root / p) for p in ignored])
    assert watcher.pending() == []
    watcher.touch([str(root / "a" / "y.jpg"), str(tmp_path / "outside.jpg")])
    assert watcher.pending() == [str(root / "a" / "y.jpg")]


def test_bad_roots_are_refused_in_one_line(tmp_path: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    with pytest.raises(InputNotFound, match="does not exist; check the folder to watch"):
        Watcher(lib, [tmp_path / "missing"])
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(BadOption, match="is not a folder; watch the folder it is in"):
        Watcher(lib, [tmp_path / "f.jpg"])
    with pytest.raises(BadOption, match="object stores send no change events"):
        Watcher(lib, ["s3://bucket/photos"])


def test_polling_keeps_the_collection_current_too(root: Path, db: str, tiny_model: str) -> None:
    lib = open_library(db, tiny_model)
    with watching(lib, [root], poll=True, poll_interval=0.2) as (_, seen):
        assert "(polling every 0.2 s)" in seen.notices[0].message
        os.remove(root / "b" / "q0.png")
        until(lambda: not stored(lib, root / "b" / "q0.png"), "a deleted photo gone, seen by polling")


@contextlib.contextmanager
def interrupted_when_done(steps: Callable[[], None]) -> Iterator[list[BaseException]]:
    """Run steps in a thread while the body runs a command in this one, then send the Ctrl-C (SIGINT)
    that the command handles; the thread's failure is kept for the test to raise."""
    failed: list[BaseException] = []

    def helper() -> None:
        try:
            steps()
        except BaseException as exc:  # kept for the test: a thread's assertion would go unseen
            failed.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # always: a command left running would hang the test

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    yield failed
    thread.join(10)
    if failed:
        raise failed[0]


def count(db: str) -> int:
    try:
        return Collection.open(db).count()
    except StorageError:
        return -1  # not created yet


@pytest.mark.timeout(90)
def test_watch_command_prints_one_line_per_sync_and_stops_on_ctrl_c(root: Path, db: str, tiny_model: str) -> None:
    def steps() -> None:
        until(lambda: count(db) == 4, "the start-up sync")
        photos(root / "a", ["cli.jpg"], seed=95)
        until(lambda: count(db) == 5, "the new photo")

    with interrupted_when_done(steps):
        result = run("watch", str(root), "--db", db, "--model", tiny_model, "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["watching", "sync", "sync"], lines
    assert lines[1]["full"] and lines[1]["added"] == 4
    assert lines[2]["added"] == 1 and lines[2]["folders"] == [str(root / "a")] and not lines[2]["full"]
    assert "stopping after the batch being written" in result.stderr


@pytest.mark.timeout(90)
def test_serve_watch_serves_new_photos_within_seconds(root: Path, db: str, tiny_model: str, tmp_path: Path) -> None:
    """One process, a server and a watcher: what the watcher writes, the server finds; Ctrl-C ends both.

    A real `clipdex serve --watch` process, as a person starts it (the model, the server's event loop,
    the watcher's thread and a real SIGINT in a process of their own)."""
    port = free_port()

    def paths() -> list[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=photo&k=100", timeout=2) as response:
                return [hit["path"] for hit in json.load(response)["hits"]]
        except OSError:
            return []

    log = tmp_path / "serve.log"
    clipdex = Path(sys.executable).parent / "clipdex"
    args = ["serve", "--watch", str(root), "--db", db, "--model", tiny_model, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen([str(clipdex), *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        until(lambda: len(paths()) == 4 or process.poll() is not None, "the server, with the start-up sync", 90)
        (new,) = photos(root / "b", ["served.jpg"], seed=99)
        until(lambda: str(new) in paths(), "a new photo served", 20)
        os.remove(root / "a" / "p0.jpg")
        until(lambda: str(root / "a" / "p0.jpg") not in paths(), "a deleted photo no longer served", 20)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert f"full sync of {root}: +4 new" in output
    assert "+1 new (" in output and "1 removed (" in output, output


def test_a_switch_to_another_model_stops_the_watcher_in_one_line(
    root: Path, db: str, tiny_model: str, other_model: str
) -> None:
    lib = open_library(db, tiny_model)
    seen = Seen()
    watcher = Watcher(lib, [root], on_sync=seen.syncs.append, on_notice=seen.notices.append, **QUICK)  # type: ignore[arg-type]
    watcher.start()
    try:
        until(lambda: watcher.syncs == 1, "the start-up sync")
        run("reembed", "--db", db, "--model", other_model)
        photos(root / "a", ["after-reembed.jpg"], seed=33)
        until(lambda: "stopped" in seen.kinds(), "the watcher stopping")
    finally:
        watcher.stop(timeout=20)
    assert isinstance(watcher.error, ModelMismatch)
    assert seen.notices[-1].message.endswith(
        "now holds another model's vectors (clipdex reembed); start clipdex watch again"
    )
    assert Collection.open(db).get_by_path(str(root / "a" / "after-reembed.jpg")) is None  # nothing mixed in
