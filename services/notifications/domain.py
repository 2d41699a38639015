"""Notifications service decisions, pure: what makes a channel, route, policy, schedule or
silence valid beyond the field rules of the contract, which fields an update may change (the
update masks, resolved and applied by mesh/masks.py), and page cursors."""

from __future__ import annotations

import base64
import binascii
import re

from mesh.masks import MaskRules

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


def missing(prefix: str, **values: object) -> list[tuple[str, str]]:
    """(field, "is required") for each value left empty: what Create needs and an update may not
    take away. (Checked here, not by declarative `required` rules, so that a PATCH may leave the
    fields out.)"""
    out: list[tuple[str, str]] = []
    for name, value in values.items():
        empty = not value.strip() if isinstance(value, str) else not value
        if empty:
            out.append((f"{prefix}.{name}", "is required"))
    return out


# ------------------------------------------------------------------------------- update masks
# The paths each Update RPC may name: the same lists as the `mask_paths` of the requests'
# update_mask in the contract (tests/unit/notifications hold them equal). Channels are rows (a
# path sets the column of its name); routes, policies and schedules are stored messages (a path
# is copied from the request's message into the stored one: FieldMask.MergeMessage).

_OUTPUT = ("id", "create_time")

CHANNEL_MASK = MaskRules(
    entity="channel",
    paths={p: (p,) for p in ("name", "webhook_url", "signing_secret", "email_address")},
    immutable=frozenset({*_OUTPUT, "kind", "tenant_id", "has_signing_secret"}),
    reasons={"kind": "a channel never changes kind: create another",
             "tenant_id": "a channel never moves to another tenant: create another"},
)

_MATCH = ("min_severity", "regions", "tenant_ids", "site_ids", "kinds")
ROUTE_MASK = MaskRules(
    entity="route",
    paths={p: (p,) for p in ("name", "position", "match", *(f"match.{m}" for m in _MATCH), "continue_matching",
                             "channel_ids", "escalation_policy_id", "group_by", "group_wait_seconds",
                             "group_interval_seconds", "repeat_interval_seconds", "send_resolved")},
    immutable=frozenset(_OUTPUT),
)

POLICY_MASK = MaskRules(
    entity="escalation policy",
    paths={p: (p,) for p in ("name", "steps", "repeat")},
    immutable=frozenset(_OUTPUT),
)

SCHEDULE_MASK = MaskRules(
    entity="schedule",
    paths={p: (p,) for p in ("name", "rotations")},
    immutable=frozenset({*_OUTPUT, "overrides"}),
    reasons={"overrides": "overrides are added with AddOverride"},
)

MASKS: dict[str, MaskRules] = {"channel": CHANNEL_MASK, "route": ROUTE_MASK, "policy": POLICY_MASK,
                               "schedule": SCHEDULE_MASK}


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
