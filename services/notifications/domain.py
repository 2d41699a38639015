"""Notifications service decisions, pure: what makes a channel, route, policy, schedule or
silence valid beyond the field rules of the contract, and page cursors."""

from __future__ import annotations

import base64
import binascii
import re

WEBHOOK, EMAIL = 1, 2
MIN_SECRET_LEN = 16
DEFAULT_PAGE = 50


def channel_problems(*, kind: int, webhook_url: str, signing_secret: str, email_address: str
                     ) -> list[tuple[str, str]]:
    """(field, problem) pairs: a webhook needs a URL and a signing secret of at least 16
    characters, and no email address; an email channel needs an address and nothing else."""
    out: list[tuple[str, str]] = []
    if kind == WEBHOOK:
        if not webhook_url:
            out.append(("channel.webhook_url", "is required for a webhook channel"))
        if len(signing_secret) < MIN_SECRET_LEN:
            out.append(("channel.signing_secret", f"must be at least {MIN_SECRET_LEN} characters for a webhook"))
        if email_address:
            out.append(("channel.email_address", "must be empty for a webhook channel"))
    elif kind == EMAIL:
        if not email_address:
            out.append(("channel.email_address", "is required for an email channel"))
        if webhook_url:
            out.append(("channel.webhook_url", "must be empty for an email channel"))
        if signing_secret:
            out.append(("channel.signing_secret", "must be empty for an email channel"))
    return out


def regex_problem(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"is not a regular expression: {exc}"
    return None


def encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o|{offset}".encode()).decode().rstrip("=")


def decode_offset(token: str) -> int:
    """0 for an empty token; ValueError for one this list did not issue."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        tag, value = raw.split("|", 1)
        n = int(value)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a token of this list") from exc
    if tag != "o" or n < 0:
        raise ValueError("not a token of this list")
    return n


def page_size(size: int) -> int:
    return size or DEFAULT_PAGE
