"""The Qdrant REST stand-in (facepipe.sim.qdrant_rest) as a real process, over Qdrant Edge.

What it serves is exercised by the vector contract suite (tests/store/test_vectors.py,
backend ``server-rest``); here: that it survives kill -9 like a server with a WAL, that a
second stand-in cannot open the same folder, and that everything it does not implement is
an explicit error, never a silent success.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from facepipe.cli.localservers import free_port, wait_for_port

DIM = 8


class StandIn:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facepipe.sim.qdrant_rest",
                "--path",
                str(self.path),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def client(self) -> QdrantClient:
        return QdrantClient(url=self.url, timeout=30, check_compatibility=False)


@contextlib.contextmanager
def running(path: Path) -> Iterator[StandIn]:
    server = StandIn(path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill9()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """One stand-in for the tests that only read or are refused (starting one takes seconds)."""
    with running(tmp_path_factory.mktemp("stand-in") / "qdrant") as server:
        yield server


@pytest.fixture(scope="module")
def client(stand_in: StandIn) -> Iterator[QdrantClient]:
    qdrant = stand_in.client()
    qdrant.create_collection("faces", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
    yield qdrant
    qdrant.close()


def points(count: int, start: int = 0) -> list[qm.PointStruct]:
    rng = np.random.default_rng(start)
    return [
        qm.PointStruct(id=n, vector=rng.normal(size=DIM).tolist(), payload={"tenant_id": "t", "n": n})
        for n in range(start, start + count)
    ]


def test_acknowledged_points_survive_kill9_and_a_second_server_is_refused(tmp_path: Path) -> None:
    with running(tmp_path / "qdrant") as stand_in:
        client = stand_in.client()
        client.create_collection(
            "faces", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)
        )
        for start in range(0, 50, 10):
            client.upsert("faces", points(10, start), wait=True)

        second = StandIn(stand_in.path)
        with pytest.raises(RuntimeError):
            second.start()  # wait_for_port: the process exited
        assert second.proc is not None and second.proc.stdout is not None
        output = second.proc.stdout.read().decode()
        assert f"already open by process {stand_in.proc.pid} " in output and str(stand_in.path) in output  # type: ignore[union-attr]

        stand_in.kill9()
        with pytest.raises(Exception):  # noqa: B017 - the server is gone: any transport error
            client.count("faces")
        stand_in.start()  # the killed process's folder lock died with it
        assert client.count("faces", exact=True).count == 50
        assert client.scroll("faces", limit=100)[0][-1].payload == {"tenant_id": "t", "n": 49}
        client.close()


def test_an_endpoint_it_does_not_serve_is_an_explicit_error(stand_in: StandIn, client: QdrantClient) -> None:
    with pytest.raises(UnexpectedResponse) as refused:
        client.retrieve("faces", [1])
    assert refused.value.status_code == 501
    assert "does not serve POST /collections/faces/points" in refused.value.content.decode()
    answer = httpx.post(
        f"{stand_in.url}/collections/faces/points/search", json={"vector": [0.0] * DIM, "limit": 1}
    )
    assert answer.status_code == 501 and "Not implemented" in answer.json()["status"]["error"]
    assert httpx.get(f"{stand_in.url}/collections").status_code == 501


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "points/count",
            {"filter": {"should": [{"key": "site", "match": {"value": "x"}}]}},
            "`must` conditions",
        ),
        ("points/count", {"filter": {"must": [{"key": "url", "match": {"value": "x"}}]}}, "no payload index"),
        ("points/count", {"filter": {"must": [{"key": "site", "range": {"gt": 1}}]}}, "key = value"),
        ("points/query", {"query": [0.0] * DIM, "prefetch": {"query": [0.0] * DIM}}, "prefetch"),
        ("points/query", {"query": {"recommend": {"positive": [1]}}}, "nearest-vector queries only"),
        ("points/query", {"query": [0.0] * DIM, "with_payload": ["tenant_id"]}, "true/false"),
        ("points/scroll", {"order_by": "n"}, "order_by"),
        ("points/count", {"filter": {"must": "not a condition"}}, "Format error"),
        ("points/delete", {"filter": {}}, "at least one condition"),
    ],
)
def test_what_it_does_not_implement_is_refused_with_the_reason(
    stand_in: StandIn, client: QdrantClient, path: str, body: dict, message: str
) -> None:
    answer = httpx.post(f"{stand_in.url}/collections/faces/{path}", json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["status"]["error"]


def test_bad_requests_get_qdrants_errors(stand_in: StandIn, client: QdrantClient) -> None:
    with pytest.raises(UnexpectedResponse) as wrong_size:
        client.upsert("faces", [qm.PointStruct(id=1, vector=[0.1] * (DIM + 1), payload={})])
    assert wrong_size.value.status_code == 400 and "dimension" in wrong_size.value.content.decode()
    with pytest.raises(UnexpectedResponse) as missing:
        client.count("nope")
    assert missing.value.status_code == 404
    for name in ("..%2Fx", "bad%20name"):  # a collection name is a folder name: never outside the store
        refused = httpx.put(
            f"{stand_in.url}/collections/{name}", json={"vectors": {"size": 4, "distance": "Dot"}}
        )
        assert refused.status_code in (400, 501) and "error" in refused.json()["status"]
    with pytest.raises(UnexpectedResponse) as again:
        client.create_collection(
            "faces", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)
        )
    assert again.value.status_code == 409
    with pytest.raises(UnexpectedResponse) as named:
        client.create_collection(
            "named", vectors_config={"face": qm.VectorParams(size=4, distance=qm.Distance.DOT)}
        )
    assert named.value.status_code == 400
    assert client.count("faces").count == 0  # none of it wrote anything


def test_collection_info_is_qdrants_model(client: QdrantClient) -> None:
    client.create_collection("info", vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
    tenant_index = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    client.create_payload_index("info", "tenant_id", field_schema=tenant_index)
    client.upsert("info", points(5))
    info = client.get_collection("info")  # parsed by qdrant-client into CollectionInfo
    assert info.points_count == 5
    assert info.config.params.vectors == qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)
    assert info.payload_schema["tenant_id"].data_type == qm.PayloadSchemaType.KEYWORD
    assert info.payload_schema["tenant_id"].points == 5
    assert client.delete_collection("info") is True
    assert not client.collection_exists("info")
    assert client.delete_collection("info") is False  # as a server answers for a missing collection
