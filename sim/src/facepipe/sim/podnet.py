"""The simulated cluster's network: an address and a network namespace per pod, a Service range.

Why not one 127.x address per pod: the images bind 0.0.0.0 (the metrics server, the
ops-api), and on Linux a wildcard bind clashes with any other bind of the same port,
so two pods on one network namespace could never both listen on 9100. Each pod gets
its own network namespace instead (the sandbox process holds it), joined to the host by
a veth pair the way Calico does it: the pod's ``eth0`` has its /32 address and a default
route via 169.254.1.1, a fixed neighbour entry naming the host end; the host routes the
/32 to the host end, and forwards between pods (on those interfaces only).

Service addresses are local to the host (a ``local`` route for the whole Service range),
so the Services' proxies can listen on them and every pod reaches them via its default
route. That route hangs on a veth whose peer lives in a holder namespace: when the
simulation ends, even by SIGKILL, the holder dies, its veth and the route with it. Pod
veths likewise vanish with their pods' namespaces. Each simulation takes a free slot
``n`` (a lock file held for its life): pods in 10.244.n.0/24, Services in 10.96.n.0/24.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import subprocess
from pathlib import Path

from facepipe.sim.images import python_for_images
from facepipe.sim.rootfs import LAUNCHER

LOCK_DIR = Path("/run/facepipe-sim")
GATEWAY = "169.254.1.1"
SLOTS = range(1, 251)


class NetworkError(RuntimeError):
    pass


def _ip(batch: str, *, netns_pid: int | None = None) -> None:
    command = ["ip", "-batch", "-"]
    if netns_pid is not None:
        command = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", *command]
    done = subprocess.run(command, input=batch, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetworkError(f"ip: {done.stderr.strip()} (commands: {batch.strip()!r})")


def _sysctl(interface: str, name: str, value: str) -> None:
    Path(f"/proc/sys/net/ipv4/conf/{interface}/{name}").write_text(value)


def _routes_in(network: ipaddress.IPv4Network) -> bool:
    command = ["ip", "route", "show", "table", "all", "root", str(network)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return bool(done.stdout.strip())


async def start_holder(hostname: str) -> tuple[asyncio.subprocess.Process, int]:
    """A sandbox process (new network, UTS and IPC namespaces); returns it and its pid once ready.

    Spawned from the event loop's thread, which lives as long as the simulation: the
    sandbox's parent-death signal follows the thread that forked it.
    """
    process = await asyncio.create_subprocess_exec(
        python_for_images(),
        "-I",
        str(LAUNCHER),
        "sandbox",
        hostname,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
    except TimeoutError:
        process.kill()
        raise NetworkError("the pod sandbox did not start within 30 s") from None
    words = line.decode().split()
    if len(words) != 2 or words[0] != "ready":
        rest = await process.stdout.read()
        raise NetworkError(f"the pod sandbox failed: {(line + rest).decode(errors='replace')[-2000:]}")
    return process, int(words[1])


class AddressPool:
    """Addresses of one /24, handed out round robin: a freed address is reused as late as possible."""

    def __init__(self, network: ipaddress.IPv4Network, first: int) -> None:
        self.network = network
        self.first = first
        self._next = first
        self._in_use: set[str] = set()

    def allocate(self) -> str:
        for _ in range(255 - self.first):
            candidate = str(self.network.network_address + self._next)
            self._next = self._next + 1 if self._next < 254 else self.first
            if candidate not in self._in_use:
                self._in_use.add(candidate)
                return candidate
        raise NetworkError(f"no free address in {self.network}")

    def release(self, address: str) -> None:
        self._in_use.discard(address)


async def stop_holder(process: asyncio.subprocess.Process | None, grace: float = 10.0) -> None:
    """SIGTERM a sandbox process, SIGKILL it after ``grace``; its namespaces go with it."""
    if process is None or process.returncode is not None:
        return
    process.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), grace)
    if process.returncode is None:
        process.kill()
        await process.wait()


class ClusterNetwork:
    """Address allocation and plumbing for one simulation (one slot)."""

    def __init__(self) -> None:
        self.slot = 0
        self.pod_range: ipaddress.IPv4Network | None = None
        self.service_range: ipaddress.IPv4Network | None = None
        self._lock_handle: object | None = None
        self._holder: asyncio.subprocess.Process | None = None
        self._pod_pool: AddressPool | None = None
        self._service_pool: AddressPool | None = None

    # -- life --

    async def start(self) -> None:
        await asyncio.to_thread(self._take_slot)
        self._holder, holder_pid = await start_holder(f"fpsim-net-{self.slot}")
        host_end, peer = self.service_interface, f"fpsvc{self.slot}p"
        await asyncio.to_thread(
            _ip,
            f"link add {host_end} type veth peer name {peer}\n"
            f"link set {peer} netns {holder_pid}\n"
            f"link set {host_end} up\n",
        )
        await asyncio.to_thread(_ip, f"link set {peer} up\n", netns_pid=holder_pid)
        await asyncio.to_thread(_ip, f"route add local {self.service_range} dev {host_end}\n")

    @property
    def service_interface(self) -> str:
        return f"fpsvc{self.slot}"

    def _take_slot(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for slot in SLOTS:
            handle = open(LOCK_DIR / f"net-{slot}.lock", "a")  # noqa: SIM115 (held for the simulation's life)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            # Ours now; what a previous owner left goes: its veths outlive it while a dead pod's
            # orphaned sockets still hold that pod's network namespace (for minutes at most).
            for leftover in os.listdir("/sys/class/net"):
                if leftover == f"fpsvc{slot}" or leftover.startswith(f"fp{slot}x"):
                    with contextlib.suppress(NetworkError):
                        _ip(f"link del {leftover}\n")
            pods = ipaddress.IPv4Network(f"10.244.{slot}.0/24")
            services = ipaddress.IPv4Network(f"10.96.{slot}.0/24")
            if _routes_in(pods) or _routes_in(services):
                handle.close()  # used by something else on this machine
                continue
            self.slot, self.pod_range, self.service_range = slot, pods, services
            self._pod_pool = AddressPool(pods, first=2)  # .1 stays free, as a gateway would
            self._service_pool = AddressPool(services, first=10)  # .1-.9 reserved
            self._lock_handle = handle
            return
        raise NetworkError("no free network slot (every 10.244.n.0/24 is in use)")

    async def stop(self) -> None:
        await stop_holder(self._holder)
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with contextlib.suppress(NetworkError):
            _ip(f"link del {self.service_interface}\n")  # normally already gone with the holder
        if self._lock_handle is not None:
            self._lock_handle.close()  # type: ignore[attr-defined]
            self._lock_handle = None

    # -- addresses --

    def allocate_pod_ip(self) -> str:
        assert self._pod_pool is not None
        return self._pod_pool.allocate()

    def release_pod_ip(self, address: str) -> None:
        if self._pod_pool is not None:
            self._pod_pool.release(address)

    def allocate_service_ip(self) -> str:
        assert self._service_pool is not None
        return self._service_pool.allocate()

    def release_service_ip(self, address: str) -> None:
        if self._service_pool is not None:
            self._service_pool.release(address)

    def reserved_service_ip(self, index: int) -> str:
        """A fixed address below the allocated ones (.1 is the API's `kubernetes` Service)."""
        assert self.service_range is not None and 0 < index < 10
        return str(self.service_range.network_address + index)

    # -- pods --

    def attach(self, sandbox_pid: int, address: str) -> None:
        """Give the sandbox's network namespace ``eth0`` with ``address`` behind a host veth."""
        host_octet = address.rsplit(".", 1)[1]
        host_end, pod_end = f"fp{self.slot}x{host_octet}", f"fp{self.slot}y{host_octet}"
        with contextlib.suppress(NetworkError):  # a previous pod's end not yet collected
            _ip(f"link del {host_end}\n")
        _ip(
            f"link add {host_end} type veth peer name {pod_end}\n"
            f"link set {pod_end} netns {sandbox_pid}\n"
            f"link set {host_end} up\n"
            f"route replace {address}/32 dev {host_end}\n"
        )
        _sysctl(host_end, "forwarding", "1")  # pod to pod (per interface: the host's own stays as it is)
        host_mac = Path(f"/sys/class/net/{host_end}/address").read_text().strip()
        _ip(
            "link set lo up\n"
            f"link set {pod_end} name eth0\n"
            f"addr add {address}/32 dev eth0\n"
            "link set eth0 up\n"
            f"route add {GATEWAY} dev eth0 scope link\n"
            # The gateway is the host end itself: a fixed neighbour entry, so no proxy ARP is needed.
            f"neigh replace {GATEWAY} lladdr {host_mac} dev eth0 nud permanent\n"
            f"route add default via {GATEWAY} dev eth0\n",
            netns_pid=sandbox_pid,
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
