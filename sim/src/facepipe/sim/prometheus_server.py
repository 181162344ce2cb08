"""The real Prometheus server (Debian's ``prometheus``, the package that gives ``promtool``).

Runs on 127.0.0.1 with a private TSDB folder, its HTTP API and ``/-/reload``
(``--web.enable-lifecycle``). Everything it scrapes and evaluates comes from files this module
writes: ``prometheus.yml`` (reloaded when it changes), rule files (idem) and file_sd target
files (Prometheus watches those itself). ``query`` and ``wait_for`` are the helpers tests use.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from facepipe.cli.ports import launch, with_free_ports
from facepipe.cli.programs import find_program
from facepipe.cli.supervisor import die_with_parent

log = logging.getLogger(__name__)
T = TypeVar("T")


class PrometheusError(RuntimeError):
    """Prometheus answered an error (bad query, rejected configuration) or is not reachable."""


def write_atomically(path: Path, text: str) -> bool:
    """Write only when the content changes, by rename (Prometheus never reads half a file)."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


@functools.lru_cache(maxsize=256)
def _promtool_check(text: str) -> str | None:
    promtool = find_program("promtool")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(text)
        file.flush()
        done = subprocess.run(
            [promtool, "check", "rules", file.name], capture_output=True, text=True, timeout=60
        )
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip().replace(file.name, "<rules>")


def check_rules(content: Mapping[str, Any]) -> str | None:
    """What ``promtool check rules`` finds wrong with a rule file, None when it is valid."""
    return _promtool_check(yaml.safe_dump(dict(content), sort_keys=False))


class PrometheusClient:
    """Prometheus' HTTP API (``/api/v1``) at ``url``: what the adapter and the tests query."""

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            payload = json.loads(exc.read() or b"{}")
        except (OSError, urllib.error.URLError) as exc:
            raise PrometheusError(f"Prometheus at {self.url} is not reachable: {exc}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (``/api/v1/query``): the vector's samples, or a scalar as one sample."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} gives a {data['resultType']}, not an instant vector")
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of a query, None when it returns nothing; several samples are an error."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def series(self, match: str, start: float | None = None) -> list[dict[str, str]]:
        params = {"match[]": match}
        if start is not None:
            params["start"] = f"{start:.3f}"
        return list(self.api("series", **params))

    def targets(self) -> dict[str, Any]:
        return dict(self.api("targets"))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    @staticmethod
    def wait_for(
        check: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.25, what: str = ""
    ) -> T:
        """Poll until ``check()`` is truthy; its last value, or TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or check}")
            time.sleep(interval)


class PrometheusServer(PrometheusClient):
    """``with PrometheusServer(workdir) as prom: prom.query("up")``."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        binary: str = "prometheus",
        global_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or 0  # 0: a free one, picked by start()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.binary = binary  # a program's name (facepipe.cli.programs finds it) or a path
        self.global_config = dict(global_config or {"scrape_interval": "30s", "evaluation_interval": "30s"})
        self.config_path = self.workdir / "prometheus.yml"
        self.rules_dir = self.workdir / "rules"
        self.targets_dir = self.workdir / "targets"
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle --

    def start(self, timeout: float = 60.0) -> str:
        binary = self.binary if os.sep in self.binary else find_program(self.binary)
        for folder in (self.rules_dir, self.targets_dir, self.workdir / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        self.write_config([])

        def start_on(port: int) -> subprocess.Popen[bytes]:
            args = [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ]
            # die_with_parent: SIGTERM when the starting *thread* exits, so a crashed test run leaves
            # no Prometheus behind: start it from a thread that outlives it, e.g. the main one.
            ready = functools.partial(self._ready, f"http://127.0.0.1:{port}")
            proc = launch(
                "prometheus", args, self.log_path, [port], ready, timeout, preexec_fn=die_with_parent
            )
            self.port, self._url = port, f"http://127.0.0.1:{port}"
            return proc

        self._proc = start_on(self.port) if self.port else with_free_ports(start_on)
        return self.url

    @staticmethod
    def _ready(url: str) -> bool:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --

    def render_config(self, scrape_configs: list[dict[str, Any]]) -> str:
        config = {
            "global": self.global_config,
            "rule_files": [str(self.rules_dir / "*.yaml")],
            "scrape_configs": scrape_configs,
        }
        return yaml.safe_dump(config, sort_keys=False)

    def write_config(self, scrape_configs: list[dict[str, Any]]) -> bool:
        """Write prometheus.yml; True when it changed (then :meth:`reload`)."""
        return write_atomically(self.config_path, self.render_config(scrape_configs))

    def write_rule_files(self, files: Mapping[str, Mapping[str, Any]]) -> bool:
        """Make rules/ hold exactly these files (name -> rule groups); True when anything changed."""
        changed = False
        wanted = {f"{name}.yaml" for name in files}
        for stale in self.rules_dir.glob("*.yaml"):
            if stale.name not in wanted:
                stale.unlink()
                changed = True
        for name, content in files.items():
            changed |= write_atomically(
                self.rules_dir / f"{name}.yaml", yaml.safe_dump(dict(content), sort_keys=False)
            )
        return changed

    def write_targets(self, name: str, targets: list[dict[str, str]]) -> Path:
        """A file_sd file: one group per target, since each target has labels of its own."""
        groups = [
            {"targets": [t["__address__"]], "labels": {k: v for k, v in t.items() if k != "__address__"}}
            for t in targets
        ]
        path = self.targets_dir / f"{name}.json"
        write_atomically(path, json.dumps(groups, indent=1, sort_keys=True))
        return path

    def reload(self) -> None:
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30):
                return
        except urllib.error.HTTPError as exc:
            raise PrometheusError(
                f"Prometheus rejected its configuration: {exc.read().decode(errors='replace')}"
            ) from None
