"""is_transient against real failures of the real client libraries, wherever one can be produced here."""

from __future__ import annotations

import pickle
import socket

import pytest
import redis
import urllib3
from minio import Minio
from minio.error import S3Error, ServerError
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from facepipe.core.errors import PermanentError, TransientError, is_transient


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def test_redis_server_not_listening_is_transient(refused_port: int) -> None:
    client = redis.Redis(port=refused_port, socket_connect_timeout=2, retry=None)
    exc = _raised(client.ping)
    assert isinstance(exc, redis.ConnectionError)
    assert is_transient(exc)


def test_redis_command_error_is_not_transient(redis_client: redis.Redis) -> None:
    redis_client.set("k", "v")
    exc = _raised(lambda: redis_client.xadd("k", {"a": "b"}))  # WRONGTYPE
    assert isinstance(exc, redis.ResponseError)
    assert not is_transient(exc)


def test_socket_refused_is_transient_file_errors_are_not(refused_port: int) -> None:
    refused = _raised(lambda: socket.create_connection(("127.0.0.1", refused_port), timeout=2))
    assert isinstance(refused, ConnectionRefusedError)
    assert is_transient(refused)
    missing = _raised(lambda: open("/nonexistent/facepipe"))  # noqa: SIM115
    assert isinstance(missing, FileNotFoundError)
    assert not is_transient(missing)


def test_urllib3_and_minio_with_s3_down_are_transient(refused_port: int) -> None:
    pool = urllib3.PoolManager(retries=urllib3.Retry(total=0, connect=0))
    exc = _raised(lambda: pool.request("GET", f"http://127.0.0.1:{refused_port}/"))
    assert isinstance(exc, urllib3.exceptions.MaxRetryError)
    assert is_transient(exc)
    client = Minio(f"127.0.0.1:{refused_port}", access_key="x", secret_key="y", secure=False)
    # Fail fast instead of after the SDK's five retries.
    client._http = urllib3.PoolManager(retries=urllib3.Retry(total=0, connect=0))
    exc = _raised(lambda: client.bucket_exists("raw-images"))
    assert is_transient(exc), repr(exc)


def test_minio_missing_object_is_not_transient(s3_server) -> None:
    client = Minio(s3_server.url, access_key="minioadmin", secret_key="minioadmin", secure=False)
    bucket = "errors-test-bucket"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    exc = _raised(lambda: client.stat_object(bucket, "no/such/object.jpg"))
    assert isinstance(exc, S3Error)
    assert not is_transient(exc)


def test_minio_server_error_classified_by_status() -> None:
    # A 5xx answer from S3 cannot be provoked from SeaweedFS on demand, so the
    # exception the SDK raises for one is built directly.
    assert is_transient(ServerError("server failed", 503))
    assert not is_transient(ServerError("odd", 404))


def test_qdrant_unreachable_is_transient_and_status_decides_unexpected_response(refused_port: int) -> None:
    client = QdrantClient(url=f"http://127.0.0.1:{refused_port}", timeout=2, check_compatibility=False)
    exc = _raised(client.get_collections)
    assert isinstance(exc, ResponseHandlingException)
    assert is_transient(exc)
    # Server answers cannot come from local mode (it has no HTTP), so these are built directly.
    assert is_transient(UnexpectedResponse(503, "Service Unavailable", b"", {}))
    assert not is_transient(UnexpectedResponse(404, "Not Found", b"", {}))


def test_explicit_classes_and_cause_chain() -> None:
    assert is_transient(TransientError("later"))
    assert not is_transient(PermanentError("invalid_json", "bad"))
    assert not is_transient(ValueError("bug"))
    try:
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    try:
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError as inner:
            raise PermanentError("object_not_found", "gone") from inner
    except PermanentError as outer:
        assert not is_transient(outer)


def test_permanent_error_keeps_reason_fields_and_pickles() -> None:
    error = PermanentError("missing_fields", "missing required fields: bucket", fields=("bucket",))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.message, copy.fields) == (error.reason, error.message, ("bucket",))
    assert copy.message == "missing required fields: bucket"
    assert str(PermanentError("invalid_json")) == "invalid_json"
