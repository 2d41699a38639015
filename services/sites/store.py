"""SQL of the Sites service (schema `sites`), via asyncpg. Keyword-only functions; rows are dicts.

Tenant scoping is done here, in the SQL itself: every read takes `tenant` (None for towerco staff,
else the caller's tenant id) and a scoped query only returns what that tenant may see:
- a site with a tenancy of that tenant;
- that tenant itself;
- that tenant's own tenancies;
- a window on a site the tenant is on, unless the window names only other tenants.

Lists use keyset pagination: `after` is the sort key of the last row of the previous page and
they fetch `limit + 1` rows so the caller knows whether there is a next page.
Column names in dynamic UPDATEs come from fixed whitelists, never from input.

Errors: what the database refuses comes out as the typed errors below, never as asyncpg's:
`Duplicate` (a unique key is taken), `MissingReference` (an insert names a site or tenant that
does not exist), `StillReferenced` (a delete is blocked by rows that point at it) and
`Unstorable` (a value PostgreSQL cannot take). Connection failures pass through unchanged (the
mesh maps them to UNAVAILABLE).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg

P = ParamSpec("P")
R = TypeVar("R")


class StoreError(Exception):
    """Base of the refusals of the site register's database."""


class Duplicate(StoreError):
    """A unique key (a site or tenant id, one tenancy per tenant and site) is already taken."""


class MissingReference(StoreError):
    """An insert refers to a row that does not exist; `entity` is "site" or "tenant"."""

    def __init__(self, entity: str) -> None:
        super().__init__(f"unknown {entity}")
        self.entity = entity


class StillReferenced(StoreError):
    """A delete is blocked by rows that still refer to the row (a tenant's tenancies)."""


class Unstorable(StoreError):
    """A value the database cannot take (out of its range or encoding)."""


def _refused(*, on_delete: bool = False) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Turn asyncpg's integrity and data errors into the typed errors of this module."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except asyncpg.UniqueViolationError as exc:
                raise Duplicate(exc.constraint_name or "") from None
            except (asyncpg.ForeignKeyViolationError, asyncpg.RestrictViolationError) as exc:
                if on_delete:
                    raise StillReferenced(exc.constraint_name or "") from None
                raise MissingReference("site" if "site" in (exc.constraint_name or "") else "tenant") from None
            except asyncpg.DataError as exc:
                raise Unstorable(str(exc)) from None

        return call

    return wrap

SITE_FIELDS: tuple[str, ...] = (
    "name", "region", "latitude", "longitude", "type", "status", "grid", "dg_capacity_kva",
    "fuel_tank_l", "battery_bank_ah", "battery_voltage_v", "solar_kwp", "rectifier_capacity_kw",
    "dg_start_delay_s",
)
TENANT_FIELDS: tuple[str, ...] = ("name",)
TENANCY_FIELDS: tuple[str, ...] = (
    "sla_availability_target", "dc_voltage_min_v", "dc_voltage_max_v", "monthly_fee_minor", "currency_code",
)
WINDOW_FIELDS: tuple[str, ...] = ("start_time", "end_time", "category", "tenant_ids", "description")

_SITE_TENANTS = ("ARRAY(SELECT tn.tenant_id FROM sites.tenancies tn WHERE tn.site_id = s.id "
                 "ORDER BY tn.tenant_id) AS tenant_ids")
_SITE_SCOPE = ("($%d::text IS NULL OR EXISTS (SELECT 1 FROM sites.tenancies sc "
               "WHERE sc.site_id = s.id AND sc.tenant_id = $%d))")
_WINDOW_SCOPE = ("($%d::text IS NULL OR (EXISTS (SELECT 1 FROM sites.tenancies sc "
                 "WHERE sc.site_id = w.site_id AND sc.tenant_id = $%d) "
                 "AND (cardinality(w.tenant_ids) = 0 OR $%d = ANY (w.tenant_ids))))")


def _row(record: asyncpg.Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    out = dict(record)
    for k, v in out.items():
        if isinstance(v, uuid.UUID):
            out[k] = str(v)
    return out


def _rows(records: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    return [_row(r) for r in records]  # type: ignore[misc]


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


def _set_clause(fields: Sequence[str], allowed: Sequence[str], start: int) -> str:
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise ValueError(f"not updatable: {bad}")
    sets = [f"{f} = ${i}" for i, f in enumerate(fields, start)]
    sets.append("update_time = now()")
    return ", ".join(sets)


# ---------------------------------------------------------------------------------------------
# sites


@_refused()
async def get_site(conn: asyncpg.Connection, *, site_id: str, tenant: str | None = None,
                   for_update: bool = False) -> dict[str, Any] | None:
    lock = " FOR UPDATE OF s" if for_update else ""
    return _row(await conn.fetchrow(
        f"SELECT s.*, {_SITE_TENANTS} FROM sites.sites s WHERE s.id = $1 AND {_SITE_SCOPE % (2, 2)}{lock}",
        site_id, tenant))


@_refused()
async def site_tenants(conn: asyncpg.Connection, *, site_id: str) -> list[str]:
    rows = await conn.fetch("SELECT tenant_id FROM sites.tenancies WHERE site_id = $1 ORDER BY tenant_id",
                            site_id)
    return [r["tenant_id"] for r in rows]


@_refused()
async def create_site(conn: asyncpg.Connection, *, row: Mapping[str, Any]) -> dict[str, Any]:
    cols = ("id", *SITE_FIELDS)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    rec = await conn.fetchrow(
        f"INSERT INTO sites.sites ({', '.join(cols)}) VALUES ({params}) "
        f"RETURNING *, ARRAY[]::text[] AS tenant_ids",
        *(row[c] for c in cols))
    return _row(rec)  # type: ignore[return-value]


@_refused()
async def update_site(conn: asyncpg.Connection, *, site_id: str, values: Mapping[str, Any]
                      ) -> dict[str, Any] | None:
    fields = list(values)
    rec = await conn.fetchrow(
        f"UPDATE sites.sites s SET {_set_clause(fields, SITE_FIELDS, 2)} WHERE s.id = $1 "
        f"RETURNING s.*, {_SITE_TENANTS}",
        site_id, *(values[f] for f in fields))
    return _row(rec)


@_refused(on_delete=True)
async def delete_site(conn: asyncpg.Connection, *, site_id: str) -> bool:
    """Delete a site; its tenancies and windows go with it (ON DELETE CASCADE)."""
    return await conn.fetchval("DELETE FROM sites.sites WHERE id = $1 RETURNING true", site_id) is True


@_refused()
async def list_sites(
    conn: asyncpg.Connection,
    *,
    tenant: str | None = None,
    region: str = "",
    tenant_id: str = "",
    status: str = "",
    query: str = "",
    bbox: tuple[float, float, float, float] | None = None,
    after: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Sites ordered by id. `bbox` is (south, west, north, east); west > east crosses the
    antimeridian. `query` matches a case-insensitive substring of id or name."""
    where = [_SITE_SCOPE % (1, 1)]
    args: list[Any] = [tenant]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if region:
        where.append(f"s.region = {arg(region)}")
    if status:
        where.append(f"s.status = {arg(status)}")
    if tenant_id:
        where.append(f"EXISTS (SELECT 1 FROM sites.tenancies ft WHERE ft.site_id = s.id "
                     f"AND ft.tenant_id = {arg(tenant_id)})")
    if query:
        pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        p = arg(pattern)
        where.append(f"(lower(s.id) LIKE {p} OR lower(s.name) LIKE {p})")
    if bbox is not None:
        south, west, north, east = bbox
        where.append(f"s.latitude BETWEEN {arg(south)} AND {arg(north)}")
        if west <= east:
            where.append(f"s.longitude BETWEEN {arg(west)} AND {arg(east)}")
        else:
            where.append(f"(s.longitude >= {arg(west)} OR s.longitude <= {arg(east)})")
    if after is not None:
        where.append(f"s.id > {arg(after)}")
    sql = (f"SELECT s.*, {_SITE_TENANTS} FROM sites.sites s WHERE {' AND '.join(where)} "
           f"ORDER BY s.id LIMIT {arg(limit + 1)}")
    return _rows(await conn.fetch(sql, *args))


# ---------------------------------------------------------------------------------------------
# tenants


@_refused()
async def get_tenant(conn: asyncpg.Connection, *, tenant_id: str, tenant: str | None = None,
                     for_update: bool = False) -> dict[str, Any] | None:
    lock = " FOR UPDATE" if for_update else ""
    return _row(await conn.fetchrow(
        f"SELECT * FROM sites.tenants WHERE id = $1 AND ($2::text IS NULL OR id = $2){lock}",
        tenant_id, tenant))


@_refused()
async def create_tenant(conn: asyncpg.Connection, *, row: Mapping[str, Any]) -> dict[str, Any]:
    return _row(await conn.fetchrow(  # type: ignore[return-value]
        "INSERT INTO sites.tenants (id, name) VALUES ($1, $2) RETURNING *", row["id"], row["name"]))


@_refused()
async def update_tenant(conn: asyncpg.Connection, *, tenant_id: str, values: Mapping[str, Any]
                        ) -> dict[str, Any] | None:
    fields = list(values)
    return _row(await conn.fetchrow(
        f"UPDATE sites.tenants SET {_set_clause(fields, TENANT_FIELDS, 2)} WHERE id = $1 RETURNING *",
        tenant_id, *(values[f] for f in fields)))


@_refused(on_delete=True)
async def delete_tenant(conn: asyncpg.Connection, *, tenant_id: str) -> bool:
    """Raises StillReferenced while the tenant still has tenancies."""
    return await conn.fetchval("DELETE FROM sites.tenants WHERE id = $1 RETURNING true", tenant_id) is True


@_refused()
async def list_tenants(conn: asyncpg.Connection, *, tenant: str | None = None, after: str | None = None,
                       limit: int = 50) -> list[dict[str, Any]]:
    return _rows(await conn.fetch(
        "SELECT * FROM sites.tenants WHERE ($1::text IS NULL OR id = $1) "
        "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
        tenant, after, limit + 1))


# ---------------------------------------------------------------------------------------------
# tenancies


@_refused()
async def get_tenancy(conn: asyncpg.Connection, *, tenancy_id: str, tenant: str | None = None,
                      for_update: bool = False) -> dict[str, Any] | None:
    key = _uuid(tenancy_id)
    if key is None:
        return None
    lock = " FOR UPDATE" if for_update else ""
    return _row(await conn.fetchrow(
        f"SELECT * FROM sites.tenancies WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2){lock}",
        key, tenant))


@_refused()
async def create_tenancy(conn: asyncpg.Connection, *, row: Mapping[str, Any]) -> dict[str, Any]:
    """Raises Duplicate for a second tenancy of a tenant on a site and MissingReference for an
    unknown site or tenant."""
    cols = ("site_id", "tenant_id", *TENANCY_FIELDS)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return _row(await conn.fetchrow(  # type: ignore[return-value]
        f"INSERT INTO sites.tenancies ({', '.join(cols)}) VALUES ({params}) RETURNING *",
        *(row[c] for c in cols)))


@_refused()
async def update_tenancy(conn: asyncpg.Connection, *, tenancy_id: str, values: Mapping[str, Any]
                         ) -> dict[str, Any] | None:
    key = _uuid(tenancy_id)
    if key is None:
        return None
    fields = list(values)
    return _row(await conn.fetchrow(
        f"UPDATE sites.tenancies SET {_set_clause(fields, TENANCY_FIELDS, 2)} WHERE id = $1 RETURNING *",
        key, *(values[f] for f in fields)))


@_refused(on_delete=True)
async def delete_tenancy(conn: asyncpg.Connection, *, tenancy_id: str) -> bool:
    key = _uuid(tenancy_id)
    if key is None:
        return False
    return await conn.fetchval("DELETE FROM sites.tenancies WHERE id = $1 RETURNING true", key) is True


@_refused()
async def list_tenancies(conn: asyncpg.Connection, *, tenant: str | None = None, site_id: str = "",
                         tenant_id: str = "", after: Sequence[str] | None = None, limit: int = 50
                         ) -> list[dict[str, Any]]:
    """Tenancies ordered by (site_id, tenant_id); a tenant sees only its own."""
    after_site, after_tenant = (after[0], after[1]) if after else (None, None)
    return _rows(await conn.fetch(
        "SELECT * FROM sites.tenancies WHERE ($1::text IS NULL OR tenant_id = $1) "
        "AND ($2 = '' OR site_id = $2) AND ($3 = '' OR tenant_id = $3) "
        "AND ($4::text IS NULL OR (site_id, tenant_id) > ($4, $5::text)) "
        "ORDER BY site_id, tenant_id LIMIT $6",
        tenant, site_id, tenant_id, after_site, after_tenant, limit + 1))


# ---------------------------------------------------------------------------------------------
# calendar windows


@_refused()
async def get_window(conn: asyncpg.Connection, *, window_id: str, tenant: str | None = None,
                     for_update: bool = False) -> dict[str, Any] | None:
    key = _uuid(window_id)
    if key is None:
        return None
    lock = " FOR UPDATE" if for_update else ""
    return _row(await conn.fetchrow(
        f"SELECT w.* FROM sites.windows w WHERE w.id = $1 AND {_WINDOW_SCOPE % (2, 2, 2)}{lock}",
        key, tenant))


@_refused()
async def create_window(conn: asyncpg.Connection, *, row: Mapping[str, Any]) -> dict[str, Any]:
    cols = ("site_id", *WINDOW_FIELDS, "created_by")
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return _row(await conn.fetchrow(  # type: ignore[return-value]
        f"INSERT INTO sites.windows ({', '.join(cols)}) VALUES ({params}) RETURNING *",
        *(row[c] for c in cols)))


@_refused()
async def update_window(conn: asyncpg.Connection, *, window_id: str, values: Mapping[str, Any]
                        ) -> dict[str, Any] | None:
    key = _uuid(window_id)
    if key is None:
        return None
    fields = list(values)
    return _row(await conn.fetchrow(
        f"UPDATE sites.windows SET {_set_clause(fields, WINDOW_FIELDS, 2)} WHERE id = $1 RETURNING *",
        key, *(values[f] for f in fields)))


@_refused(on_delete=True)
async def delete_window(conn: asyncpg.Connection, *, window_id: str) -> bool:
    key = _uuid(window_id)
    if key is None:
        return False
    return await conn.fetchval("DELETE FROM sites.windows WHERE id = $1 RETURNING true", key) is True


@_refused()
async def list_windows(
    conn: asyncpg.Connection,
    *,
    tenant: str | None = None,
    site_id: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    category: str = "",
    after: Sequence[Any] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Windows ordered by (start_time, id) that overlap [start, end) when given."""
    where = [_WINDOW_SCOPE % (1, 1, 1)]
    args: list[Any] = [tenant]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if site_id:
        where.append(f"w.site_id = {arg(site_id)}")
    if category:
        where.append(f"w.category = {arg(category)}")
    if start is not None:
        where.append(f"w.end_time > {arg(start)}")
    if end is not None:
        where.append(f"w.start_time < {arg(end)}")
    if after is not None:
        after_id = _uuid(str(after[1])) or uuid.UUID(int=0)
        where.append(f"(w.start_time, w.id) > ({arg(after[0])}::timestamptz, {arg(after_id)}::uuid)")
    sql = (f"SELECT w.* FROM sites.windows w WHERE {' AND '.join(where)} "
           f"ORDER BY w.start_time, w.id LIMIT {arg(limit + 1)}")
    return _rows(await conn.fetch(sql, *args))
