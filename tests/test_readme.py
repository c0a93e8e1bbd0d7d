"""The README's examples, executed as written, so the README cannot drift from the code.

Python blocks run with exec; shell blocks run command by command (the clipdex CLI in-process,
`serve` and `watch` as real processes). They run in a home folder made here, holding the paths
the README names (~/Pictures, ./photo.jpg, captions.csv, ...). What is swapped is listed in
SWAPS, each with why: model ids (no weights can be downloaded), a stored image id, port 8000,
a NAS mount. What is not run is listed in NOT_RUN, each with why (installs, Ray clusters, the
suite itself): a command that is in neither list and cannot run fails this test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import USER_ERRORS
from tests import corpus
from tests.conftest import free_port
from tests.test_video import PICTURES, write_video

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MODEL = "local-dir:/models/clip-vit-b-32"
OTHER_MODELS = ("local-dir:/models/other", "local-dir:/models/vit-l-14")
EXAMPLE_ID = "3f2a9c0d1e4b5a69"
TOKEN = "0123456789abcdef0123456789abcdef"

# Commands that are not run here, by the first words that identify them, and why.
NOT_RUN = {
    "python3 -m venv": "an install: .ci/run performs it on a fresh machine",
    ".venv/bin/pip install": "an install: .ci/run performs it on a fresh machine",
    ".venv/bin/python -m pytest": "the test suite itself",
    ".venv/bin/ruff": "lint, run by .ci/run",
    ".venv/bin/mypy": "type checks, run by .ci/run",
    "--engine ray": "needs a Ray cluster and a bucket; tests/test_ray.py runs the Ray engine",
    "--config configs/cluster.toml": "the Ray cluster settings; tests/test_ray.py runs the Ray engine",
}
# Commands expected to fail, by a word they contain: the README shows their error message.
FAILS_ON_PURPOSE = ("widht",)
LONG_RUNNING = ("serve", "watch")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@dataclass(frozen=True)
class Command:
    """One command of a README shell block: its words, the README line, and what it pipes into."""

    block: int
    line: int
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)  # VAR=value words before the command
    piped_into: list[str] = field(default_factory=list)


def shell_commands() -> list[Command]:
    """Every command of every ```sh block, in README order (continuations joined, && and | split)."""
    commands: list[Command] = []
    text = README.read_text(encoding="utf-8").splitlines()
    inside, pending, start, block = False, "", 0, 0
    for number, raw in enumerate(text, 1):
        if raw.startswith("```"):
            inside = raw.strip() == "```sh"
            block += inside
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = pending + raw, ""
        line = re.sub(r"\[(--[^\]]*)\]", r"\1", line)  # [--near 0.95]: an optional flag, given
        words = shlex.split(line, comments=True)
        for chain in _split(words, "&&"):
            stages = _split(chain, "|")
            env: dict[str, str] = {}
            head = stages[0]
            while head and re.fullmatch(r"[A-Z_]+=.*", head[0]):
                name, _, value = head.pop(0).partition("=")
                env[name] = value
            commands.append(Command(block, start, head, env, [w for stage in stages[1:] for w in stage]))
    return commands


def _split(words: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word == separator:
            parts.append([])
        else:
            parts[-1].append(word)
    return [part for part in parts if part]


def not_run(command: Command) -> str | None:
    text = " ".join(command.words)
    return next((why for words, why in NOT_RUN.items() if text.startswith(words) or f" {words}" in text), None)


def test_the_readme_has_examples() -> None:
    assert python_blocks()
    commands = shell_commands()
    assert any(c.words[:1] == ["clipdex"] for c in commands)
    assert sum(not_run(c) is None for c in commands) > 20  # most of them run


def test_the_readme_is_well_formed() -> None:
    """No stray draft: every section heading once, HTML comments closed, code fences paired."""
    text = README.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == len(set(headings)), [h for h in headings if headings.count(h) > 1]
    assert all('"' not in h for h in headings), headings
    assert text.count("<!--") == text.count("-->")
    assert sum(line.startswith("```") for line in text.splitlines()) % 2 == 0


@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_readme_python_example_runs_as_written(
    number: int, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path / "work")
    code = python_blocks()[number]
    assert README_MODEL in code or "Clipdex.open" not in code  # the one thing swapped
    exec(compile(code.replace(README_MODEL, tiny_model), f"README.md python block {number + 1}", "exec"), {})
    assert (home / "photos.clipdex").is_dir() or "Clipdex.open" not in code


def make_home(tmp_path: Path) -> Path:
    """A home folder with the files the README's examples name, and a working folder beside it."""
    home = tmp_path / "home"
    pictures = corpus.good_images(home / "Pictures")
    corpus.pattern_image(home / "Pictures" / "2024" / "beach.jpg", seed=7)
    write_video(home / "Pictures" / "party.mp4", list(PICTURES.values()))  # the Videos section's
    (home / "Downloads").mkdir(parents=True)
    (home / "Downloads" / "query.jpg").write_bytes(pictures["jpeg"].read_bytes())
    captioned = home / "captioned"
    for seed in range(3):
        corpus.pattern_image(captioned / f"scene{seed}.jpg", seed=seed + 20)
        (captioned / f"scene{seed}.txt").write_text(f"a pattern of kind {seed}\n")
    work = tmp_path / "work"
    shutil.copytree(ROOT / "configs", work / "configs")  # the README's commands run in a checkout
    (work / "photo.jpg").write_bytes(pictures["jpeg"].read_bytes())
    (work / "holiday.jpg").write_bytes(pictures["jpeg"].read_bytes())
    (work / "captions.csv").write_text(f"path,caption\n{home}/Pictures/photo.jpg,a dog on the beach\n")
    (tmp_path / "nas-photos").mkdir()
    corpus.pattern_image(tmp_path / "nas-photos" / "nas.jpg", seed=9)
    return home


class Shell:
    """Runs README commands in order, in one home: the CLI in-process, serve and watch as processes."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swaps: dict[str, str]) -> None:
        self.tmp_path, self.monkeypatch, self.swaps = tmp_path, monkeypatch, swaps
        self.home = tmp_path / "home"
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ran: list[str] = []
        self.block = 0
        self.exported: dict[str, str | None] = {}  # what this block's `export`s replaced

    def expand(self, word: str) -> str:
        word = os.path.expandvars(word.replace("$(openssl rand -hex 16)", TOKEN))
        word = word.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        for old, new in self.swaps.items():
            word = word.replace(old, new)
        if word.startswith("~"):
            word = str(self.home) + word[1:]
        return word

    def run(self, command: Command) -> None:
        if command.block != self.block:  # each block is a shell of its own: its exports and servers end
            self.stop()
            for name, value in self.exported.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self.exported.clear()
            self.block = command.block
        words = [self.expand(w) for w in command.words]
        where = f"README.md line {command.line}: {' '.join(command.words)}"
        if words[0] == "export":
            for word in words[1:]:
                name, _, value = word.partition("=")
                self.exported.setdefault(name, os.environ.get(name))
                self.monkeypatch.setenv(name, self.expand(value))
            return
        assert Path(words[0]).name == "clipdex", f"{where}: not a clipdex command; run it here or add it to NOT_RUN"
        args = [w for w in words[1:] if w]
        self.ran.append(args[0] if args else "")
        if any(cmd in args[:1] or f"--config {cmd}" in " ".join(args) for cmd in LONG_RUNNING):
            self.start(args, where)
            return
        env = {k: self.expand(v) for k, v in command.env.items()}
        if any(word in " ".join(args) for word in FAILS_ON_PURPOSE):
            self.fails_on_purpose(args, env, where)
            return
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        output = result.output + result.stderr
        assert "Traceback" not in output, f"{where}\n{output}"
        assert result.exit_code == 0, f"{where}\n{output}"
        if "--json" in args and result.stdout.strip():
            json.loads(result.stdout.strip().splitlines()[-1])
        if command.piped_into[:1] == ["xargs"]:
            lines = result.stdout.splitlines()
            assert lines, f"{where}: nothing for xargs"
            assert all(Path(line).is_file() for line in lines), f"{where}: not one path a line\n{result.stdout}"

    def fails_on_purpose(self, args: list[str], env: dict[str, str], where: str) -> None:
        """A command the README shows failing: one line and exit 1, or with CLIPDEX_DEBUG the error itself."""
        result = CliRunner().invoke(cli, args, env={k: v for k, v in env.items() if k != "CLIPDEX_DEBUG"})
        assert result.exit_code == 1, f"{where}: meant to fail\n{result.output}"
        assert len(result.stderr.strip().splitlines()) == 1, f"{where}: one line\n{result.stderr}"
        if "CLIPDEX_DEBUG" in env:
            debug = CliRunner().invoke(cli, args, env=env)
            assert isinstance(debug.exception, USER_ERRORS), f"{where}: {debug.exception!r}"

    def start(self, args: list[str], where: str) -> None:
        """A long-running command as a real process, until it answers (serve) or reports (watch)."""
        self.stop()
        if args[0] == "serve" and "--port" not in args:
            args = [*args, "--port", str(self.port)]  # the README's 8000 may be taken here
        clipdex = Path(sys.executable).parent / "clipdex"
        log = self.tmp_path / f"{args[0]}-{len(self.ran)}.log"
        with log.open("wb") as out:  # a file, not a pipe: a chatty process never blocks on it
            process = subprocess.Popen(
                [str(clipdex), *args], stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
        self.processes.append(process)
        deadline = time.monotonic() + 90
        if args[0] == "serve":
            host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
            url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}/api/info"
            while True:
                assert process.poll() is None, f"{where}: exited\n{log.read_text()}"
                assert time.monotonic() < deadline, f"{where}: did not answer in 90 s"
                try:
                    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
                    with urllib.request.urlopen(request, timeout=2) as response:
                        assert response.status == 200
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.3)
            if "--token" in args or os.environ.get("CLIPDEX_TOKEN"):  # a token server refuses a stranger
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(url, timeout=5)
                refused.value.close()
                assert refused.value.code == 401
        else:  # watch: runs until its first sync is reported
            while "\n" not in log.read_text():
                assert process.poll() is None, f"{where}: exited\n{log.read_text()}"
                assert time.monotonic() < deadline, f"{where}: reported nothing in 90 s"
                time.sleep(0.3)
            assert "Traceback" not in log.read_text(), f"{where}\n{log.read_text()}"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            if process.poll() is None:
                process.kill()
                process.wait()
        self.processes.clear()


@pytest.fixture
def shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: str, other_model: str, s3: str
) -> Iterator[Shell]:
    make_home(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    # Not swapped: every other word. Swapped, and why:
    swaps = {
        README_MODEL: tiny_model,  # no weights can be downloaded; a model built at test time
        **dict.fromkeys(OTHER_MODELS, other_model),  # a second model, for eval and reembed
        "/mnt/nas/photos": str(tmp_path / "nas-photos"),  # a NAS mount, as a folder
        "http://127.0.0.1:9000": os.environ["AWS_ENDPOINT"],  # the README's MinIO is moto here
        "AWS_ACCESS_KEY_ID=...": "AWS_ACCESS_KEY_ID=test",
        "AWS_SECRET_ACCESS_KEY=...": "AWS_SECRET_ACCESS_KEY=test",
    }
    # The Quick start's `clipdex ingest ~/Pictures` uses the default model, which needs a download:
    monkeypatch.setattr("pipeline.library.DEFAULT_MODEL", tiny_model)
    monkeypatch.setattr("pipeline.library.DEFAULT_PRETRAINED", "")
    runner = Shell(tmp_path, monkeypatch, swaps)
    try:
        yield runner
    finally:
        runner.stop()


@pytest.mark.slow
def test_readme_shell_examples_run_as_written(shell: Shell) -> None:
    assert s3_bucket_ready()
    skipped = []
    for command in shell_commands():
        why = not_run(command)
        if why:
            skipped.append(why)
            continue
        if EXAMPLE_ID in " ".join(command.words):
            # An id from the README's page: the first stored image's id stands in for it.
            shell.swaps[EXAMPLE_ID] = first_id()
        shell.run(command)
    assert {"ingest", "search", "similar", "serve", "watch", "export", "duplicates"} <= set(shell.ran)


def s3_bucket_ready() -> bool:
    return bool(os.environ.get("AWS_ENDPOINT"))


def first_id() -> str:
    result = CliRunner().invoke(cli, ["search", "a photo", "-k", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout.splitlines()[0])["id"])
