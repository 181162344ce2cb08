"""The one way every component opens Redis: a single server or a Redis Cluster.

``REDIS_URL`` names a cluster with the scheme ``redis+cluster://`` (``rediss+cluster://`` for TLS)
and one or more seed nodes, ``redis+cluster://h1:7000,h2:7001``, or with ``REDIS_CLUSTER=true`` on
a plain ``redis://`` URL. :func:`connect` then returns redis-py's ``RedisCluster``, which routes
each command to the master of its key's slot.

On a cluster, everything one tenant's scripts and transactions touch shares the hash tag
``{<tenant>}`` (its streams, DLQs, dedup keys and stats), so it lives on one slot; the helpers
here (:func:`hash_tag`, :func:`slot_of`, :func:`masters`) let callers group work by slot and sum
figures across masters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse, urlunparse

import redis
from redis.cluster import ClusterNode, RedisCluster, key_slot

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}
# RedisCluster drops connection options it does not know; these it refuses outright.
_SINGLE_ONLY = ("health_check_interval",)

Client = redis.Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return urlparse(url).scheme in CLUSTER_SCHEMES


def check_url(url: str) -> str:
    """``url`` unchanged when it is a Redis URL this factory opens, else ValueError."""
    parsed = urlparse(url)
    if parsed.scheme in CLUSTER_SCHEMES:
        if not seed_nodes(url):
            raise ValueError("a cluster URL names its seed nodes: redis+cluster://host:port[,host:port]")
        return url
    if parsed.scheme not in PLAIN_SCHEMES or not (parsed.netloc or parsed.path):
        raise ValueError(
            "must be a URL such as redis://host:6379/0 (schemes redis, rediss, unix) "
            "or redis+cluster://host:port[,host:port] for a Redis Cluster"
        )
    return url


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """The ``host:port`` seeds of a cluster URL (a plain URL: its one server)."""
    netloc = urlparse(url).netloc.rpartition("@")[2]
    nodes = []
    for part in filter(None, (piece.strip() for piece in netloc.split(","))):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "6379")
        nodes.append((host.strip("[]") or "localhost", int(port or 6379)))
    return nodes


def plain_url(url: str) -> str:
    """A cluster URL as the ``redis://`` URL of its first seed (credentials kept), for tools that
    take one address; a plain URL unchanged."""
    parsed = urlparse(url)
    if parsed.scheme not in CLUSTER_SCHEMES:
        return url
    credentials, _, hosts = parsed.netloc.rpartition("@")
    first = hosts.split(",")[0]
    netloc = f"{credentials}@{first}" if credentials else first
    return urlunparse(parsed._replace(scheme=CLUSTER_SCHEMES[parsed.scheme], netloc=netloc, path=""))


def as_cluster_url(url: str) -> str:
    """``url`` with a cluster scheme (its host:port the seed; a database number is dropped: a
    cluster has only database 0)."""
    parsed = urlparse(url)
    if parsed.scheme in CLUSTER_SCHEMES:
        return url
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis Cluster is reached over TCP, not by a {parsed.scheme}:// URL")
    return urlunparse(parsed._replace(scheme=f"{parsed.scheme}+cluster", path=""))


def settings_url(settings: Any) -> str:
    """The settings' Redis URL, as a cluster URL when REDIS_CLUSTER=true says it is one."""
    url = str(settings.redis_url)
    return as_cluster_url(url) if settings.redis_cluster else url


def connect(url: str, *, cluster: bool = False, **options: Any) -> Client:
    """A client of ``url``: ``RedisCluster`` for a cluster URL or ``cluster=True``, else ``Redis``.

    ``options`` are connection options (``decode_responses``, ``socket_timeout``, ``retry``...).
    """
    if not (cluster or is_cluster_url(url)):
        return redis.Redis.from_url(url, **options)
    parsed = urlparse(plain_url(url))
    for name in _SINGLE_ONLY:
        options.pop(name, None)
    if parsed.username:
        options.setdefault("username", parsed.username)
    if parsed.password:
        options.setdefault("password", parsed.password)
    if parsed.scheme == "rediss":
        options.setdefault("ssl", True)
    nodes = [ClusterNode(host, port) for host, port in seed_nodes(url)]
    return RedisCluster(startup_nodes=nodes, **options)


def connect_settings(settings: Any, **options: Any) -> Client:
    """:func:`connect` on ``settings.redis_url`` (``REDIS_CLUSTER=true`` makes it a cluster)."""
    return connect(settings.redis_url, cluster=bool(settings.redis_cluster), **options)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def binary_twin(client: Client) -> Client:
    """A client of the same server(s) that does not decode replies (binary values)."""
    if isinstance(client, RedisCluster):
        kwargs = {
            k: v for k, v in client.nodes_manager.connection_kwargs.items() if k not in ("host", "port")
        }
        kwargs["decode_responses"] = False
        nodes = [ClusterNode(node.host, node.port) for node in client.get_primaries()]
        return RedisCluster(startup_nodes=nodes, **kwargs)
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def pool_identity(client: Client) -> object:
    """What identifies the connections of ``client`` (to share one binary twin per pool)."""
    return client.nodes_manager if isinstance(client, RedisCluster) else client.connection_pool


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` (the text between its first ``{`` and the next ``}``), if any."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1 : end] if end > start + 1 else None


def tagged(tag: str) -> str:
    return "{" + tag + "}"


def slot_of(client: object, key: str) -> int:
    """The cluster slot of ``key``; 0 on a single server (every key is together there)."""
    return key_slot(key.encode()) if is_cluster(client) else 0


def masters(client: Client) -> list[redis.Redis]:
    """One plain client per master (the server itself when not a cluster): what to ask for
    per-server figures (INFO) and to sum across."""
    if isinstance(client, RedisCluster):
        nodes = client.get_primaries()
        return [client.get_redis_connection(node) for node in nodes]
    return [client]


def scan_keys(client: Client, match: str, count: int = 1000) -> Iterator[Any]:
    """Every key matching ``match`` on every master."""
    for server in masters(client):
        yield from server.scan_iter(match=match, count=count)
