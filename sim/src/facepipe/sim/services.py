"""Services: an address each, names in every pod's /etc/hosts, endpoints, and a proxy per port.

What kube-apiserver, the endpoints controllers, kube-proxy and CoreDNS do together:
a Service gets a ClusterIP from the simulation's Service range (written to
``spec.clusterIP``); a Service with a selector gets Endpoints and an EndpointSlice of the
matching pods (ready ones as addresses, the others as notReadyAddresses); a small TCP
proxy listens on the ClusterIP and each port and forwards every connection to a ready
endpoint in turn (no endpoint: the connection is refused, as kube-proxy rejects it). A
Service without a selector forwards to the addresses of its Endpoints object (how the
backing servers are published). Names: ``name.namespace.svc.cluster.local``,
``name.namespace.svc``, ``name.namespace`` and, within the namespace, ``name`` resolve
through each pod's /etc/hosts (rewritten in place when Services change); a headless
Service's names resolve to its ready pods' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facepipe.sim.apiclient import ENDPOINT_SLICE, ENDPOINTS, SERVICE, Api, Informer, Key, WorkQueue, key_of
from facepipe.sim.podnet import ClusterNetwork
from facepipe.sim.probes import resolve_port
from facepipe.sim.workloads import controller_ref, pod_ready, selector_matches

log = logging.getLogger("facepipe.sim.services")
DOMAIN = "cluster.local"


# --- names -------------------------------------------------------------------------------------


class ClusterDns:
    """Service names -> addresses, written into every registered hosts file."""

    def __init__(self) -> None:
        self.records: dict[Key, list[str]] = {}
        self.external: dict[str, str] = {}  # outside host names the node relays (facepipe.sim.egress)
        self._files: dict[Path, tuple[str, str | None, str, list[dict[str, Any]]]] = {}
        self._written: dict[Path, str] = {}

    def hosts(
        self,
        namespace: str,
        pod_ip: str | None = None,
        hostname: str = "",
        aliases: list[dict[str, Any]] | None = None,
    ) -> str:
        lines = [
            "# Kubernetes-managed hosts file (facepipe cluster simulation).",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        if pod_ip:
            lines.append(f"{pod_ip}\t{hostname}")
        for (ns, name), addresses in sorted(self.records.items()):
            names = [f"{name}.{ns}.svc.{DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
            if ns == namespace:
                names.append(name)
            lines += [f"{address}\t{' '.join(names)}" for address in addresses]
        lines += [f"{address}\t{host}" for host, address in sorted(self.external.items())]
        for alias in aliases or []:
            lines.append(f"{alias['ip']}\t{' '.join(alias.get('hostnames') or [])}")
        return "\n".join(lines) + "\n"

    def resolve(self, host: str, namespace: str) -> str:
        """The address ``host`` has for a pod of ``namespace`` (an address passes through).

        Raises LookupError for a name no Service has, as the pod's resolver would fail.
        """
        for (ns, name), addresses in self.records.items():
            names = {f"{name}.{ns}.svc.{DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"}
            if ns == namespace:
                names.add(name)
            if host in names and addresses:
                return addresses[0]
        if host == "localhost" or host.replace(".", "").isdigit():
            return host
        raise LookupError(f"{host} does not resolve in namespace {namespace}")

    def register(
        self,
        path: Path,
        namespace: str,
        pod_ip: str | None,
        hostname: str = "",
        aliases: list[dict[str, Any]] | None = None,
    ) -> Path:
        self._files[path] = (namespace, pod_ip, hostname, list(aliases or []))
        self._write(path)
        return path

    def unregister(self, path: Path) -> None:
        self._files.pop(path, None)
        self._written.pop(path, None)

    def set(self, key: Key, addresses: list[str]) -> None:
        if self.records.get(key) != addresses:
            self.records[key] = addresses
            self._refresh()

    def set_external(self, host: str, address: str | None) -> None:
        if address is None:
            self.external.pop(host, None)
        else:
            self.external[host] = address
        self._refresh()

    def remove(self, key: Key) -> None:
        if self.records.pop(key, None) is not None:
            self._refresh()

    def _refresh(self) -> None:
        for path in list(self._files):
            self._write(path)

    def _write(self, path: Path) -> None:
        text = self.hosts(*self._files[path])
        if self._written.get(path) != text:
            # In place (same inode): the file is bind-mounted into running containers.
            with open(path, "w") as handle:
                handle.write(text)
            self._written[path] = text


# --- forwarding --------------------------------------------------------------------------------


class PortProxy:
    """Listens on one Service address and port; each connection goes to the next backend."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.backends: list[tuple[str, int]] = []
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.address, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            up_reader, up_writer = upstream
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            self._turn = (self._turn + 1) % max(1, len(self.backends))
            host, port = self.backends[self._turn % len(self.backends)]
            with contextlib.suppress(OSError, TimeoutError):
                return await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


# --- the controller ----------------------------------------------------------------------------


def _endpoint_ports(service: Mapping[str, Any], pod: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The Service's ports as this pod serves them (targetPort by name resolved), or None."""
    ports = []
    containers = (pod.get("spec") or {}).get("containers") or []
    for port in (service.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort", port["port"])
        number = None
        for container in containers:
            with contextlib.suppress(ValueError):
                number = resolve_port(target, container)
                break
        if number is None:
            return None
        entry = {"port": number, "protocol": port.get("protocol", "TCP")}
        if port.get("name"):
            entry["name"] = port["name"]
        ports.append(entry)
    return ports


def _address(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "ip": pod["status"]["podIP"],
        "nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "targetRef": {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        },
    }


class ServiceController:
    def __init__(
        self,
        api: Api,
        services: Informer,
        pods: Informer,
        endpoints: Informer,
        network: ClusterNetwork,
        dns: ClusterDns,
    ) -> None:
        self.api = api
        self.services = services
        self.pods = pods
        self.endpoints = endpoints
        self.network = network
        self.dns = dns
        self.queue = WorkQueue("service", self.reconcile)
        self.proxies: dict[Key, dict[int, PortProxy]] = {}
        self.addresses: dict[Key, str] = {}
        self._written: dict[Key, Any] = {}
        services.listeners.append(lambda _e, svc: self.queue.add(key_of(svc)))
        endpoints.listeners.append(lambda _e, ep: self.queue.add(key_of(ep)))
        pods.listeners.append(self._pod_changed)

    def _pod_changed(self, _event: str, pod: dict[str, Any]) -> None:
        namespace = pod["metadata"]["namespace"]
        for service in self.services.items(namespace):
            if (service.get("spec") or {}).get("selector"):
                self.queue.add(key_of(service))

    async def reconcile(self, key: Key) -> None:
        service = self.services.get(*key)
        if service is None:
            await self._forget(key)
            return
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            log.warning("Service %s/%s: ExternalName is not supported by the simulation", *key)
            return
        headless = spec.get("clusterIP") == "None"
        address = None if headless else await self._address(key, service)
        selector = spec.get("selector")
        if selector:
            ready, backends = await self._write_endpoints(key, service, selector)
        else:
            ready, backends = self._given_endpoints(key, service)
        if headless:
            self.dns.set(key, ready)
            return
        assert address is not None
        self.dns.set(key, [address])
        await self._proxy(key, address, service, backends)

    async def _address(self, key: Key, service: Mapping[str, Any]) -> str:
        given = (service.get("spec") or {}).get("clusterIP")
        if key in self.addresses:
            address = self.addresses[key]
        else:
            address = self.network.allocate_service_ip()
            self.addresses[key] = address
        if given != address:
            await self.api.patch(
                SERVICE, key[0], key[1], {"spec": {"clusterIP": address, "clusterIPs": [address]}}
            )
        return address

    async def _write_endpoints(
        self, key: Key, service: Mapping[str, Any], selector: Mapping[str, str]
    ) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        subsets: dict[str, dict[str, Any]] = {}
        backends: dict[str, list[tuple[str, int]]] = {}
        ready_ips: list[str] = []
        slice_endpoints = []
        slice_ports: list[dict[str, Any]] | None = None
        pods = [
            p
            for p in self.pods.items(key[0])
            if selector_matches({"matchLabels": selector}, p["metadata"].get("labels") or {})
            and (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
        ]
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            ports = _endpoint_ports(service, pod)
            if ports is None:
                continue
            ready = pod_ready(pod)
            group = subsets.setdefault(
                repr(ports), {"addresses": [], "notReadyAddresses": [], "ports": ports}
            )
            group["addresses" if ready else "notReadyAddresses"].append(_address(pod))
            slice_ports = slice_ports or ports
            slice_endpoints.append(
                {
                    "addresses": [pod["status"]["podIP"]],
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    "nodeName": (pod.get("spec") or {}).get("nodeName", ""),
                    "targetRef": _address(pod)["targetRef"],
                }
            )
            if ready:
                ready_ips.append(pod["status"]["podIP"])
                for port in ports:
                    backends.setdefault(port.get("name", ""), []).append(
                        (pod["status"]["podIP"], port["port"])
                    )
        subsets_list = [{k: v for k, v in s.items() if v} for s in subsets.values()]
        await self._write_objects(key, service, subsets_list, slice_endpoints, slice_ports or [])
        return ready_ips, backends

    async def _write_objects(
        self,
        key: Key,
        service: Mapping[str, Any],
        subsets: list[dict[str, Any]],
        slice_endpoints: list[dict[str, Any]],
        slice_ports: list[dict[str, Any]],
    ) -> None:
        if self._written.get(key) == (subsets, slice_endpoints):
            return
        namespace, name = key
        labels = dict(service["metadata"].get("labels") or {})
        endpoints = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "subsets": subsets,
        }
        slice_name = f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:5]}"
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": namespace,
                "labels": {
                    **labels,
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "ownerReferences": [controller_ref(service)],
            },
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": slice_ports,
        }
        for kind, body, object_name in (
            (ENDPOINTS, endpoints, name),
            (ENDPOINT_SLICE, endpoint_slice, slice_name),
        ):
            if await self.api.get(kind, namespace, object_name) is None:
                await self.api.create(kind, body)
            else:
                replace = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
                await self.api.patch(kind, namespace, object_name, replace)
        self._written[key] = (subsets, slice_endpoints)

    def _given_endpoints(
        self, key: Key, service: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        endpoints = self.endpoints.get(*key) or {}
        backends: dict[str, list[tuple[str, int]]] = {}
        ready = []
        for subset in endpoints.get("subsets") or []:
            for address in subset.get("addresses") or []:
                ready.append(address["ip"])
                for port in subset.get("ports") or []:
                    backends.setdefault(port.get("name", ""), []).append((address["ip"], int(port["port"])))
        return ready, backends

    async def _proxy(
        self, key: Key, address: str, service: Mapping[str, Any], backends: dict[str, list[tuple[str, int]]]
    ) -> None:
        wanted = {int(p["port"]): p.get("name", "") for p in (service.get("spec") or {}).get("ports") or []}
        proxies = self.proxies.setdefault(key, {})
        for port in set(proxies) - set(wanted):
            await proxies.pop(port).stop()
        for port, port_name in wanted.items():
            if port not in proxies:
                proxy = PortProxy(address, port)
                await proxy.start()
                proxies[port] = proxy
            proxies[port].backends = backends.get(port_name, [])

    async def _forget(self, key: Key) -> None:
        for proxy in self.proxies.pop(key, {}).values():
            await proxy.stop()
        if key in self.addresses:
            self.network.release_service_ip(self.addresses.pop(key))
        self.dns.remove(key)
        if self._written.pop(key, None) is not None:
            await self.api.delete(ENDPOINTS, *key)

    async def stop(self) -> None:
        for key in list(self.proxies):
            for proxy in self.proxies.pop(key).values():
                await proxy.stop()

    def address_of(self, namespace: str, name: str) -> str | None:
        return self.addresses.get((namespace, name))
