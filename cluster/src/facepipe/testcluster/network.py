"""Step 3: the node's network. Pods get addresses from the CNI ``ptp`` plugin (a veth pair each,
routed through the host, so every packet crosses the host's iptables, where kube-proxy's Service
rules and network policies act). Nothing is masqueraded: pods reach only this machine.

Two guards keep cluster traffic on the machine: the Service range is routed to a dummy device
(a ClusterIP that kube-proxy has not programmed yet goes nowhere, never to the default gateway;
a bridge without ports serves as the sink: this kernel has no dummy driver),
and the pod range is unreachable except for the host routes of live pods.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from facepipe.testcluster.layout import POD_CIDR, SERVICE_CIDR, RunDir

DUMMY = "fp-services"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def cni_config(run: RunDir) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "facepipe",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(run.root / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def setup(run: RunDir) -> None:
    (run.root / "ip_forward.before").write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")
    (run.cni_conf / "10-facepipe.conflist").write_text(json.dumps(cni_config(run), indent=2))
    if _ip("link", "show", DUMMY, check=False).returncode != 0:
        _ip("link", "add", DUMMY, "type", "bridge")
    _ip("link", "set", DUMMY, "up")
    _ip("route", "replace", SERVICE_CIDR, "dev", DUMMY)
    _ip("route", "replace", "unreachable", POD_CIDR)


def teardown(run: RunDir) -> None:
    """Undo ``setup`` and whatever pods left: their netns, veths and IPAM leases."""
    _ip("route", "del", "unreachable", POD_CIDR, check=False)
    _ip("link", "del", DUMMY, check=False)
    before = run.root / "ip_forward.before"
    if before.exists():
        IP_FORWARD.write_text(before.read_text())
    for netns in Path("/var/run/netns").glob("cni-*") if Path("/var/run/netns").exists() else []:
        with contextlib.suppress(Exception):
            subprocess.run(["ip", "netns", "del", netns.name], capture_output=True)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("veth"):
            _ip("link", "del", name, check=False)
