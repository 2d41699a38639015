"""gRPC status -> HTTP status + a google.rpc.Status JSON body.

The body is always the google.rpc.Status JSON mapping:

    {"code": 5, "message": "site NBO-0001 not found",
     "details": [{"@type": "type.googleapis.com/google.rpc.ResourceInfo", ...}]}

`code` is the gRPC code number; the details are decoded from the `grpc-status-details-bin`
trailer the service sent (BadRequest field violations, ErrorInfo, RetryInfo, ResourceInfo, ...).
Server-side failures (INTERNAL, UNKNOWN, DATA_LOSS) never carry the upstream message or details:
the client gets a fixed text and a RequestInfo with the correlation id to quote to support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mesh.errors import FieldViolation

STATUS_DETAILS_KEY = "grpc-status-details-bin"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
HIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
INTERNAL_MESSAGE = "internal error; quote the correlation id to support"
WWW_AUTHENTICATE = 'Bearer realm="towerco"'
DEFAULT_RETRY_AFTER_S = 1


@dataclass
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def code_of(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def _pack(msg: Any) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, KeyError, ValueError):  # a type this gateway does not know
        import base64

        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode("ascii")}


def _retry_after(status: status_pb2.Status) -> int | None:
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            secs = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(1, math.ceil(secs))
    return None


def from_status(
    code: grpc.StatusCode,
    status: status_pb2.Status,
    *,
    correlation_id: str = "",
    auth_error: str = "",
) -> HttpError:
    """Map a full status (with details) to the HTTP error the gateway sends."""
    http = HTTP_STATUS.get(code, 500)
    if code in HIDDEN:
        safe = status_pb2.Status(code=code.value[0], message=INTERNAL_MESSAGE)
        if correlation_id:
            safe.details.append(_pack(error_details_pb2.RequestInfo(request_id=correlation_id)))
        status = safe
    body = {
        "code": status.code,
        "message": status.message,
        "details": [_detail_json(d) for d in status.details],
    }
    headers: dict[str, str] = {}
    if http == 401:
        headers["WWW-Authenticate"] = (
            f'{WWW_AUTHENTICATE}, error="invalid_token", error_description="{_quote(auth_error)}"'
            if auth_error
            else WWW_AUTHENTICATE
        )
    if http in (429, 503):
        headers["Retry-After"] = str(_retry_after(status) or DEFAULT_RETRY_AFTER_S)
    return HttpError(http, body, headers)


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def from_rpc_error(error: grpc.RpcError, *, correlation_id: str = "") -> HttpError:
    """Map an upstream call's failure, decoding rich details from the trailer."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else ""
    status = None
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - a garbled trailer is treated as absent
                status = None
            break
    if status is None or status.code != code.value[0]:
        status = status_pb2.Status(code=code.value[0], message=message or "")
        retry_in = getattr(error, "retry_in_s", None)  # the sdk's CircuitOpenError
        if retry_in is not None:
            ri = error_details_pb2.RetryInfo()
            ri.retry_delay.FromNanoseconds(int(max(retry_in, 0.001) * 1e9))
            status.details.append(_pack(ri))
    return from_status(code, status, correlation_id=correlation_id)


def make(
    code: grpc.StatusCode,
    message: str,
    *,
    violations: list[FieldViolation] | tuple[FieldViolation, ...] = (),
    reason: str = "",
    retry_after_s: float | None = None,
    correlation_id: str = "",
    auth_error: str = "",
) -> HttpError:
    """An error the gateway itself raises (bad request, auth, rate limit, size, routing)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if violations:
        br = error_details_pb2.BadRequest()
        for v in violations:
            br.field_violations.add(field=v.field, description=v.description)
        status.details.append(_pack(br))
    if reason:
        status.details.append(_pack(error_details_pb2.ErrorInfo(reason=reason, domain="towerco.io")))
    if retry_after_s is not None:
        ri = error_details_pb2.RetryInfo()
        ri.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
        status.details.append(_pack(ri))
    return from_status(code, status, correlation_id=correlation_id, auth_error=auth_error)


# documented so OpenAPI and the docs can show the shape
CODE_NAMES = {v: k for k, v in code_pb2.Code.items()}
