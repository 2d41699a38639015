"""Edge duties that are not transcoding: deadlines, correlation ids, rate limits, CORS."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass

_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# One spelling of each header rule, used here and published in the OpenAPI document.
# X-Request-Timeout: 1 to 999.999 seconds (at most 3 decimals, "s" optional) or 1000 to 999999
# milliseconds ("ms"); the gateway then caps it at its maximum. A shorter deadline cannot be met
# through the gateway on a loaded host and would only manufacture 504s.
REQUEST_TIMEOUT_PATTERN = r"^(?:([1-9][0-9]{0,2}(?:\.[0-9]{1,3})?)s?|([1-9][0-9]{3,5})ms)$"
CORRELATION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_REQUEST_TIMEOUT = re.compile(REQUEST_TIMEOUT_PATTERN)
_CORRELATION = re.compile(CORRELATION_PATTERN)


def parse_timeout(grpc_timeout: str | None, request_timeout: str | None) -> float | None:
    """Seconds asked for by `Grpc-Timeout` ("500m", "10S") or `X-Request-Timeout` ("2.5", "2.5s",
    "800ms"); None when neither is sent. Raises ValueError naming the bad header."""
    if grpc_timeout:
        m = _GRPC_TIMEOUT.match(grpc_timeout.strip())
        if not m:
            raise ValueError(f'Grpc-Timeout must be 1-8 digits and a unit H, M, S, m, u or n (e.g. "500m"), got {grpc_timeout!r}')
        value = int(m.group(1)) * _GRPC_UNITS[m.group(2)]
    elif request_timeout is not None:
        m = _REQUEST_TIMEOUT.match(request_timeout)
        if not m:
            raise ValueError('X-Request-Timeout must be 1 to 999.999 seconds ("2.5", "2.5s") or 1000 to 999999 '
                             f'milliseconds ("1500ms"), got {request_timeout!r}')
        value = float(m.group(1)) if m.group(1) else int(m.group(2)) / 1000.0
    else:
        return None
    if value <= 0:
        raise ValueError("the request timeout must be positive")
    return value


def correlation_id(given: str | None) -> str:
    """The client's X-Correlation-ID when it is sane, else a new one."""
    if given and _CORRELATION.match(given):
        return given
    return uuid.uuid4().hex


def correlation_problem(given: str | None) -> str | None:
    """Why a sent X-Correlation-ID is refused (None: absent or fine)."""
    if given is None or _CORRELATION.match(given):
        return None
    return f"X-Correlation-ID must be 1 to 128 of A-Z a-z 0-9 . _ : - (got {given[:40]!r})"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per principal: `rate` tokens a second, at most `burst` saved up.

    Buckets are per gateway process; with N workers the fleet-wide ceiling is N times the rate.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000):
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 when a request may pass, else the seconds until one token is back."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate

    def _evict(self, now: float) -> None:
        full_after = self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.stamp >= full_after]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


class Cors:
    """CORS with an explicit origin list; credentials are allowed only for listed origins."""

    ALLOW_HEADERS = "authorization, content-type, x-correlation-id, x-request-timeout, grpc-timeout, last-event-id"
    EXPOSE_HEADERS = "x-correlation-id, retry-after, www-authenticate"

    def __init__(self, origins: tuple[str, ...]):
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    def headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if not origin:
            return []
        if origin in self.origins:
            return [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", self.EXPOSE_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
        if self.any:  # a wildcard never comes with credentials
            return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", self.EXPOSE_HEADERS.encode())]
        return []

    def preflight(self, origin: str | None, allowed_methods: str) -> list[tuple[bytes, bytes]]:
        base = self.headers(origin)
        if not base:
            return []
        return base + [
            (b"access-control-allow-methods", allowed_methods.encode()),
            (b"access-control-allow-headers", self.ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
        ]


_TOKEN_IN_QUERY = re.compile(r"(access_token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Blank `access_token=` query values in log lines (uvicorn logs WebSocket paths with their
    query string at INFO, and streams accept the token there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        if "access_token=" in message:
            record.msg = _TOKEN_IN_QUERY.sub(r"\1REDACTED", message)
            record.args = ()
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
