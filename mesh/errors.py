"""Typed gRPC errors with rich google.rpc details.

Handlers raise these; the mesh's exception interceptor turns each into its status code, its
message and a `grpc-status-details-bin` trailer holding a google.rpc.Status whose details carry:

- ErrorInfo(reason, domain="towerco.io") on every error,
- BadRequest field violations on InvalidArgument,
- ResourceInfo on NotFound / AlreadyExists when a resource is named,
- RetryInfo on Unavailable / ResourceExhausted when a retry delay is given.

Clients decode it with `sdk.errors` (`status_of(error)`, or the typed errors of sdk.Client).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor import exceptions as gx

# The client side (decoding a failed call's Status) is the SDK's; re-exported for server code.
from sdk.errors import STATUS_DETAILS_KEY as STATUS_DETAILS_KEY
from sdk.errors import FieldViolation as FieldViolation
from sdk.errors import status_of as status_of
from sdk.errors import unpack_details as unpack_details
from sdk.errors import violations_of as violations_of

DOMAIN = "towerco.io"


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    whole = int(seconds)
    delay = duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


class RichError:
    """Mixin: an error that can describe itself as a google.rpc.Status."""

    status_code: grpc.StatusCode
    details: str
    reason: str = ""

    def detail_messages(self) -> list[Message]:
        """The google.rpc detail messages, ErrorInfo first."""
        return [error_details_pb2.ErrorInfo(reason=self.reason or self.status_code.name, domain=DOMAIN)]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=self.status_code.value[0],
            message=self.details,
            details=[_pack(m) for m in self.detail_messages()],
        )


class InvalidArgument(RichError, gx.InvalidArgument):
    """The request is malformed; `violations` name each bad field."""

    def __init__(self, message: str = "invalid request", violations: Iterable[FieldViolation] = ()):
        super().__init__(message)
        self.violations: tuple[FieldViolation, ...] = tuple(FieldViolation(*v) for v in violations)

    def detail_messages(self) -> list[Message]:
        out = super().detail_messages()
        if self.violations:
            out.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        return out


class _ResourceError(RichError):
    def __init__(self, message: str, resource_type: str = "", resource_name: str = ""):
        super().__init__(message)  # type: ignore[call-arg]
        self.resource_type = resource_type
        self.resource_name = resource_name

    def detail_messages(self) -> list[Message]:
        out = super().detail_messages()
        if self.resource_type or self.resource_name:
            out.append(
                error_details_pb2.ResourceInfo(
                    resource_type=self.resource_type,
                    resource_name=self.resource_name,
                    description=self.details,
                )
            )
        return out


class NotFound(_ResourceError, gx.NotFound):
    """The named resource does not exist (or the caller may not see it)."""


class AlreadyExists(_ResourceError, gx.AlreadyExists):
    """A resource with that name exists already."""


class FailedPrecondition(RichError, gx.FailedPrecondition):
    """The system is not in a state where the operation can run; `reason` says why, in CAPS."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class OutOfRange(RichError, gx.OutOfRange):
    """A position the caller named is outside what exists, e.g. a resume cursor older than what a
    stream still keeps; `reason` says which, in CAPS."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class PermissionDenied(RichError, gx.PermissionDenied):
    """The caller is authenticated but may not do this."""

    def __init__(self, message: str = "permission denied"):
        super().__init__(message)


class Unauthenticated(RichError, gx.Unauthenticated):
    """No valid credentials came with the call."""

    def __init__(self, message: str = "authentication required"):
        super().__init__(message)


class _RetryableError(RichError):
    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)  # type: ignore[call-arg]
        self.retry_after_s = retry_after_s

    def detail_messages(self) -> list[Message]:
        out = super().detail_messages()
        if self.retry_after_s is not None:
            out.append(_retry_info(self.retry_after_s))
        return out


class Unavailable(_RetryableError, gx.Unavailable):
    """A dependency is down; the call may succeed later."""


class ResourceExhausted(_RetryableError, gx.ResourceExhausted):
    """A quota or limit is used up."""


class Aborted(RichError, gx.Aborted):
    """A concurrency conflict; retry the whole read-modify-write."""

    def __init__(self, message: str = "aborted"):
        super().__init__(message)


class DeadlineExceeded(RichError, gx.DeadlineExceeded):
    """The call's deadline passed before the work could finish."""

    def __init__(self, message: str = "deadline exceeded"):
        super().__init__(message)


class Internal(RichError, gx.Internal):
    """A server bug; the message must never carry internals."""

    def __init__(self, message: str = "internal error"):
        super().__init__(message)


def status_of_exception(exc: gx.GrpcException) -> status_pb2.Status:
    """The google.rpc.Status for any GrpcException (ours carry rich details, plain ones an ErrorInfo)."""
    if isinstance(exc, RichError):
        return exc.to_status()
    code = exc.status_code
    info = error_details_pb2.ErrorInfo(reason=code.name, domain=DOMAIN)
    return status_pb2.Status(code=code.value[0], message=exc.details, details=[_pack(info)])
