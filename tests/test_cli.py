"""The command line: exact output, JSON contracts, and one-line errors that leave the collection alone."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cli.render import hits_table, terminal_width
from pipeline.shapes import size_text
from storage import Hit
from tests import corpus
from tests.conftest import run, without_timing

COUNT_KEYS = ("added", "updated", "moved", "removed", "unchanged", "failed")


def ingest_json(*args: str) -> dict[str, object]:
    result = run("ingest", *args, "--json")
    data: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def snapshot(folder: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()}


def test_ingest_prints_a_summary_and_the_failures(photos: Path, db: str, tiny_model: str) -> None:
    result = run("ingest", str(photos / "good"), str(photos / "bad" / "empty.jpg"), "--db", db, "--model", tiny_model)
    assert without_timing(result.stdout) == (
        f"17 added, 0 updated, 0 moved, 0 removed, 0 unchanged, 1 failed (T s) in {db}\n"
        f"failed: {photos}/bad/empty.jpg: empty file (0 bytes)\n"
    )
    again = run("ingest", str(photos / "good"), "--db", db)
    assert without_timing(again.stdout) == (
        f"0 added, 0 updated, 0 moved, 0 removed, 17 unchanged, 0 failed (T s) in {db}\n"
    )


def test_ingest_json_ends_with_integer_counts(photos: Path, db: str, tiny_model: str) -> None:
    data = ingest_json(str(photos), "--db", db, "--model", tiny_model)
    assert {k: data[k] for k in COUNT_KEYS} == {
        "added": 17,
        "updated": 0,
        "moved": 0,
        "removed": 0,
        "unchanged": 0,
        "failed": 7,  # corpus.bad_files, and other/clip.mp4: not a video clipdex can read
    }
    assert all(isinstance(data[k], int) for k in COUNT_KEYS)
    assert {Path(str(f["path"])).name for f in data["failures"]} >= {"bomb.png", "empty.jpg"}  # type: ignore[attr-defined]


def test_info_json_and_table(photos: Path, db: str, tiny_model: str) -> None:
    run("ingest", str(photos / "good"), str(photos / "bad"), "--db", db, "--model", tiny_model)
    data = json.loads(run("info", "--db", db, "--json").stdout)
    assert (data["images"], data["failures"], data["captioned"], data["dimension"]) == (17, 6, 2, 32)
    assert (data["videos"], data["moments"]) == (0, 0)
    assert data["model"]["model"] == tiny_model
    assert data["db"] == db
    assert data["roots"] == [f"{photos}/bad", f"{photos}/good"]
    assert data["indexes"] == []  # 17 images: exact search
    folder = tiny_model.removeprefix("local-dir:")
    last = datetime.fromisoformat(data["last_ingest"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert run("info", "--db", db).stdout == (
        f"collection   {db}\n"
        f"model        local-dir:{folder}, 32-d\n"
        "images       17\n"
        "videos       0\n"
        "captioned    2\n"
        "failures     6\n"
        "schema       " + str(data["schema_version"]) + "\n"
        f"disk size    {size_text(data['disk_bytes'])}\n"
        f"roots        {photos}/bad\n"
        f"             {photos}/good\n"
        f"last ingest  {last}\n"
        "indexes      none (exact search, until the collection is large enough for one)\n"
    )


def test_search_json_table_and_paths_agree(photos: Path, db: str, tiny_model: str) -> None:
    run("ingest", str(photos), "--db", db, "--model", tiny_model)
    lines = run("search", "a sunset over the sea", "-k", "5", "--db", db, "--json").stdout.splitlines()
    hits = [json.loads(line) for line in lines]
    assert len(hits) == 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert set(h) >= {"id", "path", "score", "caption", "width", "height"}
        assert Path(h["path"]).is_absolute() and Path(h["path"]).exists()
        assert -1.0 <= h["score"] <= 1.0
    paths = run("search", "a sunset over the sea", "-k", "5", "--db", db, "--paths").stdout
    assert paths == "".join(h["path"] + "\n" for h in hits)
    table = run("search", "a sunset over the sea", "-k", "5", "--db", db).stdout
    expected = [
        Hit(h["id"], h["path"], h["score"], h["caption"], h["width"], h["height"], h["format"], None) for h in hits
    ]
    assert table == hits_table(expected, width=terminal_width()) + "\n"
    assert table.splitlines()[0].split() == ["score", "size", "id", "path", "caption"]


def test_similar_by_file_and_by_id(photos: Path, db: str, tiny_model: str, tmp_path: Path) -> None:
    run("ingest", str(photos / "good"), "--db", db, "--model", tiny_model)
    outside = corpus.pattern_image(tmp_path / "elsewhere" / "query.png", seed=99)
    hits = [json.loads(x) for x in run("similar", str(outside), "-k", "3", "--db", db, "--json").stdout.splitlines()]
    assert len(hits) == 3
    first = hits[0]["id"]
    by_id = run("similar", "--id", first, "-k", "3", "--db", db, "--json").stdout.splitlines()
    assert first not in {json.loads(x)["id"] for x in by_id}
    where = run("similar", str(outside), "--db", db, "--where", "format = 'GIF'", "--paths").stdout
    assert where == f"{photos}/good/animated.gif\n"


def test_no_match_is_said_on_stderr(photos: Path, db: str, tiny_model: str) -> None:
    run("ingest", str(photos / "good"), "--db", db, "--model", tiny_model)
    result = run("search", "a dog", "--db", db, "--min-score", "0.999", "--json")
    assert (result.stdout, result.stderr) == ("", "no matches at or above score 0.999\n")
    result = run("search", "a dog", "--db", db, "--where", "width > 100000")
    assert (result.stdout, result.stderr) == ("", "no matches\n")


def test_embed_prints_a_unit_vector(photos: Path, tiny_model: str, db: str) -> None:
    text = json.loads(run("embed", "--text", "a dog", "--model", tiny_model, "--json").stdout)
    image = json.loads(run("embed", "--image", str(photos / "good" / "photo.jpg"), "--model", tiny_model).stdout)
    for data in (text, image):
        assert len(data["vector"]) == 32
        assert sum(x * x for x in data["vector"]) == pytest.approx(1.0, abs=1e-4)
    run("ingest", str(photos / "good"), "--db", db, "--model", tiny_model)
    stored = json.loads(run("embed", "--text", "a dog", "--db", db).stdout)  # the collection's model
    assert stored["vector"] == text["vector"]


def test_environment_sets_db_and_model(photos: Path, db: str, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDEX_DB", db)
    monkeypatch.setenv("CLIPDEX_MODEL", tiny_model)
    assert ingest_json(str(photos / "good"))["added"] == 17
    assert json.loads(run("info", "--json").stdout)["images"] == 17


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["search", "dog", "--where", "widht > 3"],
            r"^Error: --where 'widht > 3': no column named widht; did you mean width\?",
        ),
        (["search", "dog", "--where", "width >>> 3"], r"^Error: --where 'width >>> 3': .*"),
        (
            ["similar", "/no/such.jpg"],
            r"^Error: /no/such.jpg does not exist; give the path of an image file$",
        ),
        (["similar", "{bad}"], r"^Error: .*/notes.jpg: not an image clipdex can read \(JPEG, PNG, WebP"),
        (["similar", "--id", "0000"], r"^Error: --id 0000: no image with this id"),
        (["similar"], r"give an IMAGE file or --id ID"),
        (["search", "   "], r"^Error: the search text is empty"),
        (
            ["ingest", "{good}", "--model", "{other}"],
            r"^Error: --db .* holds vectors of local-dir:.*tiny-model",
        ),
        (["ingest", "{good}", "--captions", "{manifest}"], r"^Error: --captions .*line 1: not JSON"),
    ],
)
def test_bad_input_gives_one_line_and_changes_nothing(
    photos: Path, db: str, tiny_model: str, other_model: str, args: list[str], message: str
) -> None:
    run("ingest", str(photos / "good"), "--db", db, "--model", tiny_model)
    manifest = photos / "captions.jsonl"
    manifest.write_text("{not json\n")
    values = {
        "bad": str(photos / "bad" / "notes.jpg"),
        "good": str(photos / "good"),
        "other": other_model,
        "manifest": str(manifest),
    }
    before = snapshot(db)
    result = run(*[a.format(**values) for a in args], "--db", db, ok=False)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or "Usage:" in result.stderr, result.stderr
    assert __import__("re").search(message, lines[-1]), lines
    assert snapshot(db) == before


def test_foreign_folder_is_refused_and_untouched(tmp_path: Path, photos: Path, tiny_model: str) -> None:
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    before = snapshot(str(foreign))
    for args in (["info"], ["search", "dog"], ["ingest", str(photos / "good"), "--model", tiny_model]):
        result = run(*args, "--db", str(foreign), ok=False)
        assert result.stderr == (
            f"Error: --db {foreign}: this location holds other data, not a clipdex collection; "
            "point --db at a collection or at a new, empty folder\n"
        )
    assert snapshot(str(foreign)) == before


def test_missing_collection_says_to_ingest_first(tmp_path: Path) -> None:
    result = run("search", "dog", "--db", str(tmp_path / "none"), ok=False)
    assert result.stderr == f"Error: --db {tmp_path}/none: no collection here yet; run `clipdex ingest` first\n"
    assert not (tmp_path / "none").exists()


def test_missing_ingest_path_is_refused(tmp_path: Path, db: str, tiny_model: str) -> None:
    result = run("ingest", str(tmp_path / "gone"), "--db", db, "--model", tiny_model, ok=False)
    assert f"Path '{tmp_path}/gone' does not exist" in result.stderr
    assert not Path(db).exists()


def test_unknown_model_is_one_line(tmp_path: Path, photos: Path) -> None:
    result = run("ingest", str(photos), "--db", str(tmp_path / "db"), "--model", "ViT-Q-99", ok=False)
    assert result.stderr.startswith("Error: --model ViT-Q-99: open_clip has no such model")
    assert result.stderr.count("\n") == 1


def test_failures_command_lists_reasons(photos: Path, db: str, tiny_model: str) -> None:
    run("ingest", str(photos / "bad"), "--db", db, "--model", tiny_model)
    lines = run("failures", "--db", db).stdout.splitlines()
    assert len(lines) == 6
    assert f"failed: {photos}/bad/empty.jpg: empty file (0 bytes)" in lines
    rows = [json.loads(x) for x in run("failures", "--db", db, "--json").stdout.splitlines()]
    assert {Path(r["path"]).name for r in rows} == {
        Path(line.removeprefix("failed: ").split(": ")[0]).name for line in lines
    }


def test_every_command_has_help() -> None:
    for name, command in cli.commands.items():
        assert command.help, name
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        assert "Usage: " in result.output


def test_offline_default_model_is_one_line_and_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path
) -> None:
    monkeypatch.setattr("models.openclip._hub_reachable", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = run("ingest", str(photos), "--db", str(tmp_path / "db"), ok=False)
    assert result.stderr.startswith("Error: cannot get the weights of ViT-B-32 (laion2b_s34b_b79k): ")
    assert result.stderr.endswith(
        "--model local-dir:/path/to/folder (open_clip_config.json + open_clip_model.safetensors)\n"
    )
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "db").exists()


def test_output_and_score_options_are_checked(photos: Path, db: str, tiny_model: str) -> None:
    run("ingest", str(photos / "good"), "--db", db, "--model", tiny_model)
    assert "give --json or --paths, not both" in run("search", "x", "--json", "--paths", "--db", db, ok=False).output
    assert "--min-score" in run("search", "x", "--min-score", "2", "--db", db, ok=False).output
    result = run("search", "x", "--server", "127.0.0.1:8000", ok=False)
    assert "give the URL with its scheme, e.g. --server http://127.0.0.1:8000" in result.stderr
