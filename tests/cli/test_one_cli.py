"""`facepipe dedup-stats`, `facepipe dedup-flush`, `facepipe ensure` against the session's real Redis
and SeaweedFS, and the Makefile targets the runbook names (`make dedup-flush TENANT=x`,
`make dedup-stats`, `make phase3-ensure`) running exactly those commands.

The dedup keys are written straight into Redis under the cache's tenant prefix: what the
cache stores in them is tests/store's business; here the question is whether the commands
reach the cache of the pipeline the environment names, and report and flush what is there.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from facepipe.cli.main import main
from facepipe.core.settings import load_settings
from facepipe.store.dedup import DedupCache
from facepipe.store.storage import ObjectStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pipeline_env(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, refused_port: int
) -> dict[str, str]:
    """The session's servers in the environment; FACEPIPE_API where nothing answers, so no
    `facepipe up` on this machine is used instead."""
    env = {**base_env, "FACEPIPE_API": f"http://127.0.0.1:{refused_port}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _fill_dedup(client: redis.Redis, keys_per_tenant: dict[str, int]) -> None:
    for tenant, count in keys_per_tenant.items():
        prefix = DedupCache.tenant_prefix(tenant)
        for n in range(count):
            client.hset(f"{prefix}test:{n}", mapping={"owner": f"{tenant}-{n}", "pad": "x" * 64})


def _dedup_keys(client: redis.Redis, tenant: str | None = None) -> list[str]:
    pattern = f"{DedupCache.tenant_prefix(tenant)}*" if tenant else "dedup:*"
    return list(client.scan_iter(match=pattern))


def _make_command(target: str, *variables: str) -> list[str]:
    """The command `make TARGET` runs (dry run), with this interpreter for the Makefile's $(PY)."""
    dry = subprocess.run(
        ["make", "-n", "-s", target, *variables], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    [line] = [line for line in dry.stdout.splitlines() if "facepipe" in line]
    argv = shlex.split(line)
    assert argv[:3] == [".venv/bin/python", "-m", "facepipe.cli"], line
    return [sys.executable, *argv[1:]]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    wide = {"COLUMNS": "400"}  # rich wraps lines at 80 columns when not on a terminal
    result = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, **env, **wide}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{argv} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_dedup_stats_reports_the_keys_and_memory_of_the_cache(
    pipeline_env: dict[str, str], redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dedup-stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"keys": 0, "memory_bytes": 0}

    _fill_dedup(redis_client, {"acme": 3, "globex": 2})
    redis_client.set("not-dedup", "x")  # outside the cache: not counted
    keys = _dedup_keys(redis_client)
    memory = sum(int(redis_client.memory_usage(key) or 0) for key in keys)

    assert main(["dedup-stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"keys": len(keys), "memory_bytes": memory}
    assert main(["dedup-stats"]) == 0
    assert f"{len(keys)} keys, {memory} bytes" in capsys.readouterr().out


def test_dedup_flush_of_one_tenant_leaves_the_others(
    pipeline_env: dict[str, str], redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_dedup(redis_client, {"acme": 3, "globex": 2})
    assert main(["dedup-flush", "--tenant", "acme"]) == 0
    assert "Flushed 3 dedup keys (tenant acme)" in capsys.readouterr().out
    assert _dedup_keys(redis_client, "acme") == []
    assert len(_dedup_keys(redis_client, "globex")) == 2

    assert main(["dedup-flush", "--tenant", "a:b"]) == 2  # a tenant id that could match others' keys
    assert "tenant_id 'a:b' is invalid" in capsys.readouterr().err
    assert len(_dedup_keys(redis_client, "globex")) == 2


def test_dedup_commands_say_when_redis_is_unreachable(
    pipeline_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    refused_port: int,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{refused_port}/0")
    assert main(["dedup-stats"]) == 1
    assert "cannot reach the pipeline" in capsys.readouterr().err


def test_make_dedup_targets_run_the_facepipe_command(
    pipeline_env: dict[str, str], redis_client: redis.Redis
) -> None:
    flush = _make_command("dedup-flush", "TENANT=acme")
    assert flush[1:] == ["-m", "facepipe.cli", "dedup-flush", "--tenant", "acme"]
    assert _make_command("dedup-flush")[1:] == ["-m", "facepipe.cli", "dedup-flush"]
    stats = _make_command("dedup-stats")

    _fill_dedup(redis_client, {"acme": 2, "globex": 1})
    assert json.loads(_run(stats, pipeline_env).stdout)["keys"] == 3
    assert "Flushed 2 dedup keys (tenant acme)" in _run(flush, pipeline_env).stdout
    assert json.loads(_run(stats, pipeline_env).stdout)["keys"] == 1


def test_make_phase3_ensure_creates_groups_buckets_and_collection_once(
    pipeline_env: dict[str, str], redis_client: redis.Redis
) -> None:
    ensure = _make_command("phase3-ensure")
    assert ensure[1:] == ["-m", "facepipe.cli", "ensure"]
    settings = load_settings()

    first = _run(ensure, pipeline_env).stdout
    for stream in settings.pipeline_streams:
        assert f"consumer group {settings.redis_group_name} on {stream}: created" in first
        groups = [g["name"] for g in redis_client.xinfo_groups(stream)]
        assert groups == [settings.redis_group_name]
    assert f"created {', '.join(ObjectStore(settings).buckets)}" in first
    # MODEL_PACK's collection of the family QDRANT_COLLECTION (docs/models.md, "Changing the model pack")
    collection = f"{settings.qdrant_collection}_{settings.model_pack}_v1"
    assert f"Qdrant collection {collection} (512-d): created" in first
    store = ObjectStore(settings)
    assert all(store.client.bucket_exists(bucket) for bucket in store.buckets)

    again = _run(ensure, pipeline_env).stdout  # idempotent: everything is there already
    assert "created" not in again
    assert "all exist" in again and f"Qdrant collection {collection} (512-d): exists" in again


def test_no_make_target_runs_a_library_module_as_a_command() -> None:
    """One CLI: the Makefile's operations go through `facepipe`, not through a library's own main."""
    makefile = (ROOT / "Makefile").read_text()
    assert "-m facepipe.store" not in makefile
