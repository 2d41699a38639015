"""SQL of the AIOps service: reads of the aiops schema the aiops_engine writes, and feedback.

Tenant scoping: every read takes `tenant` (None only for towerco staff); an anomaly is visible to
a tenant when its site was leased by that tenant when the row was written (`tenant_ids`) and it is
not another tenant's own (`tenant_id`: a tenant's link on a shared site) - domain.visible's rule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from mesh import outbox


def _where(filters: list[str], args: list[Any], sql: str, value: Any) -> None:
    args.append(value)
    filters.append(sql.replace("$?", f"${len(args)}"))


async def list_anomalies(conn: asyncpg.Connection, *, tenant: str | None, site_id: str = "", region: str = "",
                         tenant_id: str = "", detector: str = "", min_severity: int = 0, state: int = 0,
                         start_from: datetime | None = None, start_to: datetime | None = None,
                         after: tuple[datetime, str] | None = None, limit: int) -> list[asyncpg.Record]:
    """Newest first (start_time, id); `after` is the last row of the previous page."""
    f: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        _where(f, args, "$? = ANY(tenant_ids)", tenant)
        _where(f, args, "tenant_id IN ('', $?)", tenant)
    if site_id:
        _where(f, args, "site_id = $?", site_id)
    if region:
        _where(f, args, "region = $?", region)
    if tenant_id:
        _where(f, args, "$? = ANY(tenant_ids)", tenant_id)
    if detector:
        _where(f, args, "detector = $?", detector)
    if min_severity:
        _where(f, args, "severity >= $?", min_severity)
    if state:
        _where(f, args, "state = $?", state)
    if start_from is not None:
        _where(f, args, "start_time >= $?", start_from)
    if start_to is not None:
        _where(f, args, "start_time < $?", start_to)
    if after is not None:
        args += [after[0], after[1]]
        f.append(f"(start_time, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit)
    where = ("WHERE " + " AND ".join(f)) if f else ""
    return await conn.fetch(f"SELECT * FROM aiops.anomaly {where} ORDER BY start_time DESC, id DESC "
                            f"LIMIT ${len(args)}", *args)


async def get_anomaly(conn: asyncpg.Connection, *, tenant: str | None, anomaly_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM aiops.anomaly WHERE id = $1::uuid "
        "AND ($2::text IS NULL OR ($2 = ANY(tenant_ids) AND tenant_id IN ('', $2)))",
        anomaly_id, tenant)


async def list_predictions(conn: asyncpg.Connection, *, tenant: str | None, site_id: str = "", region: str = "",
                           tenant_id: str = "", kind: int = 0, outcome: int = 0, start_from: datetime | None = None,
                           start_to: datetime | None = None, after: tuple[datetime, str] | None = None,
                           limit: int) -> list[asyncpg.Record]:
    f: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        _where(f, args, "$? = ANY(tenant_ids)", tenant)
    if site_id:
        _where(f, args, "site_id = $?", site_id)
    if region:
        _where(f, args, "region = $?", region)
    if tenant_id:
        _where(f, args, "$? = ANY(tenant_ids)", tenant_id)
    if kind:
        _where(f, args, "kind = $?", kind)
    if outcome:
        _where(f, args, "outcome = $?", outcome)
    if start_from is not None:
        _where(f, args, "predict_time >= $?", start_from)
    if start_to is not None:
        _where(f, args, "predict_time < $?", start_to)
    if after is not None:
        args += [after[0], after[1]]
        f.append(f"(predict_time, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit)
    where = ("WHERE " + " AND ".join(f)) if f else ""
    return await conn.fetch(f"SELECT * FROM aiops.prediction {where} ORDER BY predict_time DESC, id DESC "
                            f"LIMIT ${len(args)}", *args)


async def get_prediction(conn: asyncpg.Connection, *, tenant: str | None, prediction_id: str
                         ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM aiops.prediction WHERE id = $1::uuid AND ($2::text IS NULL OR $2 = ANY(tenant_ids))",
        prediction_id, tenant)


async def detector_counts(conn: asyncpg.Connection, *, tenant: str | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT detector, min(detector_version) AS version, count(*) FILTER (WHERE state = 1) AS open, "
        "count(*) AS total FROM aiops.anomaly "
        "WHERE $1::text IS NULL OR ($1 = ANY(tenant_ids) AND tenant_id IN ('', $1)) GROUP BY detector",
        tenant)


async def models(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT DISTINCT ON (site_class) site_class, version, algorithm, features, samples, trained_at "
        "FROM aiops.model ORDER BY site_class, version DESC")


async def engine_summary(conn: asyncpg.Connection, *, tenant: str | None) -> asyncpg.Record:
    """Sites with detector state (a tenant: the sites it leases) and their newest sample."""
    return await conn.fetchrow(
        "SELECT count(*) AS sites, max(last_sample) AS latest FROM aiops.site_state s WHERE $1::text IS NULL "
        "OR EXISTS (SELECT 1 FROM aiops.tenancy t WHERE t.site_id = s.site_id AND t.tenant_id = $1)", tenant)


async def record_feedback(conn: asyncpg.Connection, *, anomaly_id: str, kind: int, note: str, subject: str
                          ) -> asyncpg.Record:
    """Store the feedback and put it on the anomaly; returns the updated anomaly row."""
    await conn.execute("INSERT INTO aiops.feedback (anomaly_id, kind, note, subject) VALUES ($1::uuid, $2, $3, $4)",
                       anomaly_id, kind, note, subject)
    return await conn.fetchrow(
        "UPDATE aiops.anomaly SET feedback = $2, feedback_note = $3, update_time = now() WHERE id = $1::uuid "
        "RETURNING *", anomaly_id, kind, note)


async def get_adjustment(conn: asyncpg.Connection, *, site_id: str, key: str) -> tuple[float, bool]:
    row = await conn.fetchrow("SELECT factor, suppressed FROM aiops.adjustment WHERE site_id = $1 AND key = $2 "
                              "FOR UPDATE", site_id, key)
    return (1.0, False) if row is None else (float(row["factor"]), bool(row["suppressed"]))


async def set_adjustment(conn: asyncpg.Connection, *, site_id: str, key: str, factor: float, suppressed: bool
                         ) -> None:
    await conn.execute(
        "INSERT INTO aiops.adjustment (site_id, key, factor, suppressed) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (site_id, key) DO UPDATE SET factor = $3, suppressed = $4, update_time = now()",
        site_id, key, factor, suppressed)


def is_uuid_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.DataError)


async def outbox_since(conn: asyncpg.Connection, *, after_id: int, limit: int) -> Sequence[tuple[int, Any]]:
    return await outbox.read_since(conn, schema="aiops", after_id=after_id, limit=limit)
