"""sdk.errors: the typed error of a failed call, decoded from its google.rpc.Status trailer."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import AioRpcError, Metadata

from sdk import errors
from sdk.breaker import CircuitOpenError


def _packed(*messages) -> list[any_pb2.Any]:
    out = []
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m)
        out.append(a)
    return out


def _failed(code: grpc.StatusCode, *details, status_code: int | None = None) -> AioRpcError:
    status = status_pb2.Status(code=code.value[0] if status_code is None else status_code, message="m",
                               details=_packed(*details))
    trailing = Metadata((errors.STATUS_DETAILS_KEY, status.SerializeToString()))
    return AioRpcError(code, Metadata(), trailing, "m", "debug")


def test_code_picks_the_class_and_details_are_decoded():
    exc = errors.from_rpc_error(_failed(
        grpc.StatusCode.INVALID_ARGUMENT,
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="towerco.io"),
        error_details_pb2.BadRequest(field_violations=[{"field": "site.id", "description": "is required"}])))
    assert type(exc) is errors.InvalidArgument and isinstance(exc, AioRpcError)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and exc.details() == "m"
    assert exc.reason == "INVALID_ARGUMENT" and exc.violations == [errors.FieldViolation("site.id", "is required")]
    assert exc.resource is None and exc.retry_after_s is None

    nf = errors.from_rpc_error(_failed(grpc.StatusCode.NOT_FOUND,
                                       error_details_pb2.ResourceInfo(resource_type="t", resource_name="X")))
    assert isinstance(nf, errors.NotFound) and nf.resource.resource_name == "X"

    un = errors.from_rpc_error(_failed(grpc.StatusCode.UNAVAILABLE, error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))))
    assert isinstance(un, errors.Unavailable) and un.retry_after_s == pytest.approx(1.5)


def test_without_or_with_a_mismatched_trailer_there_are_no_details():
    bare = errors.from_rpc_error(AioRpcError(grpc.StatusCode.PERMISSION_DENIED, Metadata(), Metadata(), "no"))
    assert isinstance(bare, errors.PermissionDenied) and bare.status is None and bare.violations == []
    odd = errors.from_rpc_error(_failed(grpc.StatusCode.INTERNAL, error_details_pb2.ErrorInfo(reason="X"),
                                        status_code=5))
    assert isinstance(odd, errors.Internal) and odd.status is None and odd.reason == ""


def test_already_typed_errors_pass_through():
    circuit = CircuitOpenError("sites:7001", 1.0)
    assert errors.from_rpc_error(circuit) is circuit
    typed = errors.from_rpc_error(_failed(grpc.StatusCode.ABORTED))
    assert errors.from_rpc_error(typed) is typed and isinstance(typed, errors.Aborted)
