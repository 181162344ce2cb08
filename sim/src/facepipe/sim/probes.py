"""Container probes, executed as the kubelet executes them.

httpGet: a GET to the pod's address (or ``host``) and port (a number or a container port's
name), success for 200-399; tcpSocket: a connection opens; exec: the command runs inside
the container's namespaces and root, as its user, with its environment, and exits 0.
Each run is bounded by ``timeoutSeconds``; ``ProbeSchedule`` carries the timing fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from facepipe.sim.podspec import Identity


@dataclass(frozen=True)
class ProbeSchedule:
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeSchedule:
        return cls(
            float(probe.get("initialDelaySeconds", 0)),
            float(probe.get("periodSeconds", 10)),
            float(probe.get("timeoutSeconds", 1)),
            int(probe.get("successThreshold", 1)),
            int(probe.get("failureThreshold", 3)),
        )


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container.get('name')!r}")


@dataclass
class ProbeTarget:
    """What a probe needs of the running container."""

    container: Mapping[str, Any]
    pod_ip: str
    init_pid: int
    identity: Identity
    env: Mapping[str, str]


async def run_probe(probe: Mapping[str, Any], target: ProbeTarget) -> tuple[bool, str]:
    """(success, message) of one probe run."""
    timeout = ProbeSchedule.of(probe).timeout
    try:
        if "httpGet" in probe:
            return await _http(probe["httpGet"], target, timeout)
        if "tcpSocket" in probe:
            return await _tcp(probe["tcpSocket"], target, timeout)
        return await _exec(probe["exec"], target, timeout)
    except ValueError as exc:
        return False, str(exc)


async def _http(action: Mapping[str, Any], target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    port = resolve_port(action["port"], target.container)
    scheme = str(action.get("scheme", "HTTP")).lower()
    host = action.get("host") or target.pod_ip
    path = action.get("path", "/")
    headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/1.33")
    url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
    no_verify = ssl.create_default_context()
    no_verify.check_hostname = False
    no_verify.verify_mode = ssl.CERT_NONE  # as the kubelet: probes do not verify certificates
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers=headers, ssl=no_verify if scheme == "https" else None) as response,
        ):
            body = (await response.content.read(1024)).decode(errors="replace")
            if 200 <= response.status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {response.status} {body[:200]}"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return False, f"Get {url!r}: {exc or type(exc).__name__}"


async def _tcp(action: Mapping[str, Any], target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    port = resolve_port(action["port"], target.container)
    host = action.get("host") or target.pod_ip
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return False, f"dial tcp {host}:{port}: {exc or 'timeout'}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def _exec(action: Mapping[str, Any], target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    command = [str(word) for word in action.get("command") or []]
    if not command:
        return False, "exec probe has no command"
    who = target.identity
    argv = [
        "nsenter", "-t", str(target.init_pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
        "setpriv", f"--reuid={who.uid}", f"--regid={who.gid}",
        f"--groups={','.join(str(g) for g in who.groups)}" if who.groups else "--clear-groups",
        "--", "env", "-i", *(f"{k}={v}" for k, v in target.env.items()), *command,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return False, f"command timed out after {timeout:g}s"
    if process.returncode == 0:
        return True, ""
    return False, f"command exited {process.returncode}: {output.decode(errors='replace')[-300:]}"
