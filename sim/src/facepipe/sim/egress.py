"""The node's way out: the outside hosts a pod can reach, as a cluster's pods reach the internet.

A cluster's pods leave through the node (NAT) and resolve outside names through DNS. Here
the pods' network ends at the host and names resolve through /etc/hosts only, and this
machine reaches nothing outside but PyPI. So each allowed host gets an address of the
Service range, a TCP relay on ports 80 and 443 to the real host (TLS passes through
untouched, the certificate is the host's own), and a line in every pod's /etc/hosts. The
init containers' model fetch (``python -m facepipe.vision.models.fetch``) reaches PyPI so.
A host not in the list does not resolve in the pods, as behind a cluster's egress policy.
"""

from __future__ import annotations

from facepipe.sim.podnet import ClusterNetwork
from facepipe.sim.services import ClusterDns, PortProxy

DEFAULT_EGRESS = ("pypi.org", "files.pythonhosted.org")
PORTS = (80, 443)


class Egress:
    def __init__(self, network: ClusterNetwork, dns: ClusterDns, hosts: tuple[str, ...]) -> None:
        self.network, self.dns, self.hosts = network, dns, hosts
        self.proxies: list[PortProxy] = []
        self.addresses: dict[str, str] = {}

    async def start(self) -> None:
        for host in self.hosts:
            address = self.network.allocate_service_ip()
            self.addresses[host] = address
            for port in PORTS:
                proxy = PortProxy(address, port)
                proxy.backends = [(host, port)]
                await proxy.start()
                self.proxies.append(proxy)
            self.dns.set_external(host, address)

    async def stop(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()
        for host, address in self.addresses.items():
            self.dns.set_external(host, None)
            self.network.release_service_ip(address)
