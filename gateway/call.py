"""What one API request carries through the gateway, shared by the REST core (app.py), the
streaming bridge (live.py) and the OpenAPI builder (openapi.py), so none of them imports another.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from mesh.auth import Identity

# The bearer token as a query parameter, for clients that cannot send headers (EventSource,
# WebSocket, a download link); never a field of any request message.
TOKEN_PARAM = "access_token"
RESERVED_QUERY = frozenset({TOKEN_PARAM})


class Call:
    """One API request: its ASGI scope, headers, correlation id and, once checked, its caller."""

    __slots__ = ("scope", "headers", "cid", "origin_headers", "identity", "token", "timeout")

    def __init__(self, scope: dict, headers: dict[str, str], cid: str, origin_headers: list):
        self.scope = scope
        self.headers = headers
        self.cid = cid
        self.origin_headers = origin_headers
        self.identity: Identity | None = None
        self.token = ""
        self.timeout: float | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        md = (("authorization", f"Bearer {self.token}"), ("x-correlation-id", self.cid))
        trace = self.headers.get("traceparent")  # W3C trace context rides along to the service
        if trace:
            md += (("traceparent", trace),)
            state = self.headers.get("tracestate")
            if state:
                md += (("tracestate", state),)
        return md


def headers_of(scope: dict) -> dict[str, str]:
    """The request headers, lower-cased names, the first value of each."""
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or ():
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


def query_of(scope: dict) -> list[tuple[str, str]]:
    """The query parameters in order, blank values kept."""
    qs = scope.get("query_string") or b""
    if not qs:
        return []
    return parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
