"""The cluster simulation's Prometheus: a real server kept in line with the monitors in the API.

What prometheus-operator and Prometheus' Kubernetes discovery do in a cluster, done here by
polling the API (emulator) every ``sync_interval`` seconds:

- every ServiceMonitor / PodMonitor becomes scrape jobs (:mod:`facepipe.sim.scrape_config`);
- their targets are discovered from Pods, Services and Endpoints
  (:mod:`facepipe.sim.scrape_targets`) and written as file_sd files;
- every PrometheusRule becomes a rule file, so alerts evaluate;
- Prometheus reloads (``/-/reload``) when its configuration or rules change;
- a kube-state-metrics stand-in (:mod:`facepipe.sim.kube_state_metrics`) is scraped too, for
  the Deployment series the dashboards and alerts read.

A monitor the simulation cannot honour is left out and reported in :attr:`Monitoring.problems`
(and the log), never scraped some other way. Start it with :func:`start_monitoring`
(``with start_monitoring(kubeconfig, workdir) as monitoring: monitoring.prometheus.query(...)``);
setting the stop event given to it, or ``stop()``, ends the controller and Prometheus.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facepipe.operator.kube import Kind, KubeApi, KubeApiError
from facepipe.sim.controller import PeriodicController
from facepipe.sim.kube_state_metrics import KubeStateMetrics
from facepipe.sim.kubeutil import (
    ENDPOINTS,
    POD,
    POD_MONITOR,
    PROMETHEUS_RULE,
    SERVICE,
    SERVICE_MONITOR,
    format_duration,
)
from facepipe.sim.prometheus_server import PrometheusError, PrometheusServer, check_rules
from facepipe.sim.scrape_config import (
    ScrapeJob,
    ScrapeOptions,
    UnsupportedMonitor,
    monitor_jobs,
    rule_file,
)
from facepipe.sim.scrape_targets import derive_endpoints, endpoints_role_targets, pod_role_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitoringOptions:
    """``scrape_interval``/``evaluation_interval`` in seconds (None: what the monitors say, and
    Prometheus' 30 s); ``max_alert_for`` caps every alert's ``for`` (tests); ``extra_scrape_configs``
    are appended verbatim; ``kube_state_metrics`` runs and scrapes the stand-in."""

    scrape_interval: float | None = None
    evaluation_interval: float = 30.0
    sync_interval: float = 1.0
    max_alert_for: float | None = None
    extra_scrape_configs: tuple[Mapping[str, Any], ...] = ()
    kube_state_metrics: bool = True


@dataclass
class SyncResult:
    jobs: list[str] = field(default_factory=list)
    targets: dict[str, int] = field(default_factory=dict)
    rule_files: list[str] = field(default_factory=list)
    reloaded: bool = False


def _list(kube: KubeApi, kind: Kind) -> list[dict[str, Any]]:
    """All objects of a kind; none when the API does not serve it (as without the operator's CRDs)."""
    try:
        return kube.list(kind, None)
    except KubeApiError as exc:
        if exc.not_found:
            return []
        raise


def _in(namespaces: list[str] | None, obj: Mapping[str, Any]) -> bool:
    return namespaces is None or obj["metadata"].get("namespace") in namespaces


class Monitoring(PeriodicController):
    thread_name = "sim-monitoring"

    """Prometheus plus the controller thread that keeps it in line with the API."""

    def __init__(self, kube: KubeApi, workdir: Path, options: MonitoringOptions | None = None) -> None:
        self.options = options or MonitoringOptions()
        super().__init__(self.options.sync_interval)
        self.kube = kube
        interval = self.options.scrape_interval
        self.prometheus = PrometheusServer(
            workdir,
            global_config={
                "scrape_interval": format_duration(interval) if interval else "30s",
                "evaluation_interval": format_duration(self.options.evaluation_interval),
            },
        )
        self.kube_state_metrics = KubeStateMetrics(kube) if self.options.kube_state_metrics else None
        self.problems: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- lifecycle --

    def start(self, stop: threading.Event | None = None) -> str:  # type: ignore[override]
        """Start Prometheus (from the calling thread, which it follows) and the controller."""
        if self.kube_state_metrics is not None:
            self.kube_state_metrics.start()
        try:
            url = self.prometheus.start()
            self.sync_once()
        except Exception:
            self.prometheus.stop()
            if self.kube_state_metrics is not None:
                self.kube_state_metrics.stop()
            raise
        super().start(stop)
        return url

    def _loop(self) -> None:
        super()._loop()
        self._shut_down()  # the stop event was set: Prometheus goes with the controller

    def _shut_down(self) -> None:
        self.prometheus.stop()
        if self.kube_state_metrics is not None:
            self.kube_state_metrics.stop()

    def stop(self) -> None:
        super().stop()
        self._shut_down()

    def __enter__(self) -> Monitoring:
        if not self.started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one pass --

    def sync_once(self) -> SyncResult:
        with self._lock:
            return self._sync()

    def _sync(self) -> SyncResult:
        result = SyncResult()
        problems: dict[str, str] = {}
        jobs = self._jobs(problems)
        pods = _list(self.kube, POD)
        services = _list(self.kube, SERVICE)
        endpoints = {
            (e["metadata"]["namespace"], e["metadata"]["name"]): e for e in _list(self.kube, ENDPOINTS)
        }
        for job in jobs:
            targets = self._targets(job, pods, services, endpoints)
            self.prometheus.write_targets(job.file_name, targets)
            result.jobs.append(job.name)
            result.targets[job.name] = len(targets)
        wanted = {f"{job.file_name}.json" for job in jobs}
        for stale in self.prometheus.targets_dir.glob("*.json"):
            if stale.name not in wanted:
                stale.unlink()
        configs = [job.config for job in jobs] + [dict(c) for c in self.options.extra_scrape_configs]
        if self.kube_state_metrics is not None:
            configs.append(self.kube_state_metrics.scrape_config())
        changed = self.prometheus.write_config(configs)
        rules = self._rules(problems)
        changed |= self.prometheus.write_rule_files(rules)
        result.rule_files = sorted(rules)
        if changed:
            try:
                self.prometheus.reload()
                result.reloaded = True
                log.info("prometheus reloaded: %d scrape jobs, %d rule files", len(configs), len(rules))
            except PrometheusError as exc:  # Prometheus keeps its previous configuration
                problems["Prometheus configuration"] = str(exc)
        for key, problem in problems.items():
            if self.problems.get(key) != problem:
                log.error("%s: %s", key, problem)
        self.problems = problems
        return result

    def _jobs(self, problems: dict[str, str]) -> list[ScrapeJob]:
        options = ScrapeOptions(interval=self.options.scrape_interval)
        jobs: list[ScrapeJob] = []
        for kind in (SERVICE_MONITOR, POD_MONITOR):
            for monitor in _list(self.kube, kind):
                key = f"{kind.kind}/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
                try:
                    jobs += monitor_jobs({**monitor, "kind": kind.kind}, self.prometheus.targets_dir, options)
                except (UnsupportedMonitor, KeyError, ValueError) as exc:
                    problems[key] = f"not scraped: {exc}"
        return jobs

    def _rules(self, problems: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Rule files of the valid PrometheusRules; an invalid one is left out, as
        prometheus-operator does, so that it cannot stop Prometheus from loading the others."""
        rules = {}
        for rule in _list(self.kube, PROMETHEUS_RULE):
            name, content = rule_file(rule, max_for=self.options.max_alert_for)
            problem = check_rules(content)
            if problem:
                meta = rule["metadata"]
                problems[f"PrometheusRule/{meta['namespace']}/{meta['name']}"] = f"not loaded: {problem}"
            else:
                rules[name] = content
        return rules

    @staticmethod
    def _targets(
        job: ScrapeJob,
        pods: list[dict[str, Any]],
        services: Iterable[dict[str, Any]],
        endpoints: Mapping[tuple[str, str], dict[str, Any]],
    ) -> list[dict[str, str]]:
        if job.role == "pod":
            return pod_role_targets(p for p in pods if _in(job.namespaces, p))
        by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        targets: list[dict[str, str]] = []
        for service in services:
            if not _in(job.namespaces, service):
                continue
            key = (service["metadata"]["namespace"], service["metadata"]["name"])
            found = endpoints.get(key) or derive_endpoints(service, pods)
            if found is not None:
                targets += endpoints_role_targets(found, service, by_name)
        return targets


def start_monitoring(
    kubeconfig: str | Path,
    workdir: Path,
    options: MonitoringOptions | None = None,
    stop: threading.Event | None = None,
) -> Monitoring:
    """Prometheus and its controller, started; ``stop`` set, ``stop()`` or the context manager
    ends both."""
    monitoring = Monitoring(KubeApi.from_environment(str(kubeconfig)), workdir, options)
    monitoring.start(stop)
    return monitoring
