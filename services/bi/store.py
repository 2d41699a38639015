"""SQL of the bi schema (asyncpg). Keyword-only functions; tenant scoping is the caller's
`tenant` argument: None for staff (every tenant), else only that tenant's rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

RULE_COLUMNS = ("tenant_id, version, effective_month, bands, cap_percent, incident_min_minutes, "
                "incident_percent, description, created_by, create_time")


def _bands(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    raw = out["bands"]
    out["bands"] = json.loads(raw) if isinstance(raw, str) else raw
    return out


async def insert_rule_set(conn: asyncpg.Connection, *, tenant_id: str, effective_month: str,
                          bands: Sequence[Mapping[str, float]], cap_percent: float, incident_min_minutes: int,
                          incident_percent: float, description: str, created_by: str) -> dict[str, Any]:
    """Store the next version of a tenant's rules (versions are serialised by a row lock on the
    tenant's advisory key, so two writers never take the same number)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bi.penalty_rule_set:' || $1))", tenant_id)
    row = await conn.fetchrow(
        f"INSERT INTO bi.penalty_rule_set ({RULE_COLUMNS}) "
        "SELECT $1, COALESCE(max(version), 0) + 1, $2, $3::jsonb, $4, $5, $6, $7, $8, now() "
        f"FROM bi.penalty_rule_set WHERE tenant_id = $1 RETURNING {RULE_COLUMNS}",
        tenant_id, effective_month, json.dumps(list(bands)), cap_percent, incident_min_minutes,
        incident_percent, description, created_by)
    return _bands(row)


async def get_rule_set(conn: asyncpg.Connection, *, tenant_id: str, version: int,
                       tenant: str | None) -> dict[str, Any] | None:
    """One version (0: the latest) of a tenant's rules, if the caller's scope includes it."""
    row = await conn.fetchrow(
        f"SELECT {RULE_COLUMNS} FROM bi.penalty_rule_set WHERE tenant_id = $1 "
        "AND ($2::int = 0 OR version = $2) AND ($3::text IS NULL OR tenant_id = $3) "
        "ORDER BY version DESC LIMIT 1", tenant_id, version, tenant)
    return _bands(row) if row else None


async def list_rule_sets(conn: asyncpg.Connection, *, tenant_id: str, tenant: str | None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {RULE_COLUMNS} FROM bi.penalty_rule_set WHERE tenant_id = $1 "
        "AND ($2::text IS NULL OR tenant_id = $2) ORDER BY version DESC", tenant_id, tenant)
    return [_bands(r) for r in rows]


async def closed_month(conn: asyncpg.Connection, *, tenant_id: str, month: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tenant_id, month, statement, closed_by, close_time FROM bi.closed_month "
        "WHERE tenant_id = $1 AND month = $2", tenant_id, month)


async def insert_closed_month(conn: asyncpg.Connection, *, tenant_id: str, month: str, statement: bytes,
                              closed_by: str) -> asyncpg.Record | None:
    """Freeze a month; None when it was already closed (the first close wins)."""
    return await conn.fetchrow(
        "INSERT INTO bi.closed_month (tenant_id, month, statement, closed_by) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (tenant_id, month) DO NOTHING RETURNING close_time",
        tenant_id, month, statement, closed_by)


async def list_recommendations(conn: asyncpg.Connection, *, kind: int, region: str, limit: int) -> list[dict[str, Any]]:
    """Largest saving first; refuels by due date."""
    rows = await conn.fetch(
        "SELECT kind, site_id, region, title, evidence, saving_minor, currency, due_date, run, compute_time "
        "FROM bi.recommendation WHERE ($1 = 0 OR kind = $1) AND ($2 = '' OR region = $2) "
        "ORDER BY saving_minor DESC, due_date, kind, site_id LIMIT $3", kind, region, limit)
    out = []
    for r in rows:
        d = dict(r)
        d["evidence"] = json.loads(d["evidence"]) if isinstance(d["evidence"], str) else d["evidence"]
        out.append(d)
    return out


# --------------------------------------------------------------------------- energy tariffs

TARIFF_COLUMNS = ("scope, name, grid_price_minor_per_kwh, fuel_price_minor_per_l, grid_kg_co2e_per_kwh, "
                  "description, updated_by, update_time")


async def upsert_tariff(conn: asyncpg.Connection, *, scope: str, name: str, grid_price: float | None,
                        fuel_price: float | None, grid_factor: float | None, description: str,
                        updated_by: str) -> asyncpg.Record:
    """Set a region's or a site's override (replacing any earlier one)."""
    return await conn.fetchrow(
        f"INSERT INTO bi.energy_tariff ({TARIFF_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) "
        "ON CONFLICT (scope, name) DO UPDATE SET grid_price_minor_per_kwh = EXCLUDED.grid_price_minor_per_kwh, "
        "fuel_price_minor_per_l = EXCLUDED.fuel_price_minor_per_l, grid_kg_co2e_per_kwh = EXCLUDED.grid_kg_co2e_per_kwh, "
        "description = EXCLUDED.description, updated_by = EXCLUDED.updated_by, update_time = now() "
        f"RETURNING {TARIFF_COLUMNS}", scope, name, grid_price, fuel_price, grid_factor, description, updated_by)


async def list_tariffs(conn: asyncpg.Connection, *, regions: Sequence[str] | None = None,
                       sites: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """Overrides, regions first then sites, by name; `regions` / `sites` limit each kind (None: all)."""
    return await conn.fetch(
        f"SELECT {TARIFF_COLUMNS} FROM bi.energy_tariff WHERE "
        "(scope = 'region' AND ($1::text[] IS NULL OR name = ANY($1::text[]))) OR "
        "(scope = 'site' AND ($2::text[] IS NULL OR name = ANY($2::text[]))) ORDER BY scope, name",
        None if regions is None else list(regions), None if sites is None else list(sites))


async def delete_tariff(conn: asyncpg.Connection, *, scope: str, name: str) -> bool:
    return await conn.fetchval("DELETE FROM bi.energy_tariff WHERE scope = $1 AND name = $2 RETURNING true",
                               scope, name) is True
