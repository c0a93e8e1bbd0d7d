"""The clipdex command line: each command parses, builds, calls the library, and formats.

The library (LanceDB, torch) is imported inside the commands that use it, so that a query sent
to a running server (--server) starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from models import PRECISIONS, RUNTIMES, Fingerprint
from pipeline.analyse.classify import DEFAULT_PROMPT
from pipeline.analyse.classify import classify as run_classify
from pipeline.analyse.clusters import KChoice, map_html
from pipeline.analyse.clusters import cluster as run_cluster
from pipeline.analyse.duplicates import BURST_SECONDS, NEAR, SIMILAR, find_duplicates
from pipeline.cli.client import Client
from pipeline.cli.render import (
    ProgressView,
    align_rows,
    failure_lines,
    hits_jsonl,
    hits_paths,
    hits_table,
    report_json,
    report_text,
    stats_text,
    terminal_width,
)
from pipeline.config import ENGINES, TARGETS, Settings, load_settings
from pipeline.errors import USER_ERRORS, BadOption, BadQuery, OutputError
from pipeline.ingest.captions import read_manifest
from pipeline.ingest.progress import Progress
from pipeline.ingest.sources import is_uri
from pipeline.query import Term, parse_terms
from pipeline.shapes import size_text, stats_dict
from storage import CollectionNotFound, Hit

if TYPE_CHECKING:
    from pipeline.library import Clipdex
    from pipeline.maintain.watch import Notice, Synced, Watcher

MAX_PROBLEMS_SHOWN = 20  # verify lists this many problems; --json lists all
DEBUG_ENV = "CLIPDEX_DEBUG"  # set to 1: user errors keep their traceback too

LOOPBACK = ("127.0.0.1", "localhost", "::1")

F = Callable[..., Any]


# Options of other tools people type for clipdex's own (where the command has that option).
OPTION_SYNONYMS = {"--limit": "-k", "--top": "-k", "--top-k": "-k", "--num": "-k", "-n": "-k", "--count": "-k",
                   "--number": "-k", "--output": "--out", "-o": "--out", "--database": "--db"}  # fmt: skip


class _Group(click.Group):
    """Turns user errors (pipeline.errors.USER_ERRORS) into one-line messages and exit code 1, in
    one place; anything else is a bug and keeps its traceback. CLIPDEX_DEBUG=1 re-raises user
    errors too, traceback and all."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            # click suggests by spelling (--limit -> --like); the option people mean comes first.
            meant = OPTION_SYNONYMS.get(exc.option_name)
            command = exc.ctx.command if exc.ctx else None
            if meant and command and any(meant in p.opts for p in command.params):
                message = f"No such option {exc.option_name!r}. Did you mean {meant!r}?"
                raise click.NoSuchOption(exc.option_name, message, ctx=exc.ctx) from exc
            raise
        except USER_ERRORS as exc:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            raise click.ClickException(str(exc)) from exc


def db_options(f: F) -> F:
    """--db and --config."""
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A TOML config file.")(f)
    return click.option("--db", help="Collection folder or s3:// URI [env CLIPDEX_DB].")(f)


def model_options(f: F) -> F:
    """--model, --pretrained, --device, --precision, --runtime, --batch-size."""
    options = [
        click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass."),
        click.option(
            "--runtime",
            type=click.Choice(RUNTIMES),
            help="What runs the model: OpenVINO on CPUs, torch on GPUs [env CLIPDEX_RUNTIME; default: auto].",
        ),
        click.option("--precision", type=click.Choice(PRECISIONS), help="Weights dtype [default: auto]."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps [default: auto]."),
        click.option("--pretrained", help="Pretrained tag or checkpoint file [env CLIPDEX_PRETRAINED]."),
        click.option(
            "--model",
            help="OpenCLIP name, hf-hub:org/repo or local-dir:/path [env CLIPDEX_MODEL; "
            "default: the collection's model, else ViT-B-32].",
        ),
    ]
    for option in options:
        f = option(f)
    return db_options(f)


def query_options(f: F) -> F:
    """-k, --where, --min-score, the output format and --server."""
    options = [
        click.option("--token", help="The token the --server requires [env CLIPDEX_TOKEN]."),
        click.option("--server", help="Ask a running `clipdex serve` at this URL [env CLIPDEX_SERVER]."),
        click.option("--paths", "as_paths", is_flag=True, help="Print only paths, one per line."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON lines, best first."),
        click.option(
            "--min-score", type=click.FloatRange(-1, 1), help="Drop results below this cosine similarity (-1 to 1)."
        ),
        click.option("--where", help="SQL filter on metadata, e.g. \"width > 1000 AND path LIKE '%/2024/%'\"."),
        click.option("-k", "k", type=click.IntRange(min=1), help="How many results [default: 10]."),
        click.option("--kind", type=click.Choice(("image", "video")), help="Only photos, or only video moments."),
        click.option("--moments", is_flag=True, help="List each video's other matching moments too."),
    ]
    for option in options:
        f = option(f)
    return model_options(f)


class PathOrUri(click.ParamType):  # type: ignore[type-arg]
    """A local path that must exist, or an s3:// / gs:// prefix (checked when listed)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if is_uri(text):
            return text
        return str(click.Path(exists=True).convert(value, param, ctx))


def _settings(config_file: str | None, **flags: Any) -> Settings:
    # `clipdex --config FILE search ...` and `clipdex search ... --config FILE`: the later one wins.
    root = click.get_current_context(silent=True)
    top = root.find_root().params.get("config_file") if root is not None else None
    return load_settings(config_file or top).override(**flags)


def _open(create: bool = False, settings: Settings | None = None, **flags: Any) -> Clipdex:
    from pipeline.library import Clipdex  # noqa: PLC0415 - see the module docstring

    settings = settings or _settings(flags.pop("config_file", None), **flags)
    return Clipdex.open(settings=settings, create=create)


def _client(settings: Settings) -> Client | None:
    if not settings.server:
        return None
    client = Client(settings.server, settings.token)
    if settings.db:
        client.check_db(settings.db_uri)
    return client


@click.group(cls=_Group)
@click.version_option(package_name="clipdex")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="A TOML config file, for every command [env CLIPDEX_CONFIG].",
)
def cli(config_file: str | None) -> None:
    """Search your own images by meaning: ingest folders, then ask in words or with a photo."""
    _say_model_notes()


class _EchoHandler(logging.Handler):
    """The encoder's one-line notes (a first export to OpenVINO) on standard error, as they are."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)


def _say_model_notes() -> None:
    logger = logging.getLogger("models")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # said once, even where a library configured the root logger


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=PathOrUri())
@click.option("--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Skip files and folders matching this glob (repeatable).")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False), help="CSV or JSON Lines of path,caption.")
@click.option("--max-pixels", type=click.IntRange(min=1), help="Refuse larger images [default: 200000000].")
@click.option(
    "--workers", type=click.IntRange(min=0), help="Decode processes; 0 decodes in-process (ray: encoder actors)."
)
@click.option("--engine", type=click.Choice(ENGINES), help="local, or ray for a Ray cluster [default: local].")
@click.option("--ray-address", help="A running Ray cluster (auto, ray://head:10001) [default: start one here].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="GPUs per encoder actor (ray) [default: 0].")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), help="CPUs per encoder actor (ray).")
@click.option("--retry-failed", is_flag=True, help="Try again files that failed before and did not change.")
@click.option("--prune-empty", is_flag=True, help="Remove stored images under a root that has none left.")
@click.option(
    "--follow-links/--no-follow-links",
    default=None,
    help="Walk folder symlinks that point outside PATHS [env CLIPDEX_FOLLOW_LINKS; default: no].",
)
@click.option(
    "--video-interval",
    type=click.FloatRange(min=0, min_open=True),
    help="A video moment at least every N s [default: 2].",
)
@click.option("--video-max-frames", type=click.IntRange(min=1), help="Moments per video at most [default: 300].")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object of counts.")
@model_options
def ingest(
    paths: tuple[str, ...],
    captions: str | None,
    retry_failed: bool,
    prune_empty: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Add new, changed and moved images under PATHS; remove deleted ones."""
    started = time.monotonic()  # the time said at the end includes the model's load
    manifest = read_manifest(captions) if captions else None  # a bad manifest must not create a collection
    video = {"video_interval": flags.pop("video_interval"), "video_max_frames": flags.pop("video_max_frames")}
    settings = _settings(flags.pop("config_file"), **flags)
    stop = threading.Event()
    with _progress_bar() as progress:
        lib = _open_saying_model(settings, progress)
        with _first_interrupt_stops(stop):
            report = lib.ingest(
                list(paths),
                captions=manifest,
                retry_failed=retry_failed,
                prune_empty=prune_empty,
                progress=progress,
                stop=stop,
                **video,
            )
    report.seconds = time.monotonic() - started
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    db = lib.collection.uri
    if as_json:
        click.echo(report_text(report, db), err=True)
        click.echo(report_json(report, db))
    else:
        click.echo(report_text(report, db))
    if report.interrupted:
        click.echo("interrupted: what is written is kept; run the same command again to do the rest", err=True)
        sys.exit(130)


def _open_saying_model(settings: Settings, progress: Callable[[Progress], None] | None) -> Clipdex:
    """The collection, created if new; creating it loads the model (its dimension makes the
    table), so on a terminal that load is said while it runs. An existing collection's model
    loads later, in ingest, which says so itself."""
    from pipeline.library import encoder_spec  # noqa: PLC0415 - see the module docstring

    if progress is None or _stored_fingerprint(settings) is not None:
        return _open(create=True, settings=settings)
    with _saying_model(encoder_spec(settings).label, progress):
        return _open(create=True, settings=settings)


@contextlib.contextmanager
def _saying_model(label: str, progress: Callable[[Progress], None] | None) -> Iterator[None]:
    """Around a model's load: 'loading model LABEL ...' on a terminal until it is loaded."""
    if progress is not None:
        progress(Progress("model", 0, 1, label))
    yield
    if progress is not None:
        progress(Progress("model", 1, 1, label))


@contextlib.contextmanager
def _first_interrupt_stops(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C (SIGINT) asks to stop after the batch being written; a second stops at once."""

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping after the batch being written (Ctrl-C again to stop at once)", err=True)

    try:
        previous = signal.signal(signal.SIGINT, handle)
    except ValueError:  # not the main thread (an embedding application): no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@cli.command()
@click.argument("query", nargs=-1, required=True)
@click.option("--like", multiple=True, type=click.Path(), help="Also towards this image file (repeatable).")
@click.option("--unlike", multiple=True, type=click.Path(), help="Away from this image file (repeatable).")
@click.option("--not", "not_", multiple=True, help="Away from this text (repeatable).")
@click.option("--target", type=click.Choice(TARGETS), default="image", show_default=True, help="Vectors to match.")
@click.option(
    "--within", type=click.FloatRange(min=0), help="Keep results scoring at most this much below the best one."
)
@click.option("--honest", is_flag=True, help="Drop results that a generic caption ('a photo') fits as well.")
@query_options
def search(
    query: tuple[str, ...],
    like: tuple[str, ...],
    unlike: tuple[str, ...],
    not_: tuple[str, ...],
    target: str,
    within: float | None,
    honest: bool,
    k: int | None,
    where: str | None,
    min_score: float | None,
    **flags: Any,
) -> None:
    """Images that match QUERY, best first.

    QUERY is a text, or texts and image files joined by + and - (weights as W:term):
    clipdex search beach + ./photo.jpg - crowd
    """
    as_json, as_paths, server = flags.pop("as_json"), flags.pop("as_paths"), flags.pop("server")
    videos = {"kind": flags.pop("kind"), "moments": flags.pop("moments")}
    _one_format(as_json, as_paths)
    settings = _settings(flags.pop("config_file"), server=server, **flags)
    terms = parse_terms(query)
    terms += [Term(p, 1.0, "image") for p in like] + [Term(p, -1.0, "image") for p in unlike]
    terms += [Term(t, -1.0, "text") for t in not_]
    plain_text = len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1.0
    client = _client(settings)
    if client is not None:
        if not plain_text or within is not None or honest:
            raise BadQuery(
                "--server takes plain text searches so far; drop --server to mix images, + and -, --within, --honest"
            )
        params = {"k": k or settings.k, "where": where, "min_score": _floor(min_score, settings), "target": target}
        hits = client.search(terms[0].value, **params, **videos)
    else:
        lib = _open(settings=settings)
        hits = lib.query(
            terms, k=k, where=where, min_score=min_score, target=target, within=within, honest=honest, **videos
        )
    _print_hits(hits, as_json, as_paths, _floor(min_score, settings), honest)


@cli.command()
@click.argument("image", required=False, type=click.Path())
@click.option("--id", "image_id", help="A stored image's id instead of a file.")
@query_options
def similar(
    image: str | None,
    image_id: str | None,
    k: int | None,
    where: str | None,
    min_score: float | None,
    **flags: Any,
) -> None:
    """Images like IMAGE (a file anywhere on disk) or like a stored image (--id)."""
    if (image is None) == (image_id is None):
        raise click.UsageError("give an IMAGE file or --id ID, not both or neither")
    as_json, as_paths, server = flags.pop("as_json"), flags.pop("as_paths"), flags.pop("server")
    videos = {"kind": flags.pop("kind"), "moments": flags.pop("moments")}
    _one_format(as_json, as_paths)
    settings = _settings(flags.pop("config_file"), server=server, **flags)
    client = _client(settings)
    params: dict[str, Any] = {"k": k or settings.k, "where": where, "min_score": _floor(min_score, settings)}
    if client is not None:
        hits = (
            client.similar_to(image_id, **params, **videos)
            if image_id is not None
            else client.similar(str(image), **params, **videos)
        )
    elif image_id is not None:
        hits = _open(settings=settings).similar_to(image_id, k=k, where=where, min_score=min_score, **videos)
    else:
        hits = _open(settings=settings).similar(str(image), k=k, where=where, min_score=min_score, **videos)
    _print_hits(hits, as_json, as_paths, _floor(min_score, settings))


@cli.command()
@click.option("--text", help="Embed this text.")
@click.option("--image", type=click.Path(), help="Embed this image file.")
@click.option("--json", "as_json", is_flag=True, help='Print {"vector": [...]} (the only format).')
@model_options
def embed(text: str | None, image: str | None, as_json: bool, **flags: Any) -> None:
    """Print the vector of a text or an image file, as JSON."""
    if (text is None) == (image is None):
        raise click.UsageError("give --text TEXT or --image PATH, not both or neither")
    import models  # noqa: PLC0415 - see the module docstring
    from pipeline.library import embed_image_file, encoder_spec  # noqa: PLC0415

    settings = _settings(flags.pop("config_file"), **flags)
    stored = _stored_fingerprint(settings)
    encoder = models.load_encoder(encoder_spec(settings, stored))
    if text is not None:
        vector = encoder.embed_texts([text])[0]
    else:
        vector = embed_image_file(encoder, str(image), settings.max_pixels)
    fp = encoder.fingerprint
    click.echo(json.dumps({"vector": [round(float(x), 7) for x in vector], "model": fp.label}))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@db_options
def info(as_json: bool, db: str | None, config_file: str | None) -> None:
    """Counts, the model, the location and size of the collection, its roots, last ingest and indexes."""
    from pipeline.library import collection_details  # noqa: PLC0415 - see the module docstring

    stats, details = collection_details(settings=_settings(config_file, db=db))
    if as_json:
        click.echo(json.dumps(stats_dict(stats, details), ensure_ascii=False))
    else:
        click.echo(stats_text(stats, Fingerprint.from_json(stats.model).label, details))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@db_options
def failures(as_json: bool, db: str | None, config_file: str | None) -> None:
    """Files that could not be ingested, and why."""
    from storage import Collection  # noqa: PLC0415 - see the module docstring

    collection = Collection.open(_settings(config_file, db=db).db_uri)
    found = collection.failures()
    if as_json:
        for f in found:
            click.echo(json.dumps({"path": f.path, "reason": f.reason}, ensure_ascii=False))
    elif found:
        click.echo("\n".join(failure_lines(found)))
    else:
        click.echo("no failures", err=True)


@cli.command()
@click.option("--near", type=click.FloatRange(0, 1), default=NEAR, show_default=True, help="Cosine for 'near'.")
@click.option("--similar", type=click.FloatRange(0, 1), default=SIMILAR, show_default=True, help="Cosine for shots.")
@click.option(
    "--burst",
    type=click.FloatRange(min=0),
    default=BURST_SECONDS,
    show_default=True,
    help="Seconds between burst shots.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per group, then one summary object.")
@click.option(
    "--print-deletable",
    is_flag=True,
    help="Print only the paths that could go (keepers kept), one a line, for xargs -d '\\n'.",
)
@click.option(
    "--move-to",
    "move_to",
    type=click.Path(),
    help="Move what could go under this folder, keeping its folder structure (a dry run without --yes).",
)
@click.option("--yes", is_flag=True, help="With --move-to: really move the files (and remove their rows).")
@click.option("--with-similar", is_flag=True, help="Count similar shots (bursts) as deletable too, keeper kept.")
@db_options
def duplicates(
    near: float,
    similar: float,
    burst: float,
    as_json: bool,
    print_deletable: bool,
    move_to: str | None,
    yes: bool,
    with_similar: bool,
    db: str | None,
    config_file: str | None,
) -> None:
    """Groups of duplicates: exact (same bytes), near (re-encodes, resizes), similar shots (bursts).

    Each group keeps its original: the earliest capture time, then the earliest mtime, then a name
    without a copy mark (copy, (1), - Copy, _1); near duplicates keep the largest picture first.
    """
    from pipeline.analyse import duplicates as dup  # noqa: PLC0415 - see the module docstring
    from storage import Collection  # noqa: PLC0415

    if sum((as_json, print_deletable, move_to is not None)) > 1:
        raise click.UsageError("give one of --json, --print-deletable and --move-to")
    if yes and move_to is None:
        raise click.UsageError("--yes confirms --move-to DIR; give --move-to too")
    collection = Collection.open(_settings(config_file, db=db).db_uri)
    groups = find_duplicates(collection, near=near, similar=similar, burst_seconds=burst)
    tiers = dup.TIERS if with_similar else dup.DELETABLE_TIERS
    summary = dup.summarise(groups, tiers)
    if not groups:
        click.echo("no duplicates", err=True)
    if print_deletable:
        going = dup.deletable(groups, tiers)
        for m in going:
            if "\n" in m.path:
                click.echo(f"note: left out {m.path!r}: its name holds a line break", err=True)
            else:
                click.echo(m.path)
        click.echo(dup.summary_text(summary), err=True)
        return
    if move_to is not None:
        planned = dup.plan_moves(collection, groups, move_to, tiers)
        target = os.path.abspath(move_to)
        base = dup.common_folder(collection)
        if base != os.sep and (target + os.sep).startswith(base.rstrip(os.sep) + os.sep):
            click.echo(f"note: {target} is inside {base}, which holds the collection's files: the next "
                       "ingest of that folder finds the moved files again", err=True)  # fmt: skip
        if not yes:
            for move in planned:
                click.echo(f"would move {move.source} -> {move.target}")
            size = size_text(sum(m.size for m in planned))
            click.echo(f"dry run: {len(planned)} files ({size}) would move to {target}; add --yes to move them",
                       err=True)  # fmt: skip
            return
        report = dup.move_files(
            collection, planned, on_move=lambda move: click.echo(f"moved {move.source} -> {move.target}")
        )
        for path, reason in report.skipped:
            click.echo(f"skipped {path}: {reason}", err=True)
        size = size_text(sum(m.size for m in report.moved))
        click.echo(f"moved {len(report.moved)} files ({size}) to {target}, {len(report.skipped)} skipped; "
                   "their rows were removed from the collection", err=True)  # fmt: skip
        return
    for group in groups:
        if as_json:
            members = [
                {"id": m.id, "path": m.path, "width": m.width, "height": m.height, "size": m.size, "score": m.score}
                for m in group.members
            ]
            line = {"tier": group.tier, "keeper": group.keeper.path, "why": group.why, "members": members}
            click.echo(json.dumps(line, ensure_ascii=False))
        else:
            click.echo(f"{group.tier} ({len(group.members)}): keep {group.keeper.path} ({group.why})")
            for m in group.members:
                click.echo(f"  {m.score:.4f}  {m.width}x{m.height}  {size_text(m.size):>8}  {m.path}")
    if as_json:
        totals: dict[str, Any] = {"groups": summary.groups, **summary.by_tier, "files": summary.files}
        totals |= {"deletable": summary.deletable, "deletable_bytes": summary.deletable_bytes, "tiers": summary.tiers}
        click.echo(json.dumps({"summary": totals}))
    elif groups:
        click.echo(dup.summary_text(summary))


@cli.command()
@click.option("--labels", required=True, help="Comma-separated labels, e.g. 'cat,dog,car'.")
@click.option("--prompt", default=DEFAULT_PROMPT, show_default=True, help="Text around each label; {} is the label.")
@click.option("--store", "column", help="Keep the tags in this column (and COLUMN_score), for --where.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@model_options
def classify(labels: str, prompt: str, column: str | None, as_json: bool, **flags: Any) -> None:
    """Tag every image with the best of LABELS (zero-shot), optionally storing the tags."""
    lib = _open(**flags)
    tags = run_classify(lib.collection, lib.encoder, labels.split(","), prompt=prompt, store=column)
    if as_json:
        for t in tags:
            click.echo(json.dumps({"id": t.id, "path": t.path, "label": t.label, "score": t.score}, ensure_ascii=False))
    else:
        click.echo(align_rows([("label", "score", "path")] + [(t.label, f"{t.score:.4f}", t.path) for t in tags]))
    if column:
        click.echo(
            f"stored in {column} and {column}_score; e.g. --where \"{column} = '{tags[0].label if tags else 'x'}'\"",
            err=True,
        )


@cli.command(name="cluster")
@click.option("-k", "k", type=click.IntRange(min=2), help="Number of clusters.")
@click.option("--auto", is_flag=True, help="Choose k by silhouette (2 to 30).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@model_options
def cluster_command(k: int | None, auto: bool, as_json: bool, **flags: Any) -> None:
    """Group the images by k-means, name each group, store `cluster` and `cluster_name` per image."""
    if (k is None) == (not auto):
        raise click.UsageError("give -k N or --auto")
    lib = _open(**flags)
    found = run_cluster(lib.collection, lib.encoder, k, chose=_say_k)
    for c in found:
        if as_json:
            click.echo(json.dumps({"cluster": c.number, "name": c.name, "images": c.size}))
        else:
            click.echo(f"{c.number:>3}  {c.size:>6} images  {c.name}")
    click.echo(f'stored in cluster and cluster_name; e.g. --where "cluster = {found[0].number}"', err=True)


def _say_k(choice: KChoice) -> None:
    ranked = choice.ranked
    if not ranked:
        click.echo(f"chose k={choice.k}: {choice.sample} images are too few to compare k by silhouette", err=True)
        return
    why = f"best silhouette {ranked[0][1]:.3f}"
    if len(ranked) > 1:
        why += f", runner-up k={ranked[1][0]} {ranked[1][1]:.3f}"
    first, last = choice.silhouettes[0][0], choice.silhouettes[-1][0]
    tried = f"k={first}" if first == last else f"k={first}..{last}"
    click.echo(f"chose k={choice.k}: {why} ({tried} tried on {choice.sample} images)", err=True)


@cli.command(name="map")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The HTML file to write.")
@click.option("--max-points", type=click.IntRange(min=2), default=2000, show_default=True, help="Sample size.")
@db_options
def map_command(out: str, max_points: int, db: str | None, config_file: str | None) -> None:
    """Write a 2-D map of the collection with thumbnails, as one self-contained HTML file."""
    from storage import Collection  # noqa: PLC0415 - see the module docstring

    collection = Collection.open(_settings(config_file, db=db).db_uri)
    page = map_html(collection, max_points=max_points)
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write ({exc.strerror}); choose another path") from exc
    click.echo(f"wrote {out}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object.")
@model_options
def reembed(as_json: bool, **flags: Any) -> None:
    """Re-embed every stored image with another --model, then switch the collection to it."""
    import models  # noqa: PLC0415 - see the module docstring
    from pipeline.library import encoder_spec  # noqa: PLC0415
    from pipeline.maintain.reembed import reembed as run_reembed  # noqa: PLC0415
    from storage import Collection  # noqa: PLC0415

    settings = _settings(flags.pop("config_file"), **flags)
    if not settings.model:
        raise click.UsageError("name the new model: --model NAME [--pretrained TAG], or --model local-dir:PATH")
    collection = Collection.open(settings.db_uri)
    spec = encoder_spec(settings)
    with _progress_bar() as progress:
        with _saying_model(spec.label, progress):
            encoder = models.load_encoder(spec)
        report = run_reembed(
            collection,
            encoder,
            workers=settings.decode_workers,
            max_pixels=settings.max_pixels,
            commit_rows=settings.commit_rows,
            index_threshold=settings.index_threshold,
            progress=progress,
        )
    line = (
        f"{report.reembedded} re-embedded, {report.resumed} done before, {report.failed} failed "
        f"({report.seconds:.1f} s); {collection.uri} now uses {report.model}"
    )
    click.echo(line, err=as_json)
    if as_json:
        click.echo(json.dumps({"reembedded": report.reembedded, "resumed": report.resumed, "failed": report.failed}))


@cli.command(name="eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--captions", type=click.Path(exists=True, dir_okay=False), help="CSV or JSON Lines of path,caption.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@model_options
def evaluate_command(folder: str, captions: str | None, as_json: bool, **flags: Any) -> None:
    """Recall@1/5/10 text-to-image and image-to-text on a captioned FOLDER, to compare models."""
    import models  # noqa: PLC0415 - see the module docstring
    from pipeline.analyse.evaluate import evaluate  # noqa: PLC0415
    from pipeline.library import encoder_spec  # noqa: PLC0415

    settings = _settings(flags.pop("config_file"), **flags)
    encoder = models.load_encoder(encoder_spec(settings))
    report = evaluate(
        encoder, folder, captions=read_manifest(captions) if captions else None, workers=settings.decode_workers
    )
    if as_json:
        data = {"model": report.model, "images": report.images}
        data |= {f"text_to_image_R@{k}": v for k, v in report.text_to_image.items()}
        data |= {f"image_to_text_R@{k}": v for k, v in report.image_to_text.items()}
        data |= {f"chance_R@{k}": v for k, v in report.chance.items()}
        data["warning"] = report.warning  # null when there are enough captioned images
        click.echo(json.dumps(data))
        if report.warning:
            click.echo(f"warning: {report.warning}", err=True)
    else:
        rows = [("direction", *(f"R@{k}" for k in report.text_to_image))]
        rows.append(("text -> image", *(f"{v:.3f}" for v in report.text_to_image.values())))
        rows.append(("image -> text", *(f"{v:.3f}" for v in report.image_to_text.values())))
        rows.append(("by chance", *(f"{v:.3f}" for v in report.chance.values())))
        click.echo(f"{report.model}, {report.images} captioned images\n{align_rows(rows)}")
        if report.warning:
            click.echo(f"warning: {report.warning}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--token", help="Require this token on every request [env CLIPDEX_TOKEN].")
@click.option(
    "--watch",
    "watch_paths",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Also keep the collection in line with this folder, as clipdex watch does (repeatable).",
)
@model_options
def serve(host: str, port: int, token: str | None, watch_paths: tuple[str, ...], **flags: Any) -> None:
    """Serve the HTTP API and the web page, with the model loaded once."""
    from pipeline.server.app import serve as run_server  # noqa: PLC0415 - see the module docstring

    settings = _settings(flags.pop("config_file"), token=token, **flags)
    if host not in LOOPBACK and not settings.token:
        raise click.UsageError(f"--host {host} is reachable from other machines: set --token or CLIPDEX_TOKEN")
    _check_can_listen(host, port)  # before the model loads: a busy port is known in a millisecond
    lib = _open(create=bool(watch_paths), settings=settings)
    watcher = _start_watcher(lib, watch_paths) if watch_paths else None
    click.echo(f"serving {lib.collection.uri} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    try:
        run_server(lib, host, port, settings.token)
    finally:
        if watcher is not None:
            watcher.stop()  # after the server: a sync in progress ends after the batch being written


def _check_can_listen(host: str, port: int) -> None:
    """Bind (host, port) once and let go, as uvicorn will bind it, so that a port in use or an
    address of another machine is said in one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadOption(f"--host {host}: not an address or a known host name; give e.g. --host 127.0.0.1") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except PermissionError as exc:
            raise BadOption(
                f"--port {port}: not allowed to listen on it (ports below 1024 need root); "
                "choose another --port, e.g. --port 8000"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BadOption(
                    f"--port {port}: already in use on {host} (another clipdex serve?); "
                    f"choose another --port, e.g. --port {port + 1}"
                ) from exc
            raise BadOption(
                f"--host {host}: cannot listen there ({exc.strerror}); give an address of this machine, "
                "e.g. --host 127.0.0.1"
            ) from exc


def _stored_fingerprint(settings: Settings) -> Fingerprint | None:
    from storage import Collection  # noqa: PLC0415 - see the module docstring

    try:
        return Fingerprint.from_json(Collection.open(settings.db_uri).model)
    except CollectionNotFound:
        return None


def _floor(min_score: float | None, settings: Settings) -> float | None:
    return settings.min_score if min_score is None else min_score


def _one_format(as_json: bool, as_paths: bool) -> None:
    if as_json and as_paths:
        raise click.UsageError("give --json or --paths, not both")


def _print_hits(hits: list[Hit], as_json: bool, as_paths: bool, min_score: float | None, honest: bool = False) -> None:
    if not hits:
        floor = f" at or above score {min_score}" if min_score is not None else ""
        click.echo(
            f"no good match{floor} (no image fits better than a generic caption)" if honest else f"no matches{floor}",
            err=True,
        )
        return
    if as_json:
        click.echo(hits_jsonl(hits))
    elif as_paths:
        click.echo(hits_paths(hits))
    else:
        click.echo(hits_table(hits, width=terminal_width()))


@cli.command(name="verify")
@click.option("--repair", is_flag=True, help="Remove rows of deleted files; re-ingest files whose rows are off.")
@click.option("--workers", type=click.IntRange(min=0), help="Processes reading files; 0 reads in-process.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@model_options
def verify_command(repair: bool, as_json: bool, **flags: Any) -> None:
    """Check that every stored file is unchanged and every vector sound; exit 1 if anything is off."""
    from pipeline.maintain.verify import verify  # noqa: PLC0415 - see the module docstring
    from storage import Collection  # noqa: PLC0415

    settings = _settings(flags.pop("config_file"), **flags)
    with _progress_bar() as progress:
        if repair:
            report = _open(settings=settings).verify(repair=True, progress=progress)
        else:
            report = verify(Collection.open(settings.db_uri), workers=settings.decode_workers, progress=progress)
    fixed = {"missing", "size", "content", "vector", "duplicate", "stale-failure", "damaged"} if repair else set()
    left = [p for p in report.problems if p.kind not in fixed]
    if as_json:
        data = {"checked": report.checked, "problems": report.counts(), "removed": report.removed,
                "reingested": report.reingested, "cleared": report.cleared, "left": len(left),
                "rolled_back": report.rolled_back,
                "details": [{"path": p.path, "kind": p.kind, "detail": p.detail} for p in report.problems]}  # fmt: skip
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        click.echo(f"checked {report.checked} rows ({report.seconds:.1f} s): {len(report.problems)} problems")
        for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
            click.echo(f"{problem.kind}: {problem.path}: {problem.detail}")
        if len(report.problems) > MAX_PROBLEMS_SHOWN:
            click.echo(f"... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more (--json lists all)")
        for line in report.rolled_back:
            click.echo(f"rolled back: {line}")
        if repair and report.problems:
            click.echo(
                f"repaired: {report.removed} rows of deleted files removed, {report.reingested} files re-ingested, "
                f"{report.cleared} failures cleared"
            )
        elif report.problems:
            click.echo("run `clipdex verify --repair` to fix them", err=True)
    if left:
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Skip files and folders matching this glob (repeatable).")
@click.option(
    "--workers", type=click.IntRange(min=0), help="Decode processes; 0 decodes in-process [default: the CPUs]."
)
@click.option("--prune-empty", is_flag=True, help="Remove stored images under a root that has none left.")
@click.option("--poll", is_flag=True, help="Poll instead of inotify (network drives, where no events come).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: one per sync and per notice.")
@model_options
def watch(paths: tuple[str, ...], prune_empty: bool, poll: bool, as_json: bool, **flags: Any) -> None:
    """Keep the collection in line with PATHS: a full sync now, then one after each change (Ctrl-C stops)."""
    from pipeline.maintain.watch import Watcher  # noqa: PLC0415 - see the module docstring

    lib = _open(create=True, **flags)
    out = _WatchOutput(as_json)
    stop = threading.Event()
    watcher = Watcher(
        lib, list(paths), poll=poll, prune_empty=prune_empty, on_sync=out.sync, on_notice=out.notice, stop=stop
    )
    with _first_interrupt_stops(stop):
        watcher.run()


def _start_watcher(lib: Clipdex, paths: tuple[str, ...]) -> Watcher:
    """serve --watch: a Watcher in a thread of the server's process, its lines on stderr."""
    from pipeline.maintain.watch import Watcher  # noqa: PLC0415 - see the module docstring

    out = _WatchOutput(as_json=False, err=True)
    watcher = Watcher(lib, list(paths), on_sync=out.sync, on_notice=out.notice)
    watcher.start()
    return watcher


class _WatchOutput:
    """A watcher's lines: one per sync that changed something (and per full sync), notices on
    stderr; with as_json, JSON lines ({"event": "sync", ...} or the notice's kind)."""

    def __init__(self, as_json: bool, err: bool = False) -> None:
        self.as_json = as_json
        self.err = err

    def sync(self, synced: Synced) -> None:
        r = synced.report
        if self.as_json:
            failures = [{"path": f.path, "reason": f.reason} for f in r.new_failures]
            data = {"event": "sync", **r.counts(), "new_failures": failures, "notes": r.notes}
            data |= {"folders": list(synced.scopes), "full": synced.full, "interrupted": r.interrupted}
            click.echo(json.dumps(data | {"seconds": round(synced.seconds, 3)}, ensure_ascii=False), err=self.err)
            return
        for note in r.notes:
            click.echo(f"note: {note}", err=True)
        counts = [(r.added, "+{} new"), (r.updated, "{} changed"), (r.moved, "{} moved"), (r.removed, "{} removed")]
        counts += [(r.captions, "{} captions"), (len(r.new_failures), "{} failed")]
        parts = ", ".join(form.format(n) for n, form in counts if n)
        if synced.full:
            parts = f"full sync of {', '.join(synced.scopes)}: {parts or 'no changes'}"
        if parts:
            stopped = "; interrupted, the rest at the next start" if r.interrupted else ""
            click.echo(f"{parts} ({synced.seconds:.1f} s){stopped}", err=self.err)
        for line in failure_lines(r.new_failures, limit=MAX_PROBLEMS_SHOWN):
            click.echo(line, err=self.err)

    def notice(self, notice: Notice) -> None:
        if self.as_json:
            data = {"event": notice.kind, "message": notice.message, "path": notice.path}
            click.echo(json.dumps(data, ensure_ascii=False), err=self.err)
        else:
            click.echo(notice.message, err=True)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class _progress_bar:
    """Progress on stderr when it is a terminal (render.ProgressView); silent otherwise."""

    def __init__(self) -> None:
        self._view: ProgressView | None = None

    def __enter__(self) -> Callable[[Progress], None] | None:
        if not _stderr_is_terminal():
            return None
        from rich.console import Console  # noqa: PLC0415 - only on terminals

        self._view = ProgressView(Console(file=sys.stderr, force_terminal=True))
        return self._view.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._view is not None:
            self._view.__exit__(*exc)


@cli.command(name="export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("parquet", "csv", "npy")),
    help="parquet and csv: one row per image, every column, vectors included (csv: as JSON arrays); "
    "npy: FILE.npy the image vectors (n x d float32), FILE.ids.csv the id and path of each row, "
    "FILE.captions.npy the caption vectors (NaN rows where none) [default: from --out's suffix].",
)
@click.option("--out", required=True, type=click.Path(), help="The file to write (.parquet, .csv or .npy).")
@click.option("--where", help="Export only the rows this SQL filter picks, as in search --where.")
@click.option("--force", is_flag=True, help="Replace --out (and its sidecars) if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@db_options
def export_command(
    fmt: str | None, out: str, where: str | None, force: bool, as_json: bool, db: str | None, config_file: str | None
) -> None:
    """Write every image's id, path, metadata and vectors to a file, streamed (memory stays flat)."""
    from pipeline.maintain.export import export as run_export  # noqa: PLC0415 - see the module docstring
    from storage import Collection  # noqa: PLC0415

    collection = Collection.open(_settings(config_file, db=db).db_uri)
    report = run_export(collection, out, format=fmt, where=where, force=force)
    line = f"exported {report.rows} rows to {', '.join(report.files)} ({report.format}, {report.seconds:.1f} s)"
    click.echo(line, err=True)
    if as_json:
        data = {"format": report.format, "rows": report.rows, "files": list(report.files), "bytes": report.bytes}
        click.echo(json.dumps(data, ensure_ascii=False))


def main() -> None:
    """Console entry point."""
    cli(prog_name="clipdex")
