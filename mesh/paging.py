"""Keyset page tokens and time-range bounds: the one home of how the newest-first lists (AIOps
anomalies and predictions, NOC incidents and alarms) page and take their optional range.

A token is the (time, id) of the last row of the previous page, URL-safe base64 of
`<microseconds>|<uuid>`; it is opaque to clients. A token this code did not issue is
INVALID_ARGUMENT on `page.token`, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

from towerco.common.v1 import common_pb2

from mesh.errors import FieldViolation, InvalidArgument


def encode_keyset(t: datetime | float, row_id: str) -> str:
    """The token after a row: its sort time (a datetime or epoch seconds) and its id."""
    seconds = t.timestamp() if isinstance(t, datetime) else t
    raw = f"{int(round(seconds * 1_000_000))}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_keyset(token: str) -> tuple[datetime, str] | None:
    """None for an empty token; ValueError for one this module did not issue."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        us, row_id = raw.split("|", 1)
        return datetime.fromtimestamp(int(us) / 1_000_000, tz=UTC), str(uuid.UUID(row_id))
    except (binascii.Error, ValueError, UnicodeDecodeError, OverflowError, OSError) as exc:
        raise ValueError("not a token of this list") from exc


def page_after(token: str) -> tuple[datetime, str] | None:
    """The request's page token decoded, or INVALID_ARGUMENT on `page.token`."""
    try:
        return decode_keyset(token)
    except ValueError:
        raise InvalidArgument("invalid page token",
                              [FieldViolation("page.token", "is not a token of this list")]) from None


def time_bounds(rng: common_pb2.TimeRange, present: bool) -> tuple[datetime | None, datetime | None]:
    """A request's optional range as (start, end), either bound None when left out; an end not
    after its start is INVALID_ARGUMENT on `range`."""
    if not present:
        return None, None
    lo = rng.start_time.ToDatetime(tzinfo=UTC) if rng.HasField("start_time") else None
    hi = rng.end_time.ToDatetime(tzinfo=UTC) if rng.HasField("end_time") else None
    if lo is not None and hi is not None and hi <= lo:
        raise InvalidArgument("invalid time range", [FieldViolation("range", "end_time must be after start_time")])
    return lo, hi
