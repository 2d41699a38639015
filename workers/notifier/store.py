"""SQL of the notifier over the notifications schema (the schema is the Notifications domain's,
created by services/notifications/migrations). Keyword-only functions; every timer is a row with
a due time, claimed with FOR UPDATE SKIP LOCKED so replicas never run one twice."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

WAKE_CHANNEL = "notifications_due"


# ------------------------------------------------------------------------------ configuration


async def routes(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, body, create_time FROM notifications.route ORDER BY position, create_time, id")


async def route(conn: asyncpg.Connection, *, route_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, body, create_time FROM notifications.route WHERE id = $1", route_id)


async def policy(conn: asyncpg.Connection, *, policy_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, body FROM notifications.escalation_policy WHERE id = $1", policy_id)


async def schedule(conn: asyncpg.Connection, *, schedule_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, body FROM notifications.schedule WHERE id = $1", schedule_id)


async def channels(conn: asyncpg.Connection, *, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM notifications.channel WHERE id = ANY($1::uuid[]) ORDER BY id", ids)


async def channel(conn: asyncpg.Connection, *, channel_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM notifications.channel WHERE id = $1", channel_id)


async def active_silences(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, body, start_time, end_time FROM notifications.silence "
                            "WHERE end_time > now() AND start_time <= now()")


# ---------------------------------------------------------------------------------- incidents


async def record_event(conn: asyncpg.Connection, *, event_id: str, incident_id: str, body: bytes,
                       update_time: datetime) -> str:
    """One round trip: record the event id and keep the incident's newest copy. "duplicate" (the
    event was processed before), "stale" (the stored copy is newer) or "applied"."""
    row = await conn.fetchrow(
        "WITH p AS (INSERT INTO notifications.processed_event (event_id) VALUES ($1) ON CONFLICT DO NOTHING"
        " RETURNING 1), i AS (INSERT INTO notifications.incident (id, body, update_time)"
        " SELECT $2, $3, $4 WHERE EXISTS (SELECT 1 FROM p)"
        " ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body, update_time = EXCLUDED.update_time"
        " WHERE notifications.incident.update_time <= EXCLUDED.update_time RETURNING 1)"
        " SELECT EXISTS (SELECT 1 FROM p) AS fresh, EXISTS (SELECT 1 FROM i) AS applied",
        event_id, incident_id, body, update_time)
    if not row["fresh"]:
        return "duplicate"
    return "applied" if row["applied"] else "stale"


async def incidents(conn: asyncpg.Connection, *, ids: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, body FROM notifications.incident WHERE id = ANY($1::text[])", ids)


async def incident(conn: asyncpg.Connection, *, incident_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, body FROM notifications.incident WHERE id = $1", incident_id)


# ------------------------------------------------------------------------------------- groups


async def lock_group(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM notifications.alert_group WHERE route_id = $1 AND group_key = $2"
                               " FOR UPDATE", route_id, group_key)


async def lock_group_and_member(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str,
                                incident_id: str) -> asyncpg.Record | None:
    """The group (locked) with `member_firing`: the incident's membership (NULL: not a member).
    None when the group does not exist (nor, then, its members)."""
    return await conn.fetchrow(
        "SELECT g.*, (SELECT m.firing FROM notifications.group_member m WHERE m.route_id = g.route_id"
        " AND m.group_key = g.group_key AND m.incident_id = $3) AS member_firing"
        " FROM notifications.alert_group g WHERE g.route_id = $1 AND g.group_key = $2 FOR UPDATE OF g",
        route_id, group_key, incident_id)


async def join_group(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str, incident_id: str,
                     created: datetime, flushed: datetime | None, sent: datetime | None, changed: bool,
                     firing: bool, next_flush: datetime | None) -> None:
    """One round trip: the incident is a firing member, and the group's timers are saved."""
    await conn.execute(
        "WITH m AS (INSERT INTO notifications.group_member (route_id, group_key, incident_id, firing)"
        " VALUES ($1, $2, $3, true) ON CONFLICT (route_id, group_key, incident_id) DO UPDATE SET firing = true)"
        " INSERT INTO notifications.alert_group (route_id, group_key, created, flushed, sent, changed, firing,"
        " next_flush) VALUES ($1, $2, $4, $5, $6, $7, $8, $9) ON CONFLICT (route_id, group_key) DO UPDATE SET"
        " flushed = EXCLUDED.flushed, sent = EXCLUDED.sent, changed = EXCLUDED.changed, firing = EXCLUDED.firing,"
        " next_flush = EXCLUDED.next_flush",
        route_id, group_key, incident_id, created, flushed, sent, changed, firing, next_flush)


async def members_of(conn: asyncpg.Connection, *, keys: list[tuple[uuid.UUID, str]]) -> list[asyncpg.Record]:
    """The members of several groups at once."""
    return await conn.fetch(
        "SELECT m.route_id, m.group_key, m.incident_id, m.firing FROM notifications.group_member m"
        " JOIN unnest($1::uuid[], $2::text[]) AS k(route_id, group_key) USING (route_id, group_key)"
        " ORDER BY m.incident_id", [k[0] for k in keys], [k[1] for k in keys])


async def finish_groups(conn: asyncpg.Connection, *, deleted: list[tuple[uuid.UUID, str]],
                        dropped: list[tuple[uuid.UUID, str]], saved: list[tuple[Any, ...]]) -> None:
    """After a scheduler batch: groups done, resolved members told, timers moved (few round trips)."""
    if deleted:
        await conn.execute(
            "WITH k AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS k(route_id, group_key)),"
            " m AS (DELETE FROM notifications.group_member USING k WHERE group_member.route_id = k.route_id"
            " AND group_member.group_key = k.group_key)"
            " DELETE FROM notifications.alert_group USING k WHERE alert_group.route_id = k.route_id"
            " AND alert_group.group_key = k.group_key", [d[0] for d in deleted], [d[1] for d in deleted])
    if dropped:
        await conn.execute(
            "DELETE FROM notifications.group_member m USING unnest($1::uuid[], $2::text[]) AS k(route_id, group_key)"
            " WHERE m.route_id = k.route_id AND m.group_key = k.group_key AND NOT m.firing",
            [d[0] for d in dropped], [d[1] for d in dropped])
    if saved:
        await conn.executemany(
            "UPDATE notifications.alert_group SET flushed = $3, sent = $4, changed = false, firing = true,"
            " next_flush = $5 WHERE route_id = $1 AND group_key = $2", saved)


async def set_member(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str, incident_id: str,
                     firing: bool) -> None:
    await conn.execute(
        "INSERT INTO notifications.group_member (route_id, group_key, incident_id, firing) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (route_id, group_key, incident_id) DO UPDATE SET firing = EXCLUDED.firing",
        route_id, group_key, incident_id, firing)


async def members(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT incident_id, firing FROM notifications.group_member WHERE route_id = $1"
                            " AND group_key = $2 ORDER BY incident_id", route_id, group_key)


async def drop_resolved_members(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str) -> None:
    await conn.execute("DELETE FROM notifications.group_member WHERE route_id = $1 AND group_key = $2 AND NOT firing",
                       route_id, group_key)


async def save_group(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str, created: datetime,
                     flushed: datetime | None, sent: datetime | None, changed: bool, firing: bool,
                     next_flush: datetime | None) -> None:
    await conn.execute(
        "INSERT INTO notifications.alert_group (route_id, group_key, created, flushed, sent, changed, firing, next_flush)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (route_id, group_key) DO UPDATE SET"
        " flushed = EXCLUDED.flushed, sent = EXCLUDED.sent, changed = EXCLUDED.changed, firing = EXCLUDED.firing,"
        " next_flush = EXCLUDED.next_flush",
        route_id, group_key, created, flushed, sent, changed, firing, next_flush)


async def delete_group(conn: asyncpg.Connection, *, route_id: uuid.UUID, group_key: str) -> None:
    await conn.execute("DELETE FROM notifications.group_member WHERE route_id = $1 AND group_key = $2",
                       route_id, group_key)
    await conn.execute("DELETE FROM notifications.alert_group WHERE route_id = $1 AND group_key = $2",
                       route_id, group_key)


async def claim_due_groups(conn: asyncpg.Connection, *, limit: int) -> list[asyncpg.Record]:
    """Due groups, locked for this transaction (other replicas skip them)."""
    return await conn.fetch(
        "SELECT * FROM notifications.alert_group WHERE next_flush IS NOT NULL AND next_flush <= now()"
        " ORDER BY next_flush LIMIT $1 FOR UPDATE SKIP LOCKED", limit)


# -------------------------------------------------------------------------------- escalations


async def lock_escalation(conn: asyncpg.Connection, *, incident_id: str, route_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM notifications.escalation WHERE incident_id = $1 AND route_id = $2"
                               " FOR UPDATE", incident_id, route_id)


async def escalations_of(conn: asyncpg.Connection, *, incident_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM notifications.escalation WHERE incident_id = $1 FOR UPDATE", incident_id)


async def start_escalation(conn: asyncpg.Connection, *, incident_id: str, route_id: uuid.UUID,
                           policy_id: uuid.UUID, due: datetime) -> None:
    """A new (or restarted, after a reopen) escalation at its first step."""
    await conn.execute(
        "INSERT INTO notifications.escalation (incident_id, route_id, policy_id, step, round, due, state, paged)"
        " VALUES ($1, $2, $3, 0, 0, $4, 1, '{}') ON CONFLICT (incident_id, route_id) DO UPDATE SET"
        " policy_id = EXCLUDED.policy_id, step = 0, round = 0, due = EXCLUDED.due, state = 1, paged = '{}',"
        " update_time = now()", incident_id, route_id, policy_id, due)


async def save_escalation(conn: asyncpg.Connection, *, incident_id: str, route_id: uuid.UUID, step: int, rnd: int,
                          due: datetime | None, state: int, paged: list[uuid.UUID]) -> None:
    await conn.execute(
        "UPDATE notifications.escalation SET step = $3, round = $4, due = $5, state = $6, paged = $7,"
        " update_time = now() WHERE incident_id = $1 AND route_id = $2",
        incident_id, route_id, step, rnd, due, state, paged)


async def claim_due_escalations(conn: asyncpg.Connection, *, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM notifications.escalation WHERE due IS NOT NULL AND due <= now() AND state = 1"
        " ORDER BY due LIMIT $1 FOR UPDATE SKIP LOCKED", limit)


async def next_timer_in(conn: asyncpg.Connection) -> float | None:
    """Seconds until the earliest group or escalation timer (<= 0: due now; None: none set), for
    the scheduler's sleep between wake-ups."""
    return await conn.fetchval(
        "SELECT extract(epoch FROM min(t) - now())::float8 FROM (SELECT min(next_flush) AS t"
        " FROM notifications.alert_group UNION ALL SELECT min(due) FROM notifications.escalation"
        " WHERE state = 1) AS x")


async def next_delivery_in(conn: asyncpg.Connection) -> float | None:
    """Seconds until the earliest delivery is due: a pending notification (a retry's backoff) or
    a claimed one whose lease ends (its process died). For the sender's sleep."""
    return await conn.fetchval(
        "SELECT extract(epoch FROM min(t) - now())::float8 FROM (SELECT min(due) AS t"
        " FROM notifications.notification WHERE state = 1"
        " UNION ALL SELECT min(lease_until) FROM notifications.notification WHERE state = 2) AS x")


# ------------------------------------------------------------------------------ notifications


NOTIFICATION_INSERT = (
    "INSERT INTO notifications.notification (id, channel_id, tenant_id, kind, route_id, group_key, incident_ids,"
    " escalation_step, escalation_round, summary, payload, state, finish_time)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::smallint,"
    " CASE WHEN $12::smallint = 5 THEN now() END)")


def notification_args(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["id"], row["channel_id"], row["tenant_id"], row["kind"], row["route_id"], row["group_key"],
            row["incident_ids"], row.get("step", 0), row.get("round", 0), row["summary"], row["payload"],
            row.get("state", 1))


async def insert_notifications(conn: asyncpg.Connection, *, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.executemany(NOTIFICATION_INSERT, [notification_args(r) for r in rows])


async def insert_notification(conn: asyncpg.Connection, **row: Any) -> None:
    await conn.execute(
        "INSERT INTO notifications.notification (id, channel_id, tenant_id, kind, route_id, group_key, incident_ids,"
        " escalation_step, escalation_round, summary, payload, state, finish_time)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::smallint,"
        " CASE WHEN $12::smallint = 5 THEN now() END)",
        row["id"], row["channel_id"], row["tenant_id"], row["kind"], row["route_id"], row["group_key"],
        row["incident_ids"], row.get("step", 0), row.get("round", 0), row["summary"], row["payload"],
        row.get("state", 1))


async def claim_deliveries(conn: asyncpg.Connection, *, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Claim due notifications: pending ones whose time has come, and ones whose attempt was
    claimed by a process that died (lease over). Each claim counts an attempt and records it
    (notification, attempt) before anything is sent; one transaction. Each row comes with its
    channel (ch_kind NULL: the channel was deleted)."""
    rows = await conn.fetch(
        "WITH pending AS (SELECT id FROM notifications.notification WHERE state = 1 AND due <= now() ORDER BY due"
        " LIMIT $1 FOR UPDATE SKIP LOCKED),"
        " orphaned AS (SELECT id FROM notifications.notification WHERE state = 2 AND lease_until < now()"
        " LIMIT $1 FOR UPDATE SKIP LOCKED),"
        " claimed AS (UPDATE notifications.notification n SET state = 2, attempts = n.attempts + 1,"
        " lease_until = now() + make_interval(secs => $2)"
        " WHERE n.id IN (SELECT id FROM pending UNION SELECT id FROM orphaned) RETURNING n.*)"
        " SELECT claimed.*, c.kind AS ch_kind, c.webhook_url, c.signing_secret, c.email_address"
        " FROM claimed LEFT JOIN notifications.channel c ON c.id = claimed.channel_id", limit, lease_s)
    if rows:
        await conn.executemany(
            "INSERT INTO notifications.delivery_attempt (notification_id, attempt, start_time) VALUES ($1, $2, now())",
            [(r["id"], r["attempts"]) for r in rows])
    return rows


async def finish_attempt(conn: asyncpg.Connection, *, notification_id: uuid.UUID, attempt: int, ok: bool,
                         code: int, latency_ms: float, error: str, state: int, retry_in_s: float) -> bool:
    """Record an attempt's outcome and the notification's next state (delivered, pending again
    after `retry_in_s`, or dead), in one statement. False when the claim was lost (another
    process took it over after the lease ended)."""
    kept = await conn.fetchval(
        "WITH n AS (UPDATE notifications.notification SET state = $3::smallint, last_error = $4,"
        " due = CASE WHEN $3::smallint = 1 THEN now() + make_interval(secs => $5) ELSE due END,"
        " finish_time = CASE WHEN $3::smallint IN (3, 4) THEN now() END, lease_until = NULL"
        " WHERE id = $1 AND attempts = $2 AND state = 2 RETURNING id),"
        " a AS (UPDATE notifications.delivery_attempt SET ok = $6, response_code = $7, latency_ms = $8, error = $4"
        " WHERE notification_id = $1 AND attempt = $2 RETURNING 1)"
        " SELECT count(*) FROM n, a", notification_id, attempt, state, error, retry_in_s, ok, code, latency_ms)
    return bool(kept)


async def attempts(conn: asyncpg.Connection, *, notification_id: uuid.UUID) -> list[asyncpg.Record]:
    """A notification's delivery log, oldest first (what its dead letter carries)."""
    return list(await conn.fetch("SELECT * FROM notifications.delivery_attempt WHERE notification_id = $1"
                                 " ORDER BY attempt", notification_id))


async def wake(conn: asyncpg.Connection) -> None:
    await conn.execute(f"SELECT pg_notify('{WAKE_CHANNEL}', '')")


async def db_now(conn: asyncpg.Connection) -> float:
    """The database's clock (epoch seconds): every replica times its rows by the same clock."""
    return float((await conn.fetchval("SELECT now()")).timestamp())


async def firing_groups_of(conn: asyncpg.Connection, *, incident_id: Any) -> list[asyncpg.Record]:
    """(route_id, group_key) of the groups an incident is firing in."""
    return list(await conn.fetch("SELECT route_id, group_key FROM notifications.group_member"
                                 " WHERE incident_id = $1 AND firing", incident_id))

