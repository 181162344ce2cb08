"""A stand-in ops-api pod for the simulation tests: ``/metrics`` with the stream gauges.

Exports what ops-api exports about the pipeline's streams (facepipe_stream_length,
facepipe_stream_lag, facepipe_stream_pending, each with its stream_role), read from a real Redis
at every scrape, on the pod's own loopback address. Run as
``python stream_exporter.py ADDR PORT REDIS_URL GROUP STREAM...`` (the streams in pipeline order:
ingest, detected, embedded).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import redis
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from facepipe.core.settings import STREAM_ROLES


class StreamCollector(Collector):
    def __init__(self, client: redis.Redis, group: str, streams: list[str]) -> None:
        self.client, self.group, self.streams = client, group, streams

    def collect(self) -> Iterator[GaugeMetricFamily]:
        length = GaugeMetricFamily("facepipe_stream_length", "XLEN", labels=["stream", "stream_role"])
        lag = GaugeMetricFamily("facepipe_stream_lag", "lag", labels=["stream", "stream_role", "group"])
        pending = GaugeMetricFamily(
            "facepipe_stream_pending", "pending", labels=["stream", "stream_role", "group"]
        )
        for stream, role in zip(self.streams, STREAM_ROLES, strict=False):
            size = int(self.client.xlen(stream))
            length.add_metric([stream, role], size)
            groups = self.client.xinfo_groups(stream) if size or self.client.exists(stream) else []
            found = [g for g in groups if g["name"] == self.group]
            if found:
                lag.add_metric([stream, role, self.group], found[0]["lag"] or 0)
                pending.add_metric([stream, role, self.group], found[0]["pending"])
            else:  # as ops-api: no group yet, everything in the stream is waiting
                lag.add_metric([stream, role, self.group], size)
                pending.add_metric([stream, role, self.group], 0)
        yield from (length, lag, pending)


def main() -> None:
    addr, port, url, group, *streams = sys.argv[1:]
    REGISTRY.register(StreamCollector(redis.Redis.from_url(url, decode_responses=True), group, streams))
    start_http_server(int(port), addr=addr)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
