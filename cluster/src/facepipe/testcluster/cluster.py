"""The steps in order, each timed; and their undoing in reverse (``Cluster.stop``)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from facepipe.testcluster import addons, build, control, images, network, node, pki, teardown
from facepipe.testcluster.layout import KUBERNETES_VERSION, RunDir, cache_dir, node_ip
from facepipe.testcluster.procs import Component


class Cluster:
    """A real single-node Kubernetes in ``root`` (a run dir). ``start()`` brings it up; ``stop()``
    removes every process, container, mount, network namespace, route and iptables rule it made."""

    def __init__(self, root: Path, report: Callable[[str], None] = print, product: bool = True) -> None:
        self.run = RunDir(root.resolve())
        self.report = report
        self.product = product
        self.components: list[Component] = []
        self.bins: dict[str, Path] = {}
        self.images: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.node_ip = node_ip()

    @property
    def kubeconfig(self) -> Path:
        return self.run.kubeconfig

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - started, 1)
        self.report(f"{name:<34} {self.timings[name]:7.1f} s")

    def start(self) -> Cluster:
        self.run.make()
        cache_dir().mkdir(parents=True, exist_ok=True)
        build_log = self.run.logs / "build.log"
        try:
            with self._step("binaries (go build, cached)"):
                self.bins = build.build_all(build_log)
            with self._step("certificates and kubeconfigs"):
                pki.make_pki(self.run.pki, self.node_ip)
            with self._step("network (CNI ptp, routes)"):
                network.setup(self.run)
            with self._step("etcd"):
                self.components.append(control.etcd(self.run))
            with self._step("kube-apiserver"):
                self.components.append(control.apiserver(self.run, self.bins, self.node_ip))
            with self._step("kube-controller-manager"):
                self.components.append(control.controller_manager(self.run, self.bins))
            with self._step("kube-scheduler"):
                self.components.append(control.scheduler(self.run, self.bins))
            with self._step("containerd"):
                self.components.append(node.containerd(self.run))
            with self._step("images: pause, coredns"):
                images.binary_image(self.run, "pause", self.bins["pause"], ["/pause"], build_log, "3.10")
                coredns = images.binary_image(
                    self.run, "coredns", self.bins["coredns"], ["/coredns"], build_log, "v1.14.7"
                )
            with self._step("kubelet (node Ready)"):
                self.components.append(node.kubelet(self.run, self.bins, self.node_ip))
            with self._step("kube-proxy"):
                self.components.append(node.kube_proxy(self.run, self.bins, self.node_ip))
            with self._step("CoreDNS"):
                self.apply(addons.coredns_manifests(coredns))
                self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s")
            if self.product:
                with self._step("images: base (debootstrap)"):
                    images.base_image(build_log)
                with self._step("images: product (buildah bud)"):
                    self.images = images.product_images(self.run, build_log, chart_version())
        except BaseException:
            self.stop()
            raise
        (self.run.root / "timings.json").write_text(json.dumps(self.timings, indent=2))
        return self

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.bins["kubectl"], "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, manifests: list[dict], manager: str = "facepipe-testcluster") -> None:
        """Server-side apply, as the product's tools do."""
        self.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={manager}",
            "-f",
            "-",
            input=yaml.safe_dump_all(manifests),
        )

    def stop(self) -> None:
        teardown.teardown(self.run, self.components, self.bins, self.report)
        self.components = []


def chart_version() -> str:
    from facepipe.testcluster.layout import REPO_ROOT

    chart = yaml.safe_load((REPO_ROOT / "charts" / "face-pipeline" / "Chart.yaml").read_text())
    return str(chart.get("appVersion") or chart["version"])


__all__ = ["KUBERNETES_VERSION", "Cluster"]
