"""Settings: one frozen dataclass; precedence is flag > environment variable > config file > default."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from pipeline.errors import ConfigError

DEFAULT_MAX_PIXELS = 200_000_000
DEFAULT_K = 10
TARGETS = ("image", "caption", "both")  # which vectors a text query matches
ENGINES = ("local", "ray")
RUNTIMES = ("auto", "torch", "openvino")  # models.RUNTIMES, repeated so settings load without models
DEFAULT_INDEX_THRESHOLD = 10_000  # LanceDB exact search costs ~3 ms per 1,000 rows here
ENV_PREFIX = "CLIPDEX_"
BOOLEANS = ("follow_links",)  # settings that are true or false
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
USER_CONFIG = Path(platformdirs.user_config_dir("clipdex")) / "config.toml"


def default_workers() -> int:
    """One decode process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_db() -> str:
    """Where a collection lives when --db and CLIPDEX_DB are not given."""
    return str(Path(platformdirs.user_data_dir("clipdex")) / "collection")


@dataclass(frozen=True)
class Settings:
    """Every tunable of clipdex, with its default."""

    db: str = ""  # a folder or s3://... URI; empty means default_db()
    model: str | None = None  # None: the collection's own model, else models.DEFAULT_MODEL
    pretrained: str | None = None  # None: the collection's own tag, else models.DEFAULT_PRETRAINED
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"  # auto (OpenVINO on CPUs, torch on GPUs), torch, openvino: models.RUNTIMES
    batch_size: int | None = None  # None: chosen from the device
    workers: int | None = None  # decode processes (engine ray: encoder actors); None: one per core, 0: in-process
    engine: str = "local"  # local: this machine; ray: a Ray cluster (pipeline.ingest.ray)
    ray_address: str | None = None  # a running Ray cluster; None: start a local Ray
    gpus_per_worker: float = 0.0  # engine ray: GPUs per encoder actor (0: CPU actors)
    cpus_per_worker: float | None = None  # engine ray: CPUs per encoder actor; None: chosen from the cluster
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused as decompression bombs
    include: tuple[str, ...] = ()  # globs a file must match (any), relative path or name
    exclude: tuple[str, ...] = ()  # globs that skip files and folders
    follow_links: bool = False  # walk folder symlinks that point outside the folders given to ingest
    index_threshold: int = DEFAULT_INDEX_THRESHOLD  # images before an ANN index replaces exact search
    commit_rows: int = 2048  # ingest commits this many rows at a time (or every 10 s): what a crash can lose
    k: int = DEFAULT_K
    min_score: float | None = None
    server: str | None = None  # URL of a running `clipdex serve` for search and similar
    token: str | None = None  # the token that server requires, or that `clipdex serve` sets

    @property
    def decode_workers(self) -> int:
        """Decode processes for this machine's work (0: decode in-process)."""
        return default_workers() if self.workers is None else self.workers

    @property
    def encoder_actors(self) -> int:
        """Encoder actors of the Ray engine."""
        return self.workers or 1

    @property
    def db_uri(self) -> str:
        """The collection location, with ~ expanded and local paths made absolute."""
        if not self.db:
            return default_db()
        if "://" in self.db:
            return self.db
        return os.path.abspath(os.path.expanduser(self.db))

    def override(self, **values: Any) -> Settings:
        """A copy with the given values, skipping those that are None (flags not given)."""
        given = {k: v for k, v in values.items() if v is not None and v != ()}
        return replace(self, **_coerce(given, "flag"))


def load_settings(config_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overlaid by a TOML config file, overlaid by CLIPDEX_* environment variables."""
    env = os.environ if env is None else env
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    settings = Settings()
    if path:
        settings = replace(settings, **_read_toml(Path(path).expanduser(), required=True))
    elif USER_CONFIG.is_file():
        settings = replace(settings, **_read_toml(USER_CONFIG, required=False))
    from_env = {
        f.name: env[ENV_PREFIX + f.name.upper()] for f in fields(Settings) if ENV_PREFIX + f.name.upper() in env
    }
    return replace(settings, **_coerce(from_env, "environment variable"))


def _read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; fix --config or CLIPDEX_CONFIG") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}; fix the TOML syntax") from exc
    values = dict(data.get("clipdex", data))
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    return _coerce(values, f"config file {path}")


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check and convert raw values (strings from the environment, TOML values) to field types."""
    out: dict[str, Any] = {}
    for name, raw in values.items():
        try:
            out[name] = _convert(name, raw)
        except (TypeError, ValueError) as exc:
            label = ENV_PREFIX + name.upper() if source == "environment variable" else name
            raise ConfigError(f"{source} {label}={raw!r}: {exc}") from exc
    return out


def _convert(name: str, raw: Any) -> Any:
    if name in BOOLEANS:
        return _boolean(raw)
    if name in ("batch_size", "workers", "max_pixels", "k", "index_threshold", "commit_rows"):
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("must be a whole number")
        value = int(raw)
        if value < (0 if name == "workers" else 1):
            raise ValueError("must be a positive whole number")
        return value
    if name in ("min_score", "cpus_per_worker"):
        number = None if raw in ("", None) else float(raw)
        if name == "cpus_per_worker" and number is not None and number <= 0:
            raise ValueError("must be above 0")
        return number
    if name == "gpus_per_worker":
        if float(raw) < 0:
            raise ValueError("must be 0 or more")
        return float(raw)
    if name == "engine":
        if raw not in ENGINES:
            raise ValueError(f"must be one of {', '.join(ENGINES)}")
        return str(raw)
    if name == "runtime":
        if raw not in RUNTIMES:
            raise ValueError(f"must be one of {', '.join(RUNTIMES)}")
        return str(raw)
    if name in ("include", "exclude"):
        parts = raw.split(",") if isinstance(raw, str) else raw
        return tuple(str(p).strip() for p in parts if str(p).strip())
    if name in ("model", "pretrained", "server", "token", "ray_address"):
        return str(raw) or None
    return str(raw)


def _boolean(raw: Any) -> bool:
    """A bool from TOML or a flag, or true/false, 1/0, yes/no (any case) from the environment."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower() if isinstance(raw, str) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"must be one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
