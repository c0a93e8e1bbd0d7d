"""Nothing lost under crashes, interrupts, concurrent writers, full or read-only disks and hostile input.

The CLI runs as a real subprocess (decode workers and all) where a test kills or interrupts it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import Clipdex
from pipeline.ingest.decode import content_hash
from pipeline.ingest.scan import Scanner
from storage import Collection
from tests import corpus
from tests.conftest import open_library, run, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLIPDEX = str(Path(sys.executable).parent / "clipdex")


def start(*args: str) -> subprocess.Popen[str]:
    """`clipdex ARGS` in its own process group (as a shell would start it), output captured."""
    return subprocess.Popen(
        [CLIPDEX, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finish(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([CLIPDEX, *args], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done


class Library:
    """A folder of images that a test changes, knowing which files are valid and which broken."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.valid: set[Path] = set()
        self.broken: set[Path] = set()
        self.next_seed = 10_000

    def add(self, count: int) -> None:
        for _ in range(count):
            self.next_seed += 1
            path = self.root / f"sub{self.next_seed % 3}" / f"img {self.next_seed}.jpg"
            corpus.pattern_image(path, seed=self.next_seed)
            self.valid.add(path)

    def pick(self, count: int) -> list[Path]:
        pool = sorted(self.valid)
        return [pool[i] for i in self.rng.choice(len(pool), size=min(count, len(pool)), replace=False)]

    def change(self, count: int) -> None:
        for path in self.pick(count):
            self.next_seed += 1
            corpus.pattern_image(path, seed=self.next_seed, size=(64 + self.next_seed % 5, 48))

    def delete(self, count: int) -> None:
        for path in self.pick(count):
            path.unlink()
            self.valid.discard(path)

    def move(self, count: int) -> None:
        for path in self.pick(count):
            target = path.with_name("moved " + path.name)
            path.rename(target)
            self.valid.discard(path)
            self.valid.add(target)

    def break_some(self, count: int, truncated: Path) -> None:
        for path in self.pick(count):
            shutil.copy(truncated, path)
            self.valid.discard(path)
            self.broken.add(path)

    def mutate(self, truncated: Path) -> None:
        self.change(12)
        self.delete(8)
        self.move(4)
        self.break_some(1, truncated)
        self.add(24)


def assert_consistent(db: str, lib: Library, reference: Clipdex) -> None:
    """Exactly the valid files stored, once each, with vectors of their current bytes; the broken
    ones recorded as failures and nothing else."""
    collection = Collection.open(db)
    paths = [p for batch in collection.iter_rows(["path"]) for p in batch.column("path").to_pylist()]
    assert len(paths) == len(set(paths)), "a path is stored twice"
    assert set(paths) == {str(p) for p in lib.valid}
    states = collection.file_states()
    stale = [p for p, s in states.items() if s.hash != content_hash(Path(p).read_bytes())]
    assert not stale, f"rows that do not describe the file's bytes: {stale[:3]}"
    assert {f.path for f in collection.failures()} == {str(p) for p in lib.broken}
    # Vectors equal those of a clean ingest of the same files.
    reference.ingest([lib.root])
    ids, matrix = collection.vectors()
    mine = dict(zip(ids, matrix, strict=True))
    ref_ids, ref_matrix = reference.collection.vectors()
    theirs = dict(zip(ref_ids, ref_matrix, strict=True))
    ref_states = reference.collection.file_states()
    cosines = [float(mine[states[p].id] @ theirs[ref_states[p].id]) for p in states]
    assert min(cosines) >= 0.9999


def test_sigkill_at_random_points_loses_nothing(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPDEX_COMMIT_ROWS", "4")  # many commits, so that kills land between and during them
    lib = Library(tmp_path / "photos", seed=7)
    lib.add(120)
    truncated = corpus.bad_files(tmp_path / "bad")["truncated_jpeg"]
    db = str(tmp_path / "db")
    args = ("ingest", str(lib.root), "--db", db, "--model", tiny_model, "--workers", "2", "--batch-size", "4",
            "--precision", "fp32")  # fmt: skip
    began = time.monotonic()
    finish(*args)
    full = time.monotonic() - began
    began = time.monotonic()
    finish(*args)  # nothing to do: start-up, scan and compare
    idle = time.monotonic() - began
    reference = open_library(str(tmp_path / "reference"), tiny_model, precision="fp32")
    per_file = (full - idle) / 120
    rng = np.random.default_rng(11)
    killed = 0
    for _ in range(4):
        lib.mutate(truncated)
        process = start(*args)
        wait_for_writer(db, process)
        # Somewhere in the run's work (37 files to decode): scanning, hashing moved files,
        # decoding, writing batches, deleting rows, optimizing.
        time.sleep(rng.uniform(0.0, 0.8) * 37 * per_file)  # within the run, on a machine slower than its first
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        killed += process.returncode == -signal.SIGKILL
        finish(*args)
        assert_consistent(db, lib, reference)
    assert killed >= 3, f"only {killed} of 4 runs were still running when killed"


def wait_for_writer(db: str, process: subprocess.Popen[str]) -> None:
    """Until the process holds the collection's writer lock (its model is loaded, its work begins)."""
    lock = Path(db) / ".clipdex-writer"
    deadline = time.monotonic() + 60
    while not (lock.exists() and f"(pid {process.pid}," in lock.read_text()):
        assert time.monotonic() < deadline and process.poll() is None, "the ingest did not take the writer lock"
        time.sleep(0.02)


def test_ctrl_c_stops_after_the_batch_and_the_next_run_finishes(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPDEX_COMMIT_ROWS", "4")
    lib = Library(tmp_path / "photos", seed=3)
    lib.add(400)
    db = str(tmp_path / "db")
    args = ("ingest", str(lib.root), "--db", db, "--model", tiny_model, "--workers", "2", "--batch-size", "4")
    process = start(*args)
    deadline = time.monotonic() + 120
    while not (os.path.isdir(db) and _rows(db) >= 8):
        assert time.monotonic() < deadline and process.poll() is None, "the ingest wrote nothing"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping after the batch being written" in stderr
    assert stderr.rstrip().endswith("interrupted: what is written is kept; run the same command again to do the rest")
    stored = _rows(db)
    assert 8 <= stored < 400
    report = json.loads(finish(*args, "--json").stdout)
    assert (report["added"], report["unchanged"], report["interrupted"]) == (400 - stored, stored, False)


def _rows(db: str) -> int:
    try:
        return Collection.open(db).count()
    except Exception:  # created but not complete yet
        return 0


@pytest.fixture
def busy_ingest(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, subprocess.Popen[str], Library]]:
    """A collection with 40 images, and a long ingest of 600 more running on it, committing often."""
    monkeypatch.setenv("CLIPDEX_COMMIT_ROWS", "8")
    lib = Library(tmp_path / "photos", seed=5)
    lib.add(40)
    db = str(tmp_path / "db")
    finish("ingest", str(lib.root), "--db", db, "--model", tiny_model)
    lib.add(600)
    process = start("ingest", str(lib.root), "--db", db, "--workers", "1", "--batch-size", "4")
    wait_for_writer(db, process)
    try:
        yield db, process, lib
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def test_second_writer_is_refused_while_queries_go_on(
    busy_ingest: tuple[str, subprocess.Popen[str], Library], tmp_path: Path, tiny_model: str
) -> None:
    db, process, lib = busy_ingest
    second = run("ingest", str(lib.root), "--db", db, ok=False)
    assert second.stderr.startswith(f"Error: --db {db}: clipdex ingest (pid {process.pid}, since ")
    assert second.stderr.endswith("is writing to this collection; wait for it to finish (searches work meanwhile), "
                                  "or stop it\n")  # fmt: skip
    for command in (("classify", "--labels", "a,b", "--store", "tag"), ("reembed", "--model", tiny_model)):
        assert "is writing to this collection" in run(*command, "--db", db, ok=False).stderr
    reader = Clipdex.open(db)
    counts = []
    with serving(reader, tmp_path / "thumbs") as url:
        while process.poll() is None:
            assert len(run("search", "a photo", "--db", db, "-k", "5", "--paths").stdout.splitlines()) == 5
            query = urllib.parse.urlencode({"q": "a photo", "k": 5})
            with urllib.request.urlopen(f"{url}/api/search?{query}", timeout=30) as response:
                assert len(json.loads(response.read())["hits"]) == 5
            counts.append(reader.collection.count())
    assert process.wait() == 0
    assert counts == sorted(counts) and counts[-1] > 40  # queries saw the ingest's commits as they came
    assert Collection.open(db).count() == 640
    again = json.loads(run("ingest", str(lib.root), "--db", db, "--json").stdout.splitlines()[-1])
    assert (again["added"], again["unchanged"]) == (0, 640)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for the test (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_and_read_only_collection_fail_in_one_line_and_keep_the_rows(
    small_disk: Path, tmp_path: Path, tiny_model: str
) -> None:
    lib = Library(tmp_path / "photos", seed=9)
    lib.add(20)
    db = str(small_disk / "db")
    finish("ingest", str(lib.root), "--db", db, "--model", tiny_model)
    before = sorted(run("search", "a photo", "--db", db, "-k", "20", "--paths").stdout.splitlines())
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 16 * 1024))  # leave 16 KB
    lib.add(200)
    full = subprocess.run([CLIPDEX, "ingest", str(lib.root), "--db", db], capture_output=True, text=True, check=False)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: --db {db}: cannot write (") and "No space left on device" in last
    assert last.endswith("check free space and permissions, or use another --db")
    assert sorted(run("search", "a photo", "--db", db, "-k", "20", "--paths").stdout.splitlines())[:20] == before
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    readonly = subprocess.run(
        [CLIPDEX, "ingest", str(lib.root), "--db", db], capture_output=True, text=True, check=False
    )
    assert readonly.returncode == 1
    assert readonly.stderr.strip().splitlines()[-1].startswith(f"Error: --db {db}: cannot write (Read-only file system")
    assert len(run("search", "a photo", "--db", db, "-k", "300", "--paths").stdout.splitlines()) >= 20
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    finish("ingest", str(lib.root), "--db", db)
    assert Collection.open(db).count() == 220


def test_hostile_folder(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of bad input in one folder, decoded by worker processes: no crash, each failure
    recorded with its reason, every valid image embedded."""
    root = tmp_path / "hostile"
    valid = {str(p) for p in corpus.good_images(root / "good").values()}
    bad = {str(p) for p in corpus.bad_files(root / "bad").values()}
    others = corpus.non_images(root / "other")  # text files are skipped; a fake video is a failure
    bad.add(str(others["clip.mp4"]))
    panorama = root / "panorama 全景.jpg"
    Image.new("RGB", (24_000, 300), (20, 120, 200)).save(panorama, quality=80)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(root / "one pixel.png")
    Image.new("RGB", (3, 2000), (0, 255, 0)).save(root / "sliver.png")
    corpus.pattern_image(root / "ünïcödé dir" / "çafé 😀.jpg", seed=1)
    corpus.pattern_image(root / "name with  spaces .jpg", seed=2)
    valid |= {str(panorama), str(root / "one pixel.png"), str(root / "sliver.png"),
              str(root / "ünïcödé dir" / "çafé 😀.jpg"), str(root / "name with  spaces .jpg")}  # fmt: skip
    (root / "loop").mkdir()
    (root / "loop" / "back").symlink_to(root, target_is_directory=True)  # a symlink loop
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    bad.add(str(root / "dangling.jpg"))
    vanishing = corpus.pattern_image(root / "vanishing.jpg", seed=3)
    scan = Scanner.scan

    def scan_then_delete(self: Scanner, roots: list[str]) -> object:
        result = scan(self, roots)
        vanishing.unlink()  # deleted after the scan saw it, before a worker opens it
        return result

    monkeypatch.setattr(Scanner, "scan", scan_then_delete)
    lib = open_library(str(tmp_path / "db"), tiny_model, workers=2)
    report = lib.ingest([root])
    assert report.vanished == 1
    assert set(lib.collection.file_states()) == valid
    failures = {f.path: f.reason for f in lib.collection.failures()}
    assert set(failures) == bad
    assert all(reason and "\n" not in reason for reason in failures.values())
    assert lib.search("a photo", k=1)  # the collection answers
    monkeypatch.setattr(Scanner, "scan", scan)
    again = lib.ingest([root])
    assert (again.added, again.updated, again.unchanged, again.failed) == (0, 0, len(valid), len(bad))
