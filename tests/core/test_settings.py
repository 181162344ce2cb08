"""Settings: the Phase 3 legacy aliases (docs/compatibility.md), and one clear line for an invalid value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from facepipe.core.settings import ConfigError, Settings, load_settings

# (primary, legacy alias, Settings field, primary value, alias value, parsed primary, parsed alias)
ALIASES = [
    ("REDIS_STREAM_NAME", "FACE_STREAM", "redis_stream_name", "main-q", "old-q", "main-q", "old-q"),
    ("REDIS_GROUP_NAME", "FACE_GROUP", "redis_group_name", "primary-g", "legacy-g", "primary-g", "legacy-g"),
    ("REDIS_CONSUMER_NAME", "FACE_CONSUMER", "redis_consumer_name", "pipe-p", "pipe-l", "pipe-p", "pipe-l"),
    ("ENABLE_GLOBAL_DEDUP", "GLOBAL_DEDUP_ENABLED", "enable_global_dedup", "true", "false", True, False),
    ("DEDUP_TTL_SECONDS", "GLOBAL_DEDUP_TTL_SEC", "dedup_ttl_seconds", "200", "100", 200, 100),
    ("DEDUP_MAX_HAMMING", "GLOBAL_DEDUP_MAX_HAMMING", "dedup_max_hamming", "5", "3", 5, 3),
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for primary, alias, *_ in ALIASES:
        monkeypatch.delenv(primary, raising=False)
        monkeypatch.delenv(alias, raising=False)
    for name in ("WORKER_BATCH_SIZE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("primary", "alias", "attr", "p_raw", "a_raw", "p_val", "a_val"), ALIASES)
def test_legacy_alias_is_read_and_primary_wins(
    monkeypatch: pytest.MonkeyPatch,
    primary: str,
    alias: str,
    attr: str,
    p_raw: str,
    a_raw: str,
    p_val: object,
    a_val: object,
) -> None:
    default = Settings.model_fields[attr].default
    assert getattr(load_settings(), attr) == default
    monkeypatch.setenv(alias, a_raw)
    assert getattr(load_settings(), attr) == a_val
    monkeypatch.setenv(primary, p_raw)
    assert getattr(load_settings(), attr) == p_val
    monkeypatch.delenv(alias)
    assert getattr(load_settings(), attr) == p_val


def test_consumer_name_defaults_to_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().consumer_name().startswith("pipe-")
    monkeypatch.setenv("FACE_CONSUMER", "pipe-7")
    assert load_settings().consumer_name() == "pipe-7"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DEDUP_MAX_HAMMING", "70", "allowed range 0..64"),
        ("WORKER_BATCH_SIZE", "0", "allowed range 1..1000"),
        ("REDIS_URL", "nope", "redis://"),
    ],
)
def test_invalid_value_is_one_line_naming_variable_and_range(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    line = str(caught.value)
    assert "\n" not in line
    assert f"{name}='{value}'" in line
    assert expected in line


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DEDUP_MAX_HAMMING", "70", "0..64"),
        ("WORKER_BATCH_SIZE", "0", "1..1000"),
        ("REDIS_URL", "nope", "redis://"),
    ],
)
def test_worker_with_invalid_setting_exits_nonzero_with_one_line_and_no_traceback(
    harness, name: str, value: str, expected: str
) -> None:
    result = harness.run("--once", **{name: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_settings_error_from_plain_python_has_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from facepipe.core.settings import load_settings; load_settings()"],
        env={"PATH": "/usr/bin:/bin", "DEDUP_MAX_HAMMING": "70"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: DEDUP_MAX_HAMMING='70' is invalid: allowed range 0..64"
    ]


def test_invalid_value_set_through_legacy_alias_names_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEDUP_MAX_HAMMING", raising=False)
    monkeypatch.setenv("GLOBAL_DEDUP_MAX_HAMMING", "99")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "GLOBAL_DEDUP_MAX_HAMMING='99'" in str(caught.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [("BUCKET_CROPS", "BUCKET_THUMBS"), ("BUCKET_RAW", "BUCKET_METADATA"), ("BUCKET_CROPS", "BUCKET_RAW")],
)
def test_two_roles_sharing_one_bucket_stop_start_up_with_one_line(harness, first: str, second: str) -> None:
    result = harness.run("--once", **{first: "shared-bucket", second: "shared-bucket"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    order = ["BUCKET_RAW", "BUCKET_CROPS", "BUCKET_THUMBS", "BUCKET_METADATA"]
    named = sorted((first, second), key=order.index)
    assert f"{named[0]} and {named[1]} are both 'shared-bucket'" in lines[0]
    assert "must be distinct" in lines[0]


def test_distinct_buckets_are_accepted() -> None:
    settings = load_settings(bucket_crops="c-bucket", bucket_thumbs="t-bucket")
    buckets = {settings.bucket_raw, settings.bucket_crops, settings.bucket_thumbs, settings.bucket_metadata}
    assert len(buckets) == 4
