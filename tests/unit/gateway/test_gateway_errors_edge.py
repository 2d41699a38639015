"""The canonical gRPC -> HTTP mapping, Status bodies, and the edge helpers."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway import edge
from gateway.transcode import errors
from mesh.errors import FieldViolation

CANONICAL = [
    (grpc.StatusCode.CANCELLED, 499),
    (grpc.StatusCode.UNKNOWN, 500),
    (grpc.StatusCode.INVALID_ARGUMENT, 400),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (grpc.StatusCode.NOT_FOUND, 404),
    (grpc.StatusCode.ALREADY_EXISTS, 409),
    (grpc.StatusCode.PERMISSION_DENIED, 403),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (grpc.StatusCode.FAILED_PRECONDITION, 400),
    (grpc.StatusCode.ABORTED, 409),
    (grpc.StatusCode.OUT_OF_RANGE, 400),
    (grpc.StatusCode.UNIMPLEMENTED, 501),
    (grpc.StatusCode.INTERNAL, 500),
    (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.DATA_LOSS, 500),
    (grpc.StatusCode.UNAUTHENTICATED, 401),
]


@pytest.mark.parametrize(("code", "http"), CANONICAL)
def test_canonical_mapping(code: grpc.StatusCode, http: int) -> None:
    err = errors.make(code, "upstream said so", correlation_id="cid-1")
    assert err.status == http
    assert err.body["code"] == code.value[0]
    assert set(err.body) == {"code", "message", "details"}
    if http >= 500 and code in errors.HIDDEN:
        assert err.body["message"] == errors.INTERNAL_MESSAGE
        assert err.body["details"] == [{"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "cid-1"}]
    else:
        assert err.body["message"] == "upstream said so"
    assert ("WWW-Authenticate" in err.headers) == (http == 401)
    assert ("Retry-After" in err.headers) == (http in (429, 503))


def test_details_are_decoded_and_retry_after_comes_from_retry_info() -> None:
    status = status_pb2.Status(code=14, message="busy")
    ri = error_details_pb2.RetryInfo()
    ri.retry_delay.seconds, ri.retry_delay.nanos = 2, 100
    a = any_pb2.Any()
    a.Pack(ri)
    status.details.append(a)
    a2 = any_pb2.Any()
    a2.Pack(error_details_pb2.ErrorInfo(reason="DB_DOWN", domain="towerco.io"))
    status.details.append(a2)
    unknown = any_pb2.Any(type_url="type.googleapis.com/not.Known", value=b"\x08\x01")
    status.details.append(unknown)
    err = errors.from_status(grpc.StatusCode.UNAVAILABLE, status)
    assert err.status == 503
    assert err.headers["Retry-After"] == "3"  # ceil(2.0000001)
    assert err.body["details"][0] == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.000000100s"}
    assert err.body["details"][1]["reason"] == "DB_DOWN"
    assert err.body["details"][2] == {"@type": "type.googleapis.com/not.Known", "value": "CAE="}


def test_internal_never_leaks() -> None:
    status = status_pb2.Status(code=13, message='Traceback: File "/srv/store.py", password=hunter2')
    a = any_pb2.Any()
    a.Pack(error_details_pb2.DebugInfo(detail="stack"))
    status.details.append(a)
    err = errors.from_status(grpc.StatusCode.INTERNAL, status, correlation_id="c")
    text = str(err.body)
    assert "hunter2" not in text and "Traceback" not in text and "stack" not in text


def test_field_violations_and_www_authenticate() -> None:
    err = errors.make(grpc.StatusCode.INVALID_ARGUMENT, "bad", violations=[FieldViolation("site.id", "too short")])
    assert err.body["details"] == [{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "site.id", "description": "too short"}],
    }]
    err = errors.make(grpc.StatusCode.UNAUTHENTICATED, "expired", auth_error='token "expired"')
    assert err.headers["WWW-Authenticate"].startswith('Bearer realm="towerco", error="invalid_token"')
    assert '"expired"' not in err.headers["WWW-Authenticate"].split("error_description=")[1][1:-1]


TIMEOUTS = [
    ("10S", None, 10.0),
    ("500m", None, 0.5),
    ("2M", None, 120.0),
    ("1H", None, 3600.0),
    ("250000u", None, 0.25),
    ("100n", None, 1e-7),
    (None, "2.5", 2.5),
    (None, "2.5s", 2.5),
    (None, "1500ms", 1.5),
    ("1S", "99", 1.0),  # Grpc-Timeout wins
    (None, None, None),
]


@pytest.mark.parametrize(("grpc_timeout", "request_timeout", "seconds"), TIMEOUTS)
def test_parse_timeout(grpc_timeout, request_timeout, seconds) -> None:
    got = edge.parse_timeout(grpc_timeout, request_timeout)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


@pytest.mark.parametrize(("grpc_timeout", "request_timeout"), [("10", None), ("1x", None), ("123456789S", None), (None, "soon"), (None, "0"), (None, "-1"), (None, "800ms"), (None, ""), (None, " 2")])
def test_bad_timeouts(grpc_timeout, request_timeout) -> None:
    with pytest.raises(ValueError):
        edge.parse_timeout(grpc_timeout, request_timeout)


def test_correlation_id() -> None:
    assert edge.correlation_id("abc-123") == "abc-123"
    assert len(edge.correlation_id(None)) == 32
    assert edge.correlation_id("bad id with spaces\n") != "bad id with spaces\n"


def test_token_bucket() -> None:
    lim = edge.RateLimiter(rate=2, burst=3)
    now = 100.0
    assert [lim.take("a", now) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = lim.take("a", now)
    assert wait == pytest.approx(0.5)
    assert lim.take("b", now) == 0.0  # per principal
    assert lim.take("a", now + 0.5) == 0.0  # refilled
    assert edge.RateLimiter(rate=0, burst=1).take("a") == 0.0  # off


def test_token_bucket_bounded_keys() -> None:
    lim = edge.RateLimiter(rate=1, burst=1, max_keys=10)
    for i in range(50):
        lim.take(f"k{i}", now=float(i))
    assert len(lim._buckets) <= 10


def test_cors_explicit_origins_only() -> None:
    cors = edge.Cors(("https://noc.example.com",))
    hdrs = dict(cors.headers("https://noc.example.com"))
    assert hdrs[b"access-control-allow-origin"] == b"https://noc.example.com"
    assert hdrs[b"access-control-allow-credentials"] == b"true"
    assert cors.headers("https://evil.example.com") == []
    wild = dict(edge.Cors(("*",)).headers("https://any.example.com"))
    assert wild[b"access-control-allow-origin"] == b"*"
    assert b"access-control-allow-credentials" not in wild  # never * with credentials
