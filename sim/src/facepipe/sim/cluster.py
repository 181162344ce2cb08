"""The cluster simulation: the API emulator, the operator, controllers, a kubelet and backing Services.

``make cluster-sim`` (``python -m facepipe.sim.cluster``) and the tests' fixture run the
same :class:`ClusterSim`: the KMock-based API emulator on 127.0.0.1 (kubeconfig written),
the Deployment, ReplicaSet and Service controllers, a local-path claim binder, the kubelet
stand-in that runs every pod as real processes in namespaces of their own, the backing
servers published as Services, and the operator (``python -m facepipe.operator`` as a
host process whose /etc/hosts carries the cluster's names, as it would in its namespace).
Controllers, kubelet and proxies share one event loop on a thread of their own. Beside
them (:mod:`facepipe.sim.cluster_addons`): the operator chart's monitors, a real
Prometheus scraping what they select, and the HPA and KEDA stand-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from facepipe.sim import apiclient
from facepipe.sim.apiclient import Api, Informer
from facepipe.sim.backing import BACKING_SERVICES, BackingServers
from facepipe.sim.cluster_addons import AddonOptions, Addons
from facepipe.sim.containers import ContainerProcess
from facepipe.sim.egress import DEFAULT_EGRESS, Egress
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig
from facepipe.sim.hostprocs import Guardian, start_host_process
from facepipe.sim.imagecache import DEFAULT_ROOT, ImageCache, ImageResolver
from facepipe.sim.images import load_recipes, python_for_images
from facepipe.sim.kubelet import Kubelet
from facepipe.sim.podenv import Cluster
from facepipe.sim.podnet import GATEWAY, ClusterNetwork
from facepipe.sim.podworker import Node, Termination
from facepipe.sim.rootfs import LAUNCHER
from facepipe.sim.services import ClusterDns, ServiceController
from facepipe.sim.volumes import ClaimBinder, claim_folder
from facepipe.sim.workloads import DeploymentController, ReplicaSetController

log = logging.getLogger("facepipe.sim")
T = TypeVar("T")
OPERATOR_NAMESPACE = "facepipe-system"
# A further controller run on the simulation's loop (e.g. an autoscaler or a Prometheus feeder):
# called with the simulation once its API client and informers exist; runs until cancelled.
ControllerFactory = Callable[["ClusterSim"], Awaitable[None]]


@dataclass
class SimConfig:
    repo: Path
    folder: Path  # kubeconfig, pods' folders, claims, backing servers' data, logs
    crds: list[Path] = field(default_factory=list)
    backing_namespaces: list[str] = field(default_factory=lambda: ["default", "facepipe-demo"])
    operator: bool = True
    operator_env: dict[str, str] = field(default_factory=dict)
    base_backoff: float = 10.0  # the kubelet's restart back-off (tests may shorten it)
    images_root: Path = DEFAULT_ROOT
    controllers: list[ControllerFactory] = field(default_factory=list)
    prebuild_images: bool = True  # every image's environment before start() returns (else on first use)
    addons: AddonOptions | None = field(default_factory=AddonOptions)  # Prometheus, HPA, KEDA
    egress: tuple[str, ...] = DEFAULT_EGRESS  # outside hosts the pods reach (facepipe.sim.egress)


class ClusterSim:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.emulator: EmulatorServer | None = None
        self.kubeconfig = config.folder / "kubeconfig"
        self.network = ClusterNetwork()
        self.dns = ClusterDns()
        self.guardian = Guardian()
        self.backing = BackingServers(config.folder / "backing", self.guardian)
        self.services: ServiceController | None = None
        self.kubelet: Kubelet | None = None
        self.operator: ContainerProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.api: Api | None = None  # for controllers on the simulation's loop
        self.informers: dict[str, Informer] = {}  # by plural: pods, services, deployments, ...
        self.node: Node | None = None
        self.addons: Addons | None = None

    # -- from the caller's thread --

    @property
    def url(self) -> str:
        assert self.emulator is not None
        return self.emulator.url

    def start(self, timeout: float = 600.0) -> ClusterSim:
        self.config.folder.mkdir(parents=True, exist_ok=True)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per API request
        self.emulator = EmulatorServer(self.config.crds)
        self.emulator.start()
        write_kubeconfig(self.kubeconfig, self.emulator.url)
        self._thread = threading.Thread(target=self._run, name="cluster-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the cluster simulation did not start: {self._error}") from self._error
        if self.config.addons is not None:
            addons = Addons(
                self.kubeconfig, self.config.folder / "prometheus", self.resolve, self.config.addons
            )
            try:
                self.addons = addons.start(self.config.repo, OPERATOR_NAMESPACE)
            except BaseException:
                self.stop()
                raise
        return self

    def resolve(self, host: str, port: int, namespace: str) -> tuple[str, int]:
        """Where a name written in the cluster (``redis.ns.svc``) is reached from this host, as a
        pod of ``namespace`` would resolve it (KEDA's trigger addresses)."""
        return self.dns.resolve(host, namespace), port

    @property
    def prometheus_url(self) -> str | None:
        return self.addons.prometheus_url if self.addons else None

    def stop(self) -> None:
        if self.addons is not None:
            self.addons.stop()
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(120)
        if self.emulator is not None:
            self.emulator.stop()
        self.kubeconfig.unlink(missing_ok=True)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run a coroutine on the simulation's loop (e.g. ``sim.call(sim.publish_backing("ns"))``)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def pod_folder(self, namespace: str, pod: str) -> Path:
        """The pod's folder: its containers' logs (``containers/<name>.log``), hosts file, volumes."""
        found = sorted(
            (self.config.folder / "pods").glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime
        )
        if not found:
            raise FileNotFoundError(f"no pod {namespace}/{pod} has run")
        return found[-1]

    def logs(self, namespace: str, pod: str, container: str, *, init: bool = False) -> str:
        """Everything the container wrote (all its runs), like ``kubectl logs`` with every restart."""
        try:
            folder = self.pod_folder(namespace, pod)
        except FileNotFoundError:
            return ""  # never started
        path = folder / ("init" if init else "containers") / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def terminations(self) -> list[Termination]:
        return list(self.node.terminations) if self.node else []

    def claim_folder(self, namespace: str, claim: str) -> Path:
        """The host folder behind a PersistentVolumeClaim (e.g. to pre-fill it with model files)."""
        return claim_folder(self.config.folder / "claims", namespace, claim)

    def run_on_host(
        self, argv: list[str], *, namespace: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on this host as if from a pod of ``namespace``: the cluster's names resolve.

        E.g. ``facepipe ingest`` with a pipeline's ConfigMap as its environment, unchanged: its
        ``redis.<ns>.svc`` and ``minio.<ns>.svc`` resolve (the host reaches every Service address).
        """
        folder = Path(tempfile.mkdtemp(prefix="host-", dir=self.config.folder))
        (folder / "hosts").write_text(self.dns.hosts(namespace))
        plan = {
            "rootfs": None,
            "mounts": [
                {"kind": "bind", "source": str(folder / "hosts"), "target": "/etc/hosts", "readonly": True}
            ],
            "workdir": str(self.config.repo),
            "uid": 0,
            "gid": 0,
            "groups": [],
            "env": {**os.environ, **(env or {})},
            "argv": argv,
        }
        (folder / "plan.json").write_text(json.dumps(plan))
        try:
            return subprocess.run(
                [python_for_images(), "-I", str(LAUNCHER), "container", str(folder / "plan.json")],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def service_address(self, namespace: str, name: str) -> str | None:
        """The ClusterIP of a Service (reachable from this host as from every pod)."""
        return self.services.address_of(namespace, name) if self.services else None

    def __enter__(self) -> ClusterSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- on the simulation's loop --

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        api = self.api = Api(self.url)
        folder = self.config.folder
        informers = self.informers = {
            kind.plural: Informer(api, kind)
            for kind in (
                apiclient.POD, apiclient.REPLICA_SET, apiclient.DEPLOYMENT, apiclient.SERVICE,
                apiclient.ENDPOINTS, apiclient.CONFIG_MAP, apiclient.SECRET, apiclient.PVC,
            )
        }  # fmt: skip
        cluster = Cluster(
            config_map=informers["configmaps"].get,
            secret=informers["secrets"].get,
            services=lambda ns: informers["services"].items(ns),
            host_ip=GATEWAY,
        )
        await self.guardian.start()
        await self.network.start()
        egress = Egress(self.network, self.dns, self.config.egress)
        await egress.start()
        claims = ClaimBinder(api, informers["persistentvolumeclaims"], folder / "claims")
        recipes = load_recipes(self.config.repo)
        images = ImageResolver(recipes, ImageCache(self.config.repo, self.config.images_root))
        if self.config.prebuild_images:
            await asyncio.gather(*(asyncio.to_thread(images.environment, name) for name in recipes))
        node = self.node = Node(
            api=api,
            network=self.network,
            images=images,
            cluster=cluster,
            dns=self.dns,
            claims=claims,
            folder=folder / "pods",
            claims_folder=folder / "claims",
            base_backoff=self.config.base_backoff,
        )
        replica_sets = ReplicaSetController(api, informers["replicasets"], informers["pods"])
        deployments = DeploymentController(api, informers["deployments"], informers["replicasets"])
        self.services = ServiceController(
            api, informers["services"], informers["pods"], informers["endpoints"], self.network, self.dns
        )
        self.kubelet = Kubelet(node, informers["pods"])
        loops = [i.run() for i in informers.values()]
        loops += [replica_sets.queue.run(), deployments.queue.run(), self.services.queue.run()]
        loops += [factory(self) for factory in self.config.controllers]
        try:
            async with apiclient.running(*loops):
                await asyncio.gather(*(i.synced.wait() for i in informers.values()))
                await self.kubelet.register()
                await self.backing.start()
                for namespace in self.config.backing_namespaces:
                    await self.publish_backing(namespace)
                if self.config.operator:
                    await self._start_operator()
                self._ready.set()
                await self._stop.wait()
                await self.kubelet.stop()
                await self._stop_operator()
        finally:
            await egress.stop()
            await self.services.stop()
            await self.backing.stop()
            await self.network.stop()
            await self.guardian.stop()
            await api.close()

    async def publish_backing(self, namespace: str) -> None:
        """Publish the backing Services in ``namespace`` and wait until their names resolve."""
        assert self.api is not None and self.services is not None
        await self.backing.publish(self.api, namespace)
        for _ in range(600):
            if all(self.services.address_of(namespace, s.name) for s in BACKING_SERVICES) and all(
                (namespace, s.name) in self.dns.records for s in BACKING_SERVICES
            ):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the backing Services of {namespace} got no address")

    async def _start_operator(self) -> None:
        folder = self.config.folder / "operator"
        folder.mkdir(parents=True, exist_ok=True)
        hosts = self.dns.register(folder / "hosts", OPERATOR_NAMESPACE, None)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig.resolve()),
            "FACEPIPE_OPERATOR_RESYNC_SECONDS": os.environ.get("FACEPIPE_OPERATOR_RESYNC_SECONDS", "10"),
            # The emulator has no server-side apply: children by merge patches (facepipe.operator.apply).
            "FACEPIPE_OPERATOR_APPLY": "merge",
            **self.config.operator_env,
        }
        self.operator = await start_host_process(
            folder,
            [sys.executable, "-m", "facepipe.operator"],
            env,
            cwd=self.config.repo,
            binds=[{"kind": "bind", "source": str(hosts), "target": "/etc/hosts", "readonly": True}],
        )

    async def _stop_operator(self) -> None:
        if self.operator is not None:
            await self.operator.stop(10)


# --- make cluster-sim ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facepipe.sim.cluster", description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=Path(".sandbox"), help="kubeconfig, pods, logs (default .sandbox)"
    )
    parser.add_argument("--crd", type=Path, action="append", default=None)
    parser.add_argument(
        "--backing-namespace", action="append", default=None,
        help="namespaces that get the redis/minio/qdrant Services (default: default, facepipe-demo)",
    )  # fmt: skip
    parser.add_argument("--no-operator", action="store_true", help="do not start the operator")
    parser.add_argument(
        "--no-addons", action="store_true",
        help="no Prometheus, no HPA/KEDA stand-ins, no operator chart monitors",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    if os.geteuid() != 0:
        parser.error("the cluster simulation needs root (network and mount namespaces)")
    repo = Path.cwd()
    crds = args.crd or [repo / "crds" / "facepipelines.facepipe.io.yaml"]
    config = SimConfig(
        repo=repo,
        folder=(args.dir / "cluster").resolve(),
        crds=crds,
        backing_namespaces=args.backing_namespace or ["default", "facepipe-demo"],
        operator=not args.no_operator,
        addons=None if args.no_addons else AddonOptions(),
    )
    config.folder.mkdir(parents=True, exist_ok=True)
    sim = ClusterSim(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("starting the cluster simulation (the first start builds the images' environments)...", flush=True)
    sim.start()
    kubeconfig = args.dir / "kubeconfig"
    write_kubeconfig(kubeconfig, sim.url)
    _print_summary(sim, kubeconfig)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    print("stopping: pods get SIGTERM, then every process of the simulation ends...", flush=True)
    sim.stop()
    kubeconfig.unlink(missing_ok=True)
    return 0


def _print_summary(sim: ClusterSim, kubeconfig: Path) -> None:
    print(f"Kubernetes API emulator: {sim.url}", flush=True)
    print(f"kubeconfig: {kubeconfig}   (pods' folders and logs: {sim.config.folder / 'pods'})")
    print("Backing Services (every pod resolves these names; this host reaches their addresses):")
    for namespace in sim.config.backing_namespaces:
        for entry in BACKING_SERVICES:
            address = sim.service_address(namespace, entry.name)
            name = f"{entry.name}.{namespace}.svc:{entry.port}"
            print(f"  {name:<32} {address}:{entry.port:<6} -> {sim.backing.url(entry.server)}")
    if sim.addons is not None:
        if sim.prometheus_url:
            print(f"Prometheus (scrapes what {', '.join(sim.addons.monitors) or 'no monitor'} select): "
                  f"{sim.prometheus_url}")  # fmt: skip
        if sim.addons.autoscaling is not None:
            print("Autoscalers: HPA v2 (prometheus-adapter rule of the operator chart) and KEDA stand-ins")
    print(f"  kubectl --kubeconfig {kubeconfig} apply --validate=false -f examples/facepipeline.yaml")
    print(f"  kubectl --kubeconfig {kubeconfig} get facepipelines,deployments,replicasets,pods,services")
    print("Ctrl-C stops.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
