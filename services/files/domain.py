"""Pure rules of the Files service: accepted content types and how each one's bytes must begin,
size limits, names, checksums, and the link tokens' subject. No I/O."""

from __future__ import annotations

import hashlib
import re

DEFAULT_MAX_BYTES = 3 * 1024 * 1024  # below the 4 MiB gRPC message limit, with room for the envelope
DEFAULT_LINK_TTL_S = 900
MAX_LINK_TTL_S = 7 * 86400
LINK_ROLE = "file_download"
LINK_SUBJECT_PREFIX = "file-link:"
DEFAULT_LIST = 100

_ZIP = (b"PK\x03\x04",)
# content type -> the prefixes its content may start with (None: text, checked as UTF-8)
ACCEPTED: dict[str, tuple[bytes, ...] | None] = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": _ZIP,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": _ZIP,
    "text/csv": None,
    "text/plain": None,
}


def check_upload(content_type: str, content: bytes, *, max_bytes: int) -> list[tuple[str, str]]:
    """Field violations of an upload's type and content; empty when acceptable."""
    ct = normalise_type(content_type)
    if ct not in ACCEPTED:
        return [("content_type", f"{content_type!r} is not accepted; accepted: {', '.join(sorted(ACCEPTED))}")]
    out = []
    if len(content) > max_bytes:
        out.append(("content", f"is {len(content)} bytes; at most {max_bytes} bytes are accepted"))
    elif not content:
        out.append(("content", "is empty"))
    else:
        magic = ACCEPTED[ct]
        if magic is None:
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                out.append(("content", f"is not UTF-8 text, as {ct} must be"))
        elif not content.startswith(magic):
            out.append(("content", f"does not look like {ct}"))
    return out


def normalise_type(content_type: str) -> str:
    """"Text/CSV; charset=utf-8" -> "text/csv"."""
    return content_type.split(";", 1)[0].strip().lower()


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_file_id(value: str) -> bool:
    return bool(UUID_RE.match(value))


def blob_path(tenant_id: str, file_id: str) -> str:
    """Where a file's bytes live in the object store: one folder per tenant."""
    return f"{tenant_id}/{file_id}"


def link_subject(file_id: str) -> str:
    return LINK_SUBJECT_PREFIX + file_id


def link_ttl(requested_s: int) -> int:
    if requested_s <= 0:
        return DEFAULT_LINK_TTL_S
    return min(requested_s, MAX_LINK_TTL_S)


def link_allows(subject: str, roles: frozenset[str], file_id: str) -> bool:
    """A link token opens exactly the one file it was made for."""
    return LINK_ROLE in roles and subject == link_subject(file_id)
