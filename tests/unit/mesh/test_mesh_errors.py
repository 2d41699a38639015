"""The rich error model (mesh.errors): codes, messages and google.rpc details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor import exceptions as gx

from mesh import errors as e


def _kinds(status: status_pb2.Status) -> list[str]:
    return [type(m).__name__ for m in e.unpack_details(status)]


def test_invalid_argument_packs_bad_request() -> None:
    exc = e.InvalidArgument("bad site", [e.FieldViolation("site.id", "must match X"), ("page.size", "too big")])
    assert isinstance(exc, gx.InvalidArgument) and isinstance(exc, gx.GrpcException)
    status = exc.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "bad site"
    assert _kinds(status) == ["ErrorInfo", "BadRequest"]
    assert e.violations_of(status) == [("site.id", "must match X"), ("page.size", "too big")]
    info = e.unpack_details(status)[0]
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "towerco.io")


@pytest.mark.parametrize("cls", [e.NotFound, e.AlreadyExists])
def test_resource_errors_name_the_resource(cls) -> None:
    status = cls("site NBO-1 not found", resource_type="site", resource_name="NBO-1").to_status()
    res = [m for m in e.unpack_details(status) if isinstance(m, error_details_pb2.ResourceInfo)]
    assert res[0].resource_type == "site" and res[0].resource_name == "NBO-1"
    assert _kinds(cls("plain").to_status()) == ["ErrorInfo"]


def test_retryable_errors_carry_retry_info() -> None:
    status = e.Unavailable("database unavailable", retry_after_s=1.5).to_status()
    retry = e.unpack_details(status)[1]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 500_000_000)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert _kinds(e.ResourceExhausted("slow down").to_status()) == ["ErrorInfo"]


def test_failed_precondition_reason() -> None:
    status = e.FailedPrecondition("tenant still has tenancies", reason="TENANT_HAS_TENANCIES").to_status()
    assert e.unpack_details(status)[0].reason == "TENANT_HAS_TENANCIES"
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (e.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (e.Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED),
        (e.Aborted("conflict"), grpc.StatusCode.ABORTED),
        (e.DeadlineExceeded(), grpc.StatusCode.DEADLINE_EXCEEDED),
        (e.Internal(), grpc.StatusCode.INTERNAL),
    ],
)
def test_codes(exc: e.RichError, code: grpc.StatusCode) -> None:
    assert exc.status_code == code
    assert e.status_of_exception(exc).code == code.value[0]


def test_plain_grpc_interceptor_exceptions_get_an_error_info() -> None:
    status = e.status_of_exception(gx.NotFound("nope"))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0] and status.message == "nope"
    assert e.unpack_details(status)[0].reason == "NOT_FOUND"
