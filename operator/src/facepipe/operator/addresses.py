"""Addresses in a FacePipeline are written for its pods, which resolve a short name such as
``redis`` in their own namespace. The operator runs in another namespace: before it connects
(stream figures, stale consumers, Purge) it qualifies a single-label host with the pipeline's
namespace (``redis`` -> ``redis.<namespace>.svc``), so it reaches what the pods reach.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

_LOCAL = {"localhost"}


def qualify_host(host: str, namespace: str) -> str:
    """``host`` as the pipeline's pods resolve it, from any namespace."""
    if not host or "." in host or host in _LOCAL or ":" in host:
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return f"{host}.{namespace}.svc"


def qualify_endpoint(endpoint: str, namespace: str) -> str:
    """``host:port`` (an S3 endpoint) with its host qualified."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return qualify_host(endpoint, namespace)
    return f"{qualify_host(host, namespace)}:{port}"


def qualify_url(url: str, namespace: str) -> str:
    """A redis://, redis+cluster:// (several hosts), http(s):// URL with every host qualified."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url
    userinfo, at, hosts = parts.netloc.rpartition("@")
    qualified = ",".join(qualify_endpoint(h, namespace) for h in hosts.split(","))
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{qualified}"))


def is_url(value: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", value))
