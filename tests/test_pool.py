"""The decode pool with real worker processes: a worker that dies costs only its file, a file that
never finishes is a failure after the time limit, and workers end with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.ingest.decode import DecodeFailed
from pipeline.ingest.pool import DecodePool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parent.parent


def crash_on_boom(path: str) -> str:
    """A 'decoder' that kills its own process on one file (as a codec crash or the OOM killer does)."""
    if path.startswith("boom"):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return path


def hang_on_slow(path: str) -> str:
    if path == "slow":
        time.sleep(3600)
    return path


def worker_pid(_: str) -> int:
    return os.getpid()


def test_a_worker_killed_by_its_file_costs_only_that_file() -> None:
    paths = [f"ok{i}" for i in range(40)]
    paths[7], paths[23] = "boom-1", "boom-2"
    with DecodePool(2) as pool:
        results = list(pool.map(crash_on_boom, paths))
    done = sorted(r for r in results if isinstance(r, str))
    failed = {r.path: r.reason for r in results if isinstance(r, DecodeFailed)}
    assert done == sorted(p for p in paths if not p.startswith("boom"))  # every bystander, once
    assert failed == dict.fromkeys(["boom-1", "boom-2"], "the decoder crashed on this file (killed by signal 9)")


def test_a_file_that_never_finishes_is_a_failure_after_the_time_limit() -> None:
    with DecodePool(2, timeout=2) as pool:
        started = time.monotonic()
        results = list(pool.map(hang_on_slow, ["a", "slow", "b", "c", "d"]))
    assert time.monotonic() - started < 60
    assert sorted(r for r in results if isinstance(r, str)) == ["a", "b", "c", "d"]
    (failure,) = [r for r in results if isinstance(r, DecodeFailed)]
    assert (failure.path, failure.reason) == ("slow", "decoding took longer than 2 s; the file was skipped")


def test_a_worker_killed_from_outside_is_replaced_and_the_run_goes_on() -> None:
    with DecodePool(2) as pool:
        pids = set(pool.map(worker_pid, ["x", "y", "z", "w"]))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # idle workers, killed between two maps
        assert len(list(pool.map(crash_on_boom, [f"ok{i}" for i in range(10)]))) == 10


def test_workers_end_with_their_parent() -> None:
    """SIGKILL of the process that owns the pool: no worker is left behind."""
    code = textwrap.dedent(
        """
        import os, sys, time
        from pipeline.ingest.pool import DecodePool
        from tests.test_pool import worker_pid
        with DecodePool(2) as pool:
            print(*sorted(set(pool.map(worker_pid, ["a", "b", "c", "d", "e", "f"]))), flush=True)
            time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert pids and all(_alive(p) for p in pids)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


CLIPDEX = str(Path(sys.executable).parent / "clipdex")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _ingest(tmp_path: Path, tiny_model: str, count: int) -> tuple[Path, str, subprocess.Popen[str]]:
    from tests import corpus  # noqa: PLC0415

    root = tmp_path / "many"
    for i in range(count):
        corpus.pattern_image(root / f"{i:04d}.jpg", seed=i, size=(640, 480))
    db = str(tmp_path / "db")
    env = os.environ | {"CLIPDEX_WORKERS": "2"}
    args = [CLIPDEX, "ingest", str(root), "--db", db, "--model", tiny_model, "--json"]
    return root, db, subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _decode_workers(process: subprocess.Popen[str]) -> list[int]:
    """The decode workers of a running ingest, as soon as they are there."""
    deadline = time.monotonic() + 120
    while not (workers := _children(process.pid)) and process.poll() is None:
        assert time.monotonic() < deadline, "no decode worker appeared"
        time.sleep(0.02)
    return workers


def test_ingest_survives_a_decode_worker_killed_mid_run(tmp_path: Path, tiny_model: str) -> None:
    _, db, process = _ingest(tmp_path, tiny_model, 400)
    workers = _decode_workers(process)
    assert process.poll() is None, "the ingest ended before a worker could be killed"
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    import json  # noqa: PLC0415

    counts = json.loads(out.strip().splitlines()[-1])
    # The files the killed worker held were tried again alone, and (being sound) stored.
    assert (counts["added"], counts["failed"]) == (400, 0)
    from storage import Collection  # noqa: PLC0415

    assert Collection.open(db).count() == 400


def test_killing_the_ingest_leaves_no_decode_worker(tmp_path: Path, tiny_model: str) -> None:
    _, _, process = _ingest(tmp_path, tiny_model, 400)
    workers = _decode_workers(process)
    assert workers, "the ingest ended before it could be killed"
    process.kill()
    process.communicate()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
