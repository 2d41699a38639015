"""Decisions of the Sites service: pure functions, no I/O, no protobuf.

What lives here:
- who may read and write what (roles, tenant scope, NOT_FOUND instead of PERMISSION_DENIED so a
  tenant viewer cannot learn that another tenant's site exists);
- field-mask rules for PATCH (which paths change which columns; output-only and id paths are
  refused, unknown paths are refused; resolved and applied by mesh/masks.py);
- invariants checked after a mask is applied (a PATCH must not leave a site without a name);
- page sizes and opaque, tamper-evident page tokens bound to the query they came from;
- calendar window rules;
- event subjects and the tenants an event concerns.

Errors are this module's own exception types; the servicer maps them to gRPC statuses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from mesh import subjects
from mesh.auth import tenant_scope
from mesh.masks import MaskRules

# ---------------------------------------------------------------------------------------------
# Errors


class DomainError(Exception):
    """Base of every decision that refuses a request."""


class Invalid(DomainError):
    """The request itself is wrong: INVALID_ARGUMENT with one violation per field."""

    def __init__(self, violations: Sequence[tuple[str, str]]):
        self.violations = list(violations)
        super().__init__("; ".join(f"{f}: {d}" for f, d in self.violations))


class Precondition(DomainError):
    """The request is well formed but the register's state refuses it: FAILED_PRECONDITION."""

    def __init__(self, message: str, reason: str):
        self.reason = reason
        super().__init__(message)


class NotVisible(DomainError):
    """The entity does not exist for this caller: NOT_FOUND (also for a tenant's hidden entity)."""

    def __init__(self, resource_type: str, resource_name: str):
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(f"{resource_type} {resource_name!r} not found")


class Forbidden(DomainError):
    """The caller sees the entity but its roles do not allow the change: PERMISSION_DENIED."""


# ---------------------------------------------------------------------------------------------
# Callers and access

Entity = Literal["site", "tenant", "tenancy", "window"]
ENTITIES: tuple[Entity, ...] = ("site", "tenant", "tenancy", "window")


class IdentityLike(Protocol):
    subject: str
    tenant: str

    def has_role(self, *roles: str) -> bool: ...


@dataclass(frozen=True)
class Caller:
    """What the Sites service needs to know about whoever calls it."""

    subject: str
    tenant_scope: str | None  # None: towerco staff, sees every tenant; else the one tenant
    can_read: bool
    can_write_register: bool  # sites, tenants, tenancies
    can_write_calendar: bool  # calendar windows


def caller_of(identity: IdentityLike) -> Caller:
    """Roles -> capabilities. admin and service imply every role; noc_operator implies viewer.

    The tenant scope is mesh.auth's one rule (staff: every tenant; else the token's tenant)."""
    scope = tenant_scope(identity)
    return Caller(
        subject=identity.subject,
        tenant_scope=scope,
        can_read=identity.has_role("viewer", "tenant_viewer", "noc_operator", "admin", "service"),
        can_write_register=identity.has_role("admin", "service"),
        can_write_calendar=identity.has_role("noc_operator", "admin", "service"),
    )


def can_write(caller: Caller, entity: Entity) -> bool:
    return caller.can_write_calendar if entity == "window" else caller.can_write_register


def check_read(caller: Caller) -> None:
    if not caller.can_read:
        raise Forbidden("reading the site register needs the viewer or tenant_viewer role")


def needs_visibility_before_denial(caller: Caller, entity: Entity) -> bool:
    """True when a refused write must first learn whether the target is visible to the caller,
    so that a hidden entity answers NOT_FOUND rather than PERMISSION_DENIED (no existence leak)."""
    return not can_write(caller, entity) and caller.tenant_scope is not None


def check_write(caller: Caller, entity: Entity, *, resource_name: str = "", visible: bool = True) -> None:
    """Refuse a write the caller may not make.

    `visible` says whether the target exists for this caller; it only matters for a
    tenant-scoped caller without the write role (see needs_visibility_before_denial).
    """
    if can_write(caller, entity):
        return
    if caller.tenant_scope is not None and not visible and resource_name:
        raise NotVisible(entity, resource_name)
    needed = "noc_operator" if entity == "window" else "admin"
    raise Forbidden(f"changing a {entity} needs the {needed} role")


def visible_tenant_ids(caller: Caller, tenant_ids: Iterable[str]) -> list[str]:
    """The tenant ids a caller may see in an entity: all for staff, only its own for a tenant."""
    ids = list(tenant_ids)
    if caller.tenant_scope is None:
        return ids
    return [t for t in ids if t == caller.tenant_scope]


def tenant_filter_visible(caller: Caller, tenant_id: str) -> bool:
    """Whether a "sites of tenant X" filter can match anything for this caller: a tenant may only
    ask about itself (asking about another operator would reveal where that operator is)."""
    return not tenant_id or caller.tenant_scope is None or tenant_id == caller.tenant_scope


def window_visible(tenant_scope: str | None, *, site_tenants: Iterable[str], window_tenants: Sequence[str]) -> bool:
    """A tenant sees a window on a site it is on, unless the window names only other tenants.
    (store.py applies the same rule in SQL; this is its reference definition.)"""
    if tenant_scope is None:
        return True
    if tenant_scope not in set(site_tenants):
        return False
    return not window_tenants or tenant_scope in window_tenants


def change_visible(tenant_scope: str | None, envelope_tenants: Iterable[str]) -> bool:
    """WatchChanges: a tenant sees only changes whose envelope names it."""
    return tenant_scope is None or tenant_scope in set(envelope_tenants)


# ---------------------------------------------------------------------------------------------
# Field masks


_POWER_COLUMNS = {
    "grid": "grid",
    "dg_capacity_kva": "dg_capacity_kva",
    "fuel_tank_l": "fuel_tank_l",
    "battery_bank_ah": "battery_bank_ah",
    "battery_voltage_v": "battery_voltage_v",
    "solar_kwp": "solar_kwp",
    "rectifier_capacity_kw": "rectifier_capacity_kw",
    "dg_start_delay_s": "dg_start_delay_s",
}
POWER_COLUMNS: tuple[str, ...] = tuple(_POWER_COLUMNS.values())

SITE_MASK = MaskRules(
    entity="site",
    paths={
        "name": ("name",),
        "region": ("region",),
        "location": ("latitude", "longitude"),
        "location.latitude": ("latitude",),
        "location.longitude": ("longitude",),
        "type": ("type",),
        "status": ("status",),
        "power": POWER_COLUMNS,
        **{f"power.{field}": (col,) for field, col in _POWER_COLUMNS.items()},
    },
    immutable=frozenset({"id", "create_time", "update_time", "tenant_ids"}),
)

TENANT_MASK = MaskRules(
    entity="tenant",
    paths={"name": ("name",)},
    immutable=frozenset({"id", "create_time", "update_time"}),
)

TENANCY_MASK = MaskRules(
    entity="tenancy",
    paths={
        "sla_availability_target": ("sla_availability_target",),
        "dc_voltage_min_v": ("dc_voltage_min_v",),
        "dc_voltage_max_v": ("dc_voltage_max_v",),
        "monthly_fee_minor": ("monthly_fee_minor",),
        "currency_code": ("currency_code",),
    },
    # a tenancy never moves: end it and create another
    immutable=frozenset({"id", "site_id", "tenant_id", "create_time", "update_time"}),
)

WINDOW_MASK = MaskRules(
    entity="window",
    paths={
        "start_time": ("start_time",),
        "end_time": ("end_time",),
        "category": ("category",),
        "tenant_ids": ("tenant_ids",),
        "description": ("description",),
    },
    # a window never moves to another site: delete it and create another
    immutable=frozenset({"id", "site_id", "created_by", "create_time", "update_time"}),
)

MASKS: dict[str, MaskRules] = {r.entity: r for r in (SITE_MASK, TENANT_MASK, TENANCY_MASK, WINDOW_MASK)}


# ---------------------------------------------------------------------------------------------
# Entity invariants (what the declarative validation cannot see: cross-field and post-merge rules)

SITE_ID_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]{2,31}$")
TENANT_ID_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")


def _required_ids(row: Mapping[str, Any], names: Sequence[str], prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}.{n}", "is required") for n in names if not str(row.get(n) or "").strip()]


def check_storable_text(values: Iterable[tuple[str, str]]) -> None:
    """PostgreSQL text cannot hold NUL characters: refuse them up front, naming each field,
    instead of failing in the database."""
    bad = [(path, "must not contain NUL characters") for path, text in values if "\x00" in text]
    if bad:
        raise Invalid(bad)


def check_site(row: Mapping[str, Any], *, prefix: str = "site", creating: bool = False) -> None:
    """A site needs an id on create, and after create or PATCH still a name and a region.
    (These are checked here, not by declarative `required` rules, so that a PATCH may omit them.)"""
    v = _required_ids(row, ["id"], prefix) if creating else []
    if not str(row.get("name", "")).strip():
        v.append((f"{prefix}.name", "is required"))
    if not str(row.get("region", "")).strip():
        v.append((f"{prefix}.region", "is required"))
    if row.get("status") == "unspecified":
        v.append((f"{prefix}.status", "cannot be unset"))
    if v:
        raise Invalid(v)


def check_bbox(south: float, west: float, north: float, east: float, *, prefix: str = "bbox") -> None:
    """South must not be north of north. West > east is allowed: the box crosses the antimeridian."""
    if south > north:
        raise Invalid([(f"{prefix}.north_east.latitude", "must be at least south_west.latitude")])


def check_range(start: datetime | None, end: datetime | None, *, prefix: str = "range") -> None:
    if start is not None and end is not None and not end > start:
        raise Invalid([(f"{prefix}.end_time", "must be after start_time")])


def default_site_status(status: str) -> str:
    """A site created without a status is active."""
    return "active" if status in ("", "unspecified") else status


def check_tenant(row: Mapping[str, Any], *, prefix: str = "tenant", creating: bool = False) -> None:
    v = _required_ids(row, ["id"], prefix) if creating else []
    if not str(row.get("name", "")).strip():
        v.append((f"{prefix}.name", "is required"))
    if v:
        raise Invalid(v)


def check_tenancy(row: Mapping[str, Any], *, prefix: str = "tenancy", creating: bool = False) -> None:
    """A tenancy names its site and tenant; its DC voltage band, when both ends are set, must not
    be upside down."""
    v = _required_ids(row, ["site_id", "tenant_id"], prefix) if creating else []
    lo = float(row.get("dc_voltage_min_v") or 0)
    hi = float(row.get("dc_voltage_max_v") or 0)
    if lo and hi and lo > hi:
        v.append((f"{prefix}.dc_voltage_max_v", f"must be at least dc_voltage_min_v ({lo:g})"))
    if v:
        raise Invalid(v)


def check_window(row: Mapping[str, Any], *, prefix: str = "window", creating: bool = False) -> list[str]:
    """Validate a window's own fields; returns its tenant ids de-duplicated in given order.

    Rules: end_time after start_time; every tenant id well formed. Whether those tenants are on
    the site is a state question answered by check_window_tenants.
    """
    v = _required_ids(row, ["site_id"], prefix) if creating else []
    start, end = row.get("start_time"), row.get("end_time")
    if start is None:
        v.append((f"{prefix}.start_time", "is required"))
    if end is None:
        v.append((f"{prefix}.end_time", "is required"))
    if start is not None and end is not None and not end > start:
        v.append((f"{prefix}.end_time", "must be after start_time"))
    if not row.get("category") or row.get("category") == "unspecified":
        v.append((f"{prefix}.category", "is required"))
    ids: list[str] = []
    for i, t in enumerate(row.get("tenant_ids") or ()):
        if not TENANT_ID_RE.match(t):
            v.append((f"{prefix}.tenant_ids[{i}]", f"{t!r} is not a tenant id"))
        elif t not in ids:
            ids.append(t)
    if v:
        raise Invalid(v)
    return ids


def check_window_tenants(window_tenants: Iterable[str], site_tenants: Iterable[str], *, site_id: str) -> None:
    """A window may only name tenants that have a tenancy on its site: FAILED_PRECONDITION
    (reason TENANT_NOT_ON_SITE), since the same request succeeds once the tenancy exists."""
    on_site = set(site_tenants)
    missing = [t for t in window_tenants if t not in on_site]
    if missing:
        raise Precondition(
            f"tenant(s) {', '.join(missing)} have no tenancy on site {site_id}", reason="TENANT_NOT_ON_SITE"
        )


# ---------------------------------------------------------------------------------------------
# Pages

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 -> the default (50); 1..1000 as asked; anything else is refused (never clamped)."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise Invalid([("page.size", f"must be between 0 and {MAX_PAGE_SIZE}")])
    return requested


def query_fingerprint(kind: str, tenant_scope: str | None, filters: Mapping[str, Any]) -> str:
    """A short digest of what a list request asks for; a page token only works for the same query."""
    blob = json.dumps([kind, tenant_scope, _jsonable(dict(filters))], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$t"}:
        return datetime.fromisoformat(value["$t"])
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


class PageTokens:
    """Opaque cursors: base64url("<json>.<hmac>") where json holds the version, the query
    fingerprint and the last key of the page. Tampered, foreign or malformed tokens are refused
    with INVALID_ARGUMENT on `page.token`."""

    VERSION = 1

    def __init__(self, secret: bytes | str):
        key = secret.encode() if isinstance(secret, str) else secret
        self._key = hashlib.sha256(b"towerco.sites.page-token\x00" + key).digest()

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()[:32]

    def encode(self, last_key: Sequence[Any], fingerprint: str) -> str:
        body = json.dumps({"v": self.VERSION, "q": fingerprint, "k": _jsonable(list(last_key))},
                          separators=(",", ":")).encode()
        raw = body + b"." + self._mac(body).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, token: str, fingerprint: str) -> list[Any] | None:
        """The last key of the previous page, or None for an empty token (first page)."""
        if not token:
            return None
        bad = Invalid([("page.token", "is not a page token of this query; start again without one")])
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        body, sep, mac = raw.rpartition(b".")
        if not sep or not hmac.compare_digest(mac, self._mac(body).encode()):
            raise bad
        try:
            data = json.loads(body)
        except ValueError:
            raise bad from None
        if not isinstance(data, dict) or data.get("v") != self.VERSION or data.get("q") != fingerprint:
            raise bad
        key = data.get("k")
        if not isinstance(key, list) or not key:
            raise bad
        return list(_from_jsonable(key))


# ---------------------------------------------------------------------------------------------
# Events

ChangeKind = Literal["created", "updated", "deleted"]


def event_subject(entity: Entity, kind: ChangeKind) -> str:
    """`towerco.sites.<entity>.<created|updated|deleted>`; also the envelope's type."""
    if entity not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}")
    if kind not in ("created", "updated", "deleted"):
        raise ValueError(f"unknown change kind {kind!r}")
    return subjects.sites_event(entity, kind)


def event_tenants(
    entity: Entity,
    *,
    tenant_id: str = "",
    site_tenants: Iterable[str] = (),
    window_tenants: Sequence[str] = (),
) -> list[str]:
    """The tenants an event concerns (the envelope's tenant_ids, used for tenant-scoped replay):
    a site -> the tenants on it; a tenant or a tenancy -> that tenant; a window -> the tenants it
    names, or every tenant on the site when it names none."""
    if entity in ("tenant", "tenancy"):
        return [tenant_id] if tenant_id else []
    if entity == "window" and window_tenants:
        return sorted(set(window_tenants))
    return sorted(set(site_tenants))
