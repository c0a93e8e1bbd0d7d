"""The CLI's rough edges (issue 14): --config before the command, --server with --db and --token,
serve on a busy port, misspelt model names, the table's width, progress, info and cluster --auto.

One collection, ingested once for the module, serves every test that only reads it.
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline import Clipdex
from pipeline.analyse.clusters import choose_k_by_silhouette
from pipeline.cli.render import ProgressView, counts_text, hits_table, report_text
from pipeline.ingest.progress import Progress
from pipeline.ingest.sync import IngestReport
from pipeline.shapes import size_text
from storage import Hit
from storage.index import INDEX_NAME
from tests import corpus
from tests.conftest import open_library, run, serving

TOKEN = "edge-token-1234"


@dataclass(frozen=True)
class Shared:
    """The module's collection, its photo folder and a token server serving it."""

    db: str
    photos: Path
    url: str
    lib: Clipdex


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, export_cache: Path) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("edges")
    corpus.good_images(root / "photos")
    db = str(root / "db")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPDEX_CACHE", str(export_cache))
        # A vector index from 5 images, so that info has index state to show.
        lib = open_library(db, tiny_model, index_threshold=5)
        lib.ingest([root / "photos"])
        with serving(lib, root / "thumbs", token=TOKEN) as url:
            yield Shared(db, root / "photos", url, lib)


# --- 1. --config before the command ---------------------------------------------------------


def test_config_goes_before_or_after_the_command(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "clipdex.toml"
    config.write_text(f'db = "{shared.db}"\n')
    before = json.loads(run("--config", str(config), "info", "--json").stdout)
    after = json.loads(run("info", "--json", "--config", str(config)).stdout)
    assert before["db"] == after["db"] == shared.db
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("CLIPDEX_DB", str(elsewhere))  # environment over config file
    result = run("--config", str(config), "info", ok=False)
    assert result.stderr == f"Error: --db {elsewhere}: no collection here yet; run `clipdex ingest` first\n"
    assert json.loads(run("--config", str(config), "info", "--db", shared.db, "--json").stdout)["images"] == 17
    missing = run("--config", str(tmp_path / "none.toml"), "info", ok=False)
    assert missing.stderr == f"Error: config file {tmp_path}/none.toml does not exist; fix --config or CLIPDEX_CONFIG\n"


# --- 2, 3. --server with --db and --token --------------------------------------------------------


def test_server_with_its_own_db_and_token_answers(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["search", "a red square", "--server", shared.url, "-k", "3", "--json"]
    local = run("search", "a red square", "--db", shared.db, "-k", "3", "--json").stdout
    assert run(*args, "--token", TOKEN, "--db", shared.db).stdout == local
    monkeypatch.setenv("CLIPDEX_TOKEN", TOKEN)
    assert run(*args).stdout == local
    by_id = json.loads(local.splitlines()[0])["id"]
    assert run("similar", "--id", by_id, "--server", shared.url, "--db", shared.db, "--paths").exit_code == 0


def test_server_refuses_another_db(shared: Shared, tmp_path: Path) -> None:
    other = tmp_path / "other"
    result = run("search", "x", "--server", shared.url, "--token", TOKEN, "--db", str(other), ok=False)
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: --db {other} is not the collection --server {shared.url} serves ({shared.db}); "
        "drop --db to ask the server, or drop --server to search --db here\n",
    )
    assert not other.exists()


def test_server_without_the_token_names_the_option(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("search", "x", "--server", shared.url, ok=False)
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: --server {shared.url}: this server requires a token; give it with --token TOKEN or CLIPDEX_TOKEN "
        "(401)\n",
    )
    monkeypatch.setenv("CLIPDEX_TOKEN", "wrong")
    result = run("similar", "--id", "x", "--server", shared.url, ok=False)
    assert result.stderr == (
        f"Error: --server {shared.url}: the token given is not the server's; give it with --token TOKEN or "
        "CLIPDEX_TOKEN (401)\n"
    )


# --- 4. serve on a busy port, or on an address of another machine ---------------------------------


def test_serve_on_a_busy_port_stops_before_opening_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A --db with no collection: had serve opened it, the error would be "no collection here yet".
        result = run("serve", "--port", str(port), "--db", str(tmp_path / "none"), ok=False)
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: --port {port}: already in use on 127.0.0.1 (another clipdex serve?); "
        f"choose another --port, e.g. --port {port + 1}\n",
    )
    result = run("serve", "--host", "192.0.2.1", "--token", TOKEN, "--db", str(tmp_path / "none"), ok=False)
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: --host 192.0.2.1: cannot listen there (Cannot assign requested address); "
        "give an address of this machine, e.g. --host 127.0.0.1\n",
    )
    assert not (tmp_path / "none").exists()


# --- 5. misspelt model names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["search", "x", "--limit", "5"], "Error: No such option '--limit'. Did you mean '-k'?"),
        (["similar", "--id", "x", "--top", "5"], "Error: No such option '--top'. Did you mean '-k'?"),
        (["map", "-o", "map.html"], "Error: No such option '-o'. Did you mean '--out'?"),
        (["search", "x", "-o", "y"], "Error: No such option '-o'."),  # search has no --out
        (["search", "x", "--lmit", "5"], "Error: No such option '--lmit'. Did you mean '--like'?"),  # click's own
    ],
)
def test_options_of_other_tools_point_to_clipdex_s_own(args: list[str], error: str) -> None:
    result = run(*args, ok=False)
    assert result.exit_code == 2 and result.stderr.splitlines()[-1] == error


def test_misspelt_model_and_tag_suggest_the_nearest(shared: Shared, tmp_path: Path) -> None:
    result = run("ingest", str(shared.photos), "--db", str(tmp_path / "db"), "--model", "ViT-B-33", ok=False)
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: --model ViT-B-33: open_clip has no such model; "
        "did you mean ViT-B-32, ViT-S-32, ViT-M-32, ViT-B-16, ViT-L-14-336, ViT-B-32-256?\n",
    )
    result = run("embed", "--text", "x", "--model", "vit-b-32", "--pretrained", "laion2b_s34b_b78k", ok=False)
    assert result.stderr.startswith("Error: --model vit-b-32: open_clip has no such model; did you mean ViT-B-32, ")
    result = run("embed", "--text", "x", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b78k", ok=False)
    assert result.stderr.startswith(
        "Error: --pretrained laion2b_s34b_b78k: not a tag of ViT-B-32 nor a checkpoint file; "
        "did you mean laion2b_s34b_b79k? tags: openai, "
    )
    assert not (tmp_path / "db").exists()


# --- 6. the table fits the terminal ----------------------------------------------------------------


def test_table_fits_the_terminal(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDEX_SERVER", shared.url)  # the server's model is loaded already: fast
    monkeypatch.setenv("CLIPDEX_TOKEN", TOKEN)
    hits = [json.loads(x) for x in run("search", "a red square", "--json").stdout.splitlines()]
    monkeypatch.setenv("COLUMNS", "60")
    narrow = run("search", "a red square").stdout.splitlines()
    assert len(narrow) == len(hits) + 1  # one line a hit: nothing wraps
    assert max(map(len, narrow)) <= 60
    assert narrow[0].split() == ["score", "size", "id", "path"]  # too narrow for captions
    for line, hit in zip(narrow[1:], hits, strict=True):
        name = Path(hit["path"]).name
        assert line.startswith(f"{hit['score']:.4f}  ") and line.endswith(name[-12:]) and "…" in line, line
    monkeypatch.setenv("COLUMNS", "200")
    wide = run("search", "a red square").stdout.splitlines()
    assert wide[0].split()[:4] == ["score", "size", "id", "path"]  # and caption, when a hit has one
    assert [hit["path"] in line for line, hit in zip(wide[1:], hits, strict=True)] == [True] * len(hits)


def test_table_cuts_paths_in_the_middle_and_captions_at_the_end() -> None:
    hits = [
        Hit(
            "a" * 16,
            "/home/someone/Pictures/2024/summer/holiday/IMG_0412.JPG",
            0.3123,
            "a " * 40,
            640,
            480,
            "JPEG",
            None,
        ),
        Hit("b" * 16, "/p/short.png", 0.2, None, 10, 10, "PNG", None),
    ]
    assert hits_table(hits, width=80).splitlines() == [
        "score   size     id                path                         caption",
        "0.3123  640x480  aaaaaaaaaaaaaaaa  /home/so…liday/IMG_0412.JPG  a a a a a a a a…",
        "0.2000  10x10    bbbbbbbbbbbbbbbb  /p/short.png",
    ]
    assert hits_table(hits, width=60).splitlines()[1] == "0.3123  640x480  aaaaaaaaaaaaaaaa  /home/so…day/IMG_0412.JPG"
    assert hits_table(hits, width=None).splitlines()[1].split("  ")[3] == hits[0].path


# --- 7. progress on a terminal ------------------------------------------------------------------------


def test_progress_view_says_the_model_then_counts_rate_and_time_left() -> None:
    from rich.console import Console  # noqa: PLC0415 - the view imports rich only on terminals

    out = io.StringIO()
    with ProgressView(Console(file=out, force_terminal=True, width=120)) as view:
        view(Progress("model", 0, 1, "ViT-B-32 (laion2b_s34b_b79k)"))
        view(Progress("model", 1, 1, "ViT-B-32 (laion2b_s34b_b79k)"))
        view(Progress("scan", 4, 4))
        for done in range(1, 5):
            view(Progress("embed", done, 4))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "loading model ViT-B-32 (laion2b_s34b_b79k) ..." in text
    assert "scanning ..." in text
    assert re.search(r"embedding .* 4/4  \d+\.\d img/s", text), text
    assert counts_text(30, 120, 10.0, "img/s") == "30/120  3.0 img/s  0:30 left"
    assert counts_text(0, 120, 0.0) == "0/120"


def test_ingest_on_a_terminal_shows_the_load_and_counts_it(
    photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models  # noqa: PLC0415

    monkeypatch.setattr("pipeline.cli.commands._stderr_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "400")  # the model's label is a long folder: on one line
    loads: list[float] = []
    real_load = models.load_encoder

    def timed_load(*args: object, **kwargs: object) -> object:
        started = time.monotonic()
        try:
            return real_load(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            loads.append(time.monotonic() - started)

    monkeypatch.setattr(models, "load_encoder", timed_load)
    started = time.monotonic()
    result = run("ingest", str(photos / "good"), "--db", db, "--model", tiny_model)
    wall = time.monotonic() - started
    seconds = float(re.search(r"\((\d+\.\d) s\)", result.stdout).group(1))  # type: ignore[union-attr]
    assert len(loads) == 1 and loads[0] - 0.05 <= seconds <= wall + 0.05, (loads, seconds, wall)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    assert f"loading model {tiny_model} ..." in text  # while the collection is created
    assert "17/17" in text
    again = run("ingest", str(photos / "good"), "--db", db).stderr  # nothing to embed: no model loads
    assert "loading model" not in again and len(loads) == 1
    corpus.pattern_image(photos / "good" / "new.jpg", seed=77)
    more = run("ingest", str(photos / "good"), "--db", db).stderr  # the stored model loads, and says so
    assert f"loading model {tiny_model} ..." in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", more)
    monkeypatch.setattr("pipeline.cli.commands._stderr_is_terminal", lambda: False)
    assert run("ingest", str(photos / "good"), "--db", db).stderr == ""


# --- 8. info ----------------------------------------------------------------------------------------


def test_info_says_size_roots_last_ingest_and_indexes(shared: Shared) -> None:
    data = json.loads(run("info", "--db", shared.db, "--json").stdout)
    assert data["roots"] == [str(shared.photos)]
    assert data["disk_bytes"] == sum(p.stat().st_size for p in Path(shared.db).rglob("*") if p.is_file())
    assert abs(time.time() - _timestamp(data["last_ingest"])) < 600
    vector = next(i for i in data["indexes"] if i["name"] == INDEX_NAME)
    assert (vector["columns"], vector["indexed_rows"], vector["unindexed_rows"]) == (["vector"], 17, 0)
    lines = run("info", "--db", shared.db).stdout.splitlines()
    assert lines[2] == "images       17"
    assert lines[3] == "videos       0"
    assert lines[7] == f"disk size    {size_text(data['disk_bytes'])}"
    assert lines[8] == f"roots        {shared.photos}"
    assert re.fullmatch(r"last ingest  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[9]), lines[9]
    assert lines[10].startswith("indexes      ")
    assert f"{INDEX_NAME} {vector['type']} on vector: 17 rows indexed" in [
        x.removeprefix("indexes").strip() for x in lines[10:]
    ]


def _timestamp(iso: str) -> float:
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(iso).timestamp()


def test_a_small_collection_has_no_index(lib: Clipdex) -> None:
    data = json.loads(run("info", "--db", lib.collection.uri, "--json").stdout)
    assert data["roots"] and data["last_ingest"] and data["indexes"] == []
    lines = run("info", "--db", lib.collection.uri).stdout.splitlines()
    assert lines[-1] == "indexes      none (exact search, until the collection is large enough for one)"


# --- 9. cluster --auto ---------------------------------------------------------------------------------


def test_cluster_auto_says_which_k_and_why(shared: Shared) -> None:
    _, vectors = shared.lib.collection.vectors()
    choice = choose_k_by_silhouette(vectors, np.random.default_rng(0))
    (best, top), (second, runner) = choice.ranked[:2]
    result = run("cluster", "--auto", "--db", shared.db)
    assert result.stderr.splitlines()[0] == (
        f"chose k={best}: best silhouette {top:.3f}, runner-up k={second} {runner:.3f} "
        f"(k=2..{choice.silhouettes[-1][0]} tried on 17 images)"
    )
    assert len(result.stdout.splitlines()) == best


def test_sizes_read_as_people_read_them() -> None:
    assert [size_text(n) for n in (0, 999, 1000, 123_456, 5_000_000_000)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "123.5 kB",
        "5.0 GB",
    ]


# --- 10. counts in words ------------------------------------------------------------------------------


def test_one_moment_and_one_live_photo_are_singular() -> None:
    assert report_text(IngestReport(videos=1, moments=1, live_photos=1), "/db").splitlines()[1:] == [
        "1 video, 1 moment embedded",
        "1 Live Photo video skipped (part of their photos)",
    ]
    assert report_text(IngestReport(videos=2, moments=37, live_photos=2), "/db").splitlines()[1:] == [
        "2 videos, 37 moments embedded",
        "2 Live Photo videos skipped (part of their photos)",
    ]
