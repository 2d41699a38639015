"""SQL of the Notifications service over the notifications schema (keyword-only functions). The
notifier worker has its own store over the same tables (one domain, two processes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

CONFIG_TABLES = {"route": "notifications.route", "policy": "notifications.escalation_policy",
                 "schedule": "notifications.schedule"}


# ------------------------------------------------------------------------------------ channels


async def insert_channel(conn: asyncpg.Connection, *, tenant_id: str, name: str, kind: int, webhook_url: str,
                         signing_secret: str, email_address: str) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO notifications.channel (id, tenant_id, name, kind, webhook_url, signing_secret, email_address)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        uuid.uuid4(), tenant_id, name, kind, webhook_url, signing_secret, email_address)


async def get_channel(conn: asyncpg.Connection, *, channel_id: uuid.UUID, tenant: str | None,
                      for_update: bool = False) -> asyncpg.Record | None:
    """The channel, if visible to `tenant` (None: every tenant's and the internal ones)."""
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT * FROM notifications.channel WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2){lock}",
        channel_id, tenant)


CHANNEL_COLUMNS = ("name", "webhook_url", "signing_secret", "email_address")  # what an update may set


async def update_channel(conn: asyncpg.Connection, *, channel_id: uuid.UUID, values: dict[str, Any]
                         ) -> asyncpg.Record | None:
    """Set the given columns (of CHANNEL_COLUMNS) of a channel; the row after, None if it is gone."""
    names = [c for c in CHANNEL_COLUMNS if c in values]
    if set(values) - set(names):
        raise ValueError(f"not updatable: {sorted(set(values) - set(names))}")
    if not names:
        return await conn.fetchrow("SELECT * FROM notifications.channel WHERE id = $1", channel_id)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(names, start=2))
    return await conn.fetchrow(f"UPDATE notifications.channel SET {sets} WHERE id = $1 RETURNING *",
                               channel_id, *(values[c] for c in names))


async def list_channels(conn: asyncpg.Connection, *, tenant: str | None, offset: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM notifications.channel WHERE ($1::text IS NULL OR tenant_id = $1)"
        " ORDER BY name, id OFFSET $2 LIMIT $3", tenant, offset, limit)


async def existing_channels(conn: asyncpg.Connection, *, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT id FROM notifications.channel WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


async def delete_channel(conn: asyncpg.Connection, *, channel_id: uuid.UUID) -> bool:
    return (await conn.execute("DELETE FROM notifications.channel WHERE id = $1", channel_id)) != "DELETE 0"


# ------------------------------------------------------------------ routes, policies, schedules


async def insert_config(conn: asyncpg.Connection, *, table: str, row_id: uuid.UUID, name: str, body: bytes,
                        position: int | None = None) -> asyncpg.Record:
    t = CONFIG_TABLES[table]
    if table == "route":
        return await conn.fetchrow(f"INSERT INTO {t} (id, name, body, position) VALUES ($1, $2, $3, $4) RETURNING *",
                                   row_id, name, body, position or 0)
    return await conn.fetchrow(f"INSERT INTO {t} (id, name, body) VALUES ($1, $2, $3) RETURNING *", row_id, name, body)


async def get_config(conn: asyncpg.Connection, *, table: str, row_id: uuid.UUID, for_update: bool = False
                     ) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM {CONFIG_TABLES[table]} WHERE id = $1{lock}", row_id)


async def list_config(conn: asyncpg.Connection, *, table: str, offset: int, limit: int) -> list[asyncpg.Record]:
    order = "position, create_time, id" if table == "route" else "name, id"
    return await conn.fetch(f"SELECT * FROM {CONFIG_TABLES[table]} ORDER BY {order} OFFSET $1 LIMIT $2", offset, limit)


async def update_config_body(conn: asyncpg.Connection, *, table: str, row_id: uuid.UUID, body: bytes) -> None:
    await conn.execute(f"UPDATE {CONFIG_TABLES[table]} SET body = $2 WHERE id = $1", row_id, body)


async def update_config(conn: asyncpg.Connection, *, table: str, row_id: uuid.UUID, name: str, body: bytes,
                        position: int | None = None) -> asyncpg.Record | None:
    """Replace a route's, policy's or schedule's message (and the columns copied from it: its
    name, a route's position); the row after, None if it is gone."""
    t = CONFIG_TABLES[table]
    if table == "route":
        return await conn.fetchrow(f"UPDATE {t} SET name = $2, body = $3, position = $4 WHERE id = $1 RETURNING *",
                                   row_id, name, body, position or 0)
    return await conn.fetchrow(f"UPDATE {t} SET name = $2, body = $3 WHERE id = $1 RETURNING *", row_id, name, body)


async def delete_config(conn: asyncpg.Connection, *, table: str, row_id: uuid.UUID) -> bool:
    done = await conn.execute(f"DELETE FROM {CONFIG_TABLES[table]} WHERE id = $1", row_id)
    if table == "policy" and done != "DELETE 0":  # its running escalations stop
        await conn.execute("UPDATE notifications.escalation SET state = 2, due = NULL WHERE policy_id = $1 AND state = 1",
                           row_id)
    return done != "DELETE 0"


async def existing_config(conn: asyncpg.Connection, *, table: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch(f"SELECT id FROM {CONFIG_TABLES[table]} WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


# ------------------------------------------------------------------------------------ silences


async def insert_silence(conn: asyncpg.Connection, *, row_id: uuid.UUID, body: bytes, start: datetime,
                         end: datetime) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO notifications.silence (id, body, start_time, end_time) VALUES ($1, $2, $3, $4) RETURNING *",
        row_id, body, start, end)


async def get_silence(conn: asyncpg.Connection, *, silence_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM notifications.silence WHERE id = $1", silence_id)


async def list_silences(conn: asyncpg.Connection, *, active_only: bool, offset: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM notifications.silence WHERE NOT $1 OR (start_time <= now() AND end_time > now())"
        " ORDER BY create_time DESC, id DESC OFFSET $2 LIMIT $3", active_only, offset, limit)


async def expire_silence(conn: asyncpg.Connection, *, silence_id: uuid.UUID, body: bytes, end: datetime) -> asyncpg.Record:
    return await conn.fetchrow(
        "UPDATE notifications.silence SET end_time = $2, body = $3 WHERE id = $1 RETURNING *", silence_id, end, body)


# ------------------------------------------------------------------------------- notifications


async def list_notifications(conn: asyncpg.Connection, *, tenant: str | None, channel_id: uuid.UUID | None,
                             incident_id: str, state: int, offset: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM notifications.notification"
        " WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR channel_id = $2)"
        " AND ($3 = '' OR incident_ids @> ARRAY[$3]::text[]) AND ($4 = 0 OR state = $4)"
        " ORDER BY create_time DESC, id DESC OFFSET $5 LIMIT $6",
        tenant, channel_id, incident_id, state, offset, limit)


async def get_notification(conn: asyncpg.Connection, *, notification_id: uuid.UUID, tenant: str | None
                           ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM notifications.notification WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        notification_id, tenant)


async def attempts(conn: asyncpg.Connection, *, notification_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM notifications.delivery_attempt WHERE notification_id = $1 ORDER BY attempt",
                            notification_id)


async def insert_notification(conn: asyncpg.Connection, **row: Any) -> asyncpg.Record:
    """A notification to be delivered by the notifier (TestSend), and a NOTIFY that wakes it."""
    rec = await conn.fetchrow(
        "INSERT INTO notifications.notification (id, channel_id, tenant_id, kind, summary, payload)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING *",
        row["id"], row["channel_id"], row["tenant_id"], row["kind"], row["summary"], row["payload"])
    await conn.execute("SELECT pg_notify('notifications_due', '')")
    return rec
