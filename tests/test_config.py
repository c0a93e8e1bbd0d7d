"""Settings: defaults, config file, CLIPDEX_* environment variables and flags, in that order of precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline.config
from pipeline.config import DEFAULT_K, DEFAULT_MAX_PIXELS, Settings, load_settings
from pipeline.errors import ConfigError


def _toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- defaults


def test_defaults() -> None:
    settings = load_settings(env={})

    assert settings == Settings()
    assert settings.db == ""
    assert (settings.model, settings.pretrained) == (None, None)
    assert (settings.device, settings.precision) == ("auto", "auto")
    assert (settings.batch_size, settings.workers) == (None, None)
    assert settings.max_pixels == DEFAULT_MAX_PIXELS == 200_000_000
    assert (settings.include, settings.exclude) == ((), ())
    assert settings.k == DEFAULT_K == 10
    assert settings.min_score is None


def test_default_db_is_under_xdg_data_home(tmp_path: Path) -> None:
    # The clean_env fixture points XDG_DATA_HOME at tmp_path / "xdg-data".
    assert Settings().db_uri == str(tmp_path / "xdg-data" / "clipdex" / "collection")


def test_os_environ_is_read_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDEX_K", "3")

    settings = load_settings()

    assert settings.k == 3
    assert settings.workers == 0  # CLIPDEX_WORKERS=0 from the clean_env fixture


# ---------------------------------------------------------------- config file


def test_config_file_values(tmp_path: Path) -> None:
    config = _toml(
        tmp_path / "clipdex.toml",
        'db = "~/photos-db"\nmodel = "ViT-B-32"\npretrained = "openai"\ndevice = "cpu"\n'
        'precision = "fp32"\nbatch_size = 8\nworkers = 0\nmax_pixels = 1000000\n'
        'include = ["*.jpg", "*.png"]\nexclude = ["drafts"]\nk = 5\nmin_score = 0.25\n',
    )

    assert load_settings(config, env={}) == Settings(
        db="~/photos-db",
        model="ViT-B-32",
        pretrained="openai",
        device="cpu",
        precision="fp32",
        batch_size=8,
        workers=0,
        max_pixels=1_000_000,
        include=("*.jpg", "*.png"),
        exclude=("drafts",),
        k=5,
        min_score=0.25,
    )


def test_config_file_with_clipdex_table(tmp_path: Path) -> None:
    config = _toml(tmp_path / "clipdex.toml", '[clipdex]\nk = 4\ndevice = "cuda"\n')

    settings = load_settings(str(config), env={})

    assert (settings.k, settings.device) == (4, "cuda")


def test_config_file_from_clipdex_config_variable(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "k = 7\n")

    assert load_settings(env={"CLIPDEX_CONFIG": str(config)}).k == 7


def test_config_flag_beats_clipdex_config_variable(tmp_path: Path) -> None:
    flag = _toml(tmp_path / "flag.toml", "k = 1\n")
    var = _toml(tmp_path / "var.toml", "k = 2\n")

    assert load_settings(flag, env={"CLIPDEX_CONFIG": str(var)}).k == 1


def test_config_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _toml(tmp_path / "c.toml", "k = 9\n")

    assert load_settings("~/c.toml", env={}).k == 9


def test_user_config_is_read_when_no_config_is_given() -> None:
    _toml(pipeline.config.USER_CONFIG, 'k = 12\nexclude = ["tmp"]\n')

    settings = load_settings(env={})

    assert (settings.k, settings.exclude) == (12, ("tmp",))


def test_user_config_is_ignored_when_a_config_is_given(tmp_path: Path) -> None:
    _toml(pipeline.config.USER_CONFIG, 'k = 12\ndevice = "cpu"\n')
    config = _toml(tmp_path / "other.toml", "k = 3\n")

    assert load_settings(config, env={}) == Settings(k=3)
    assert load_settings(env={"CLIPDEX_CONFIG": str(config)}) == Settings(k=3)


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", 'k = 3\ncolour = "blue"\n')

    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})

    message = str(info.value)
    assert message.startswith(f"config file {config}: unknown key 'colour'; known keys: ")
    assert "batch_size" in message


def test_unknown_key_in_user_config_is_an_error() -> None:
    _toml(pipeline.config.USER_CONFIG, "batchsize = 3\n")

    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load_settings(env={})


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError) as info:
        load_settings(missing, env={})

    assert str(info.value) == f"config file {missing} does not exist; fix --config or CLIPDEX_CONFIG"


def test_bad_toml_syntax(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "k = \n")

    with pytest.raises(ConfigError, match=r"fix the TOML syntax$") as info:
        load_settings(config, env={})

    assert str(info.value).startswith(f"config file {config}: ")


def test_bad_value_in_config_file_names_the_key(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", 'batch_size = "many"\n')

    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})

    assert str(info.value) == (
        f"config file {config} batch_size='many': invalid literal for int() with base 10: 'many'"
    )


# ---------------------------------------------------------------- environment variables


def test_environment_overrides_config_file(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", 'batch_size = 8\ndevice = "cpu"\nk = 4\n')

    settings = load_settings(config, env={"CLIPDEX_BATCH_SIZE": "16", "CLIPDEX_DEVICE": "cuda:1"})

    assert (settings.batch_size, settings.device, settings.k) == (16, "cuda:1", 4)


def test_environment_overrides_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    _toml(pipeline.config.USER_CONFIG, "k = 12\nmax_pixels = 5\n")
    monkeypatch.setenv("CLIPDEX_K", "2")

    settings = load_settings()

    assert (settings.k, settings.max_pixels) == (2, 5)


def test_every_field_has_a_variable() -> None:
    env = {
        "CLIPDEX_DB": "s3://bucket/photos",
        "CLIPDEX_MODEL": "ViT-L-14",
        "CLIPDEX_PRETRAINED": "laion2b",
        "CLIPDEX_DEVICE": "mps",
        "CLIPDEX_PRECISION": "fp16",
        "CLIPDEX_BATCH_SIZE": "64",
        "CLIPDEX_WORKERS": "3",
        "CLIPDEX_MAX_PIXELS": "50000000",
        "CLIPDEX_INCLUDE": "*.jpg,*.heic",
        "CLIPDEX_EXCLUDE": "drafts",
        "CLIPDEX_K": "20",
        "CLIPDEX_MIN_SCORE": "0.3",
        "CLIPDEX_UNRELATED": "ignored",
    }

    assert load_settings(env=env) == Settings(
        db="s3://bucket/photos",
        model="ViT-L-14",
        pretrained="laion2b",
        device="mps",
        precision="fp16",
        batch_size=64,
        workers=3,
        max_pixels=50_000_000,
        include=("*.jpg", "*.heic"),
        exclude=("drafts",),
        k=20,
        min_score=0.3,
    )


def test_bad_int_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"CLIPDEX_BATCH_SIZE": "lots"})

    assert str(info.value) == (
        "environment variable CLIPDEX_BATCH_SIZE='lots': invalid literal for int() with base 10: 'lots'"
    )


@pytest.mark.parametrize(("name", "value"), [("BATCH_SIZE", "0"), ("K", "-1"), ("MAX_PIXELS", "0"), ("WORKERS", "-1")])
def test_non_positive_numbers_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={f"CLIPDEX_{name}": value})

    assert str(info.value) == f"environment variable CLIPDEX_{name}={value!r}: must be a positive whole number"


def test_zero_workers_is_allowed() -> None:
    assert load_settings(env={"CLIPDEX_WORKERS": "0"}).workers == 0


def test_bad_float_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable CLIPDEX_MIN_SCORE='high': "):
        load_settings(env={"CLIPDEX_MIN_SCORE": "high"})


def test_empty_min_score_and_model_mean_unset() -> None:
    settings = load_settings(env={"CLIPDEX_MIN_SCORE": "", "CLIPDEX_MODEL": "", "CLIPDEX_PRETRAINED": ""})

    assert (settings.min_score, settings.model, settings.pretrained) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("*.jpg", ("*.jpg",)), ("*.jpg,*.png", ("*.jpg", "*.png")), ("a,,b,", ("a", "b")), ("", ())],
)
def test_include_and_exclude_from_comma_separated_variables(value: str, expected: tuple[str, ...]) -> None:
    settings = load_settings(env={"CLIPDEX_INCLUDE": value, "CLIPDEX_EXCLUDE": value})

    assert (settings.include, settings.exclude) == (expected, expected)


def test_include_patterns_are_stripped() -> None:
    settings = load_settings(env={"CLIPDEX_INCLUDE": "*.jpg, *.png", "CLIPDEX_EXCLUDE": " drafts , tmp "})

    assert (settings.include, settings.exclude) == (("*.jpg", "*.png"), ("drafts", "tmp"))


# ---------------------------------------------------------------- flags (Settings.override)


def test_flags_beat_environment_and_file(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", 'k = 4\ndevice = "cpu"\nbatch_size = 2\n')
    settings = load_settings(config, env={"CLIPDEX_K": "6", "CLIPDEX_DEVICE": "cuda"})

    flagged = settings.override(k=8, device="mps")

    assert (flagged.k, flagged.device, flagged.batch_size) == (8, "mps", 2)


def test_flags_not_given_are_ignored() -> None:
    settings = load_settings(env={"CLIPDEX_K": "6", "CLIPDEX_INCLUDE": "*.jpg", "CLIPDEX_MODEL": "ViT-B-32"})

    assert settings.override(k=None, include=(), model=None, min_score=None) == settings


def test_override_returns_a_copy() -> None:
    settings = Settings()

    flagged = settings.override(k=3)

    assert (settings.k, flagged.k) == (DEFAULT_K, 3)


def test_flags_are_converted() -> None:
    flagged = Settings().override(include=["*.jpg", "*.png"], batch_size="16", min_score="0.5")

    assert (flagged.include, flagged.batch_size, flagged.min_score) == (("*.jpg", "*.png"), 16, 0.5)


def test_bad_flag_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings().override(batch_size=0)

    assert str(info.value) == "flag batch_size=0: must be a positive whole number"


# ---------------------------------------------------------------- db_uri


def test_db_uri_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert Settings(db="~/photos-db").db_uri == str(tmp_path / "home" / "photos-db")


def test_db_uri_makes_relative_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    assert Settings(db="collections/../db").db_uri == str(tmp_path / "db")
    assert os.path.isabs(Settings(db="db").db_uri)


@pytest.mark.parametrize("uri", ["s3://bucket/photos", "gs://bucket/a/b", "az://container/x"])
def test_db_uri_keeps_remote_uris(uri: str) -> None:
    assert Settings(db=uri).db_uri == uri


def test_db_uri_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    assert load_settings(env={"CLIPDEX_DB": "~/x"}).db_uri == str(tmp_path / "x")


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.toml")), ids=str)
def test_shipped_configs_load(path: Path) -> None:
    settings = load_settings(path, env={})
    assert settings.db or settings.device or settings.engine


def test_engine_settings() -> None:
    settings = load_settings(
        env={"CLIPDEX_ENGINE": "ray", "CLIPDEX_GPUS_PER_WORKER": "0.5", "CLIPDEX_CPUS_PER_WORKER": "2"}
    )
    assert (settings.engine, settings.gpus_per_worker, settings.cpus_per_worker) == ("ray", 0.5, 2.0)
    with pytest.raises(ConfigError, match=r"CLIPDEX_ENGINE='spark': must be one of local, ray"):
        load_settings(env={"CLIPDEX_ENGINE": "spark"})
    with pytest.raises(ConfigError, match=r"CLIPDEX_CPUS_PER_WORKER='0': must be above 0"):
        load_settings(env={"CLIPDEX_CPUS_PER_WORKER": "0"})


# ---------------------------------------------------------------- follow_links


def test_follow_links_is_off_by_default() -> None:
    assert load_settings(env={}).follow_links is False


def test_follow_links_from_config_file(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "follow_links = true\n")

    assert load_settings(config, env={}).follow_links is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("YES", True),
        (" True ", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("No", False),
    ],
)
def test_follow_links_from_environment(tmp_path: Path, value: str, expected: bool) -> None:
    config = _toml(tmp_path / "c.toml", f"follow_links = {str(not expected).lower()}\n")

    assert load_settings(config, env={"CLIPDEX_FOLLOW_LINKS": value}).follow_links is expected


def test_bad_follow_links_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"CLIPDEX_FOLLOW_LINKS": "maybe"})

    assert str(info.value) == (
        "environment variable CLIPDEX_FOLLOW_LINKS='maybe': must be one of true, 1, yes, false, 0, no"
    )


def test_follow_links_in_config_file_must_be_a_boolean(tmp_path: Path) -> None:
    config = _toml(tmp_path / "c.toml", "follow_links = 2\n")

    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})

    assert str(info.value) == f"config file {config} follow_links=2: must be one of true, 1, yes, false, 0, no"


def test_follow_links_flag_beats_environment() -> None:
    settings = load_settings(env={"CLIPDEX_FOLLOW_LINKS": "yes"})

    assert settings.override(follow_links=False).follow_links is False
    assert settings.override(follow_links=None).follow_links is True  # flag not given
