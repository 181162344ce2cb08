"""The Qdrant REST stand-in (facepipe.sim.qdrant_rest) as a real process, over Qdrant Edge.

What it serves is exercised by the vector contract suite (tests/store/test_vectors.py,
backend ``server-rest``); here: that it survives kill -9 like a server with a WAL, that a
second stand-in cannot open the same folder, and that everything it does not implement is
an explicit error, never a silent success.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from facepipe.cli.localservers import ServerProcess
from facepipe.cli.ports import ServerStartError
from facepipe.sim.backing import start_qdrant_stand_in

DIM = 8


class StandIn:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.log_path = path.with_name(f"{path.name}.log")
        self.port = 0  # any free port first, the same one after a restart
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.server.proc if self.server is not None else None

    def start(self) -> None:
        self.server = start_qdrant_stand_in(self.path, self.log_path, self.port)
        self.port = self.server.port

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
        with pytest.raises(ServerStartError) as refused:
            second.start()  # the process exited: the error says why, from its log
        output = str(refused.value)
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
        client.facet("faces", "tenant_id")
    assert refused.value.status_code == 501
    assert "does not serve POST /collections/faces/facet" in refused.value.content.decode()
    answer = httpx.post(
        f"{stand_in.url}/collections/faces/points/search", json={"vector": [0.0] * DIM, "limit": 1}
    )
    assert answer.status_code == 501 and "Not implemented" in answer.json()["status"]["error"]
    assert httpx.get(f"{stand_in.url}/cluster").status_code == 501
    with pytest.raises(UnexpectedResponse) as partial:
        client.retrieve("faces", [1])  # with payloads: the stand-in only answers which ids exist
    assert partial.value.status_code == 400 and "retrieves ids only" in partial.value.content.decode()


def test_aliases_switch_atomically_and_resolve_like_collection_names(client: QdrantClient) -> None:
    """The alias endpoints the model-pack migration uses, through qdrant-client's own calls."""
    for name in ("pack_a", "pack_b"):
        client.create_collection(name, vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
    client.upsert("pack_b", points(3), wait=True)

    def switch(target: str) -> None:
        client.update_collection_aliases(
            change_aliases_operations=[
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name="faces@t")),
                qm.CreateAliasOperation(
                    create_alias=qm.CreateAlias(collection_name=target, alias_name="faces@t")
                ),
            ]
        )

    switch("pack_a")
    aliases = client.get_aliases().aliases
    assert [(a.alias_name, a.collection_name) for a in aliases] == [("faces@t", "pack_a")]
    assert client.count("faces@t", exact=True).count == 0
    switch("pack_b")
    assert [a.collection_name for a in client.get_aliases().aliases] == ["pack_b"]
    assert client.count("faces@t", exact=True).count == 3  # an alias is usable wherever a name is
    assert [a.alias_name for a in client.get_collection_aliases("pack_b").aliases] == ["faces@t"]
    assert {"pack_a", "pack_b"} <= {c.name for c in client.get_collections().collections}
    found = client.retrieve("pack_b", [0, 1, 99], with_payload=False, with_vectors=False)
    assert sorted(record.id for record in found) == [0, 1]
    with pytest.raises(UnexpectedResponse) as missing:
        client.update_collection_aliases(
            change_aliases_operations=[
                qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name="nope", alias_name="x"))
            ]
        )
    assert missing.value.status_code == 404
    client.delete_collection("pack_b")  # its aliases go with it, as in Qdrant
    assert client.get_aliases().aliases == []


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
