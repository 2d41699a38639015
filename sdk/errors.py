"""Typed client-side errors, decoded from the google.rpc.Status a Towerco server sends.

Every failed call made through the typed clients (`sdk.Client`, `sdk.BlockingClient`) raises a
subclass of `RpcError`, chosen by the status code, itself a `grpc.aio.AioRpcError`: code that
catches `grpc.aio.AioRpcError` / `grpc.RpcError` keeps working, and new code can write

    try:
        await client.sites.GetSite(sites_pb2.GetSiteRequest(site_id="TWR-1"))
    except sdk.errors.NotFound as exc:
        print(exc.resource)            # ResourceInfo(resource_type="site", resource_name="TWR-1")
    except sdk.errors.InvalidArgument as exc:
        print(exc.violations)          # [FieldViolation(field="site_id", description="...")]
    except sdk.errors.Unavailable as exc:
        await asyncio.sleep(exc.retry_after_s or 1.0)

The details ride in the `grpc-status-details-bin` trailer (google.rpc.Status with packed
ErrorInfo, BadRequest, ResourceInfo, RetryInfo, ...). Decoding needs only protobuf and
googleapis-common-protos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import AioRpcError, Metadata

STATUS_DETAILS_KEY = "grpc-status-details-bin"

__all__ = [
    "STATUS_DETAILS_KEY",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RpcError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
    "status_of",
    "unpack_details",
    "violations_of",
]

_DETAIL_KINDS: Sequence[type[Message]] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.RequestInfo,
)


class FieldViolation(NamedTuple):
    """One bad field: a dotted snake_case path (with [i] indexes) and what is wrong with it."""

    field: str
    description: str


def _trailer(metadata: object, key: str) -> bytes | None:
    """The binary value of `key` in call metadata (grpc.aio.Metadata or a sequence of pairs)."""
    if metadata is None:
        return None
    for item in metadata:  # type: ignore[attr-defined]
        k, v = item
        if k == key and isinstance(v, bytes):
            return v
    return None


def status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    """The rich google.rpc.Status of a failed call, or None when it carries none (or a corrupt one)."""
    trailing = getattr(error, "trailing_metadata", None)
    raw = _trailer(trailing() if callable(trailing) else None, STATUS_DETAILS_KEY)
    if raw is None:
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:  # noqa: BLE001 - a corrupt trailer is the same as none
        return None
    code = getattr(error, "code", None)
    if callable(code) and status.code != code().value[0]:
        return None  # the trailer does not describe this status
    return status


def unpack_details(status: status_pb2.Status) -> list[Message]:
    """Unpack the known google.rpc detail messages of a Status (unknown ones are skipped)."""
    out: list[Message] = []
    for packed in status.details:
        for kind in _DETAIL_KINDS:
            if packed.Is(kind.DESCRIPTOR):
                msg = kind()
                packed.Unpack(msg)
                out.append(msg)
                break
    return out


def violations_of(status: status_pb2.Status) -> list[FieldViolation]:
    """The BadRequest field violations inside a Status."""
    out: list[FieldViolation] = []
    for msg in unpack_details(status):
        if isinstance(msg, error_details_pb2.BadRequest):
            out.extend(FieldViolation(v.field, v.description) for v in msg.field_violations)
    return out


class RpcError(AioRpcError):
    """A failed call with its decoded details. `code()`, `details()`, `trailing_metadata()` are
    those of the original error; `status` is the google.rpc.Status (None when the server sent
    none, e.g. a proxy or gRPC itself failed the call)."""

    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, initial_metadata: Metadata, trailing_metadata: Metadata,
                 details: str | None = None, debug_error_string: str | None = None,
                 status: status_pb2.Status | None = None) -> None:
        super().__init__(code, initial_metadata, trailing_metadata, details, debug_error_string)
        self.status = status
        self.detail_messages: list[Message] = unpack_details(status) if status is not None else []

    def _first(self, kind: type[Message]) -> Message | None:
        return next((m for m in self.detail_messages if isinstance(m, kind)), None)

    @property
    def reason(self) -> str:
        """ErrorInfo.reason (the code name unless the server gave a specific one), else ""."""
        info = self._first(error_details_pb2.ErrorInfo)
        return info.reason if isinstance(info, error_details_pb2.ErrorInfo) else ""

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        info = self._first(error_details_pb2.ErrorInfo)
        return info if isinstance(info, error_details_pb2.ErrorInfo) else None

    @property
    def violations(self) -> list[FieldViolation]:
        return violations_of(self.status) if self.status is not None else []

    @property
    def resource(self) -> error_details_pb2.ResourceInfo | None:
        info = self._first(error_details_pb2.ResourceInfo)
        return info if isinstance(info, error_details_pb2.ResourceInfo) else None

    @property
    def retry_after_s(self) -> float | None:
        """RetryInfo's delay in seconds, when the server suggested one."""
        info = self._first(error_details_pb2.RetryInfo)
        if not isinstance(info, error_details_pb2.RetryInfo):
            return None
        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code(), self.initial_metadata(), self.trailing_metadata(), self.details(),
                             self.debug_error_string(), self.status))


class Cancelled(RpcError):
    status_code = grpc.StatusCode.CANCELLED


class Unknown(RpcError):
    status_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(RpcError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RpcError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RpcError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RpcError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RpcError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RpcError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RpcError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RpcError):
    status_code = grpc.StatusCode.ABORTED


class Unimplemented(RpcError):
    status_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RpcError):
    status_code = grpc.StatusCode.INTERNAL


class Unavailable(RpcError):
    status_code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(RpcError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    cls.status_code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, Unimplemented,
                Internal, Unavailable, Unauthenticated)
}


def from_rpc_error(error: AioRpcError) -> AioRpcError:
    """The typed error for a failed call. Errors that already are typed (an `RpcError`, or the
    breaker's `CircuitOpenError`) come back unchanged."""
    if isinstance(error, RpcError) or type(error) is not AioRpcError:
        return error
    cls = _BY_CODE.get(error.code(), RpcError)
    return cls(error.code(), error.initial_metadata(), error.trailing_metadata(), error.details(),
               error.debug_error_string(), status_of(error))
