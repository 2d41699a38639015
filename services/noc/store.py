"""SQL of the NOC service (schema noc): alarms, incidents, the alarm -> incident decisions, the
timeline, the sources seen (idempotency) and the serialisation of correlation.

Rows are read into and written from the domain's records (services/noc/domain.py), so the
correlator's working set is exactly what these tables hold: nothing lives only in memory.

Serialisation: every writer (correlation, operator actions, the periodic task) takes the
transaction-scoped advisory locks (`lock`) of the regions and the sites whose incidents it may
change, regions first then sites, each in sorted order, so two writers never wait on each other
in a cycle and the regional rule (which links other sites' incidents of its region) never loses
an update. Tenant scoping: every read takes
`tenant` (None only for towerco staff); an incident is visible to a tenant when it impacts one of
its tenancies (`tenant_ids`), an alarm when its site is leased by the tenant and it is not another
tenant's own (`tenant_id`)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.noc import domain

ALARM_COLS = ("id", "source", "source_alarm_id", "site_id", "region", "alarm_type", "probable_cause",
              "specific_problem", "severity", "dedup_key", "clear_key", "state", "first_seen", "last_seen",
              "clear_time", "count", "incident_id", "tenant_ids", "tenant_id", "text", "suppressed", "transitions",
              "flap_times")
INCIDENT_COLS = ("id", "title", "kind", "severity", "state", "site_id", "site_ids", "region", "root_code",
                 "root_summary", "chain", "impacts", "tenant_ids", "parent_id", "alarm_count", "first_seen",
                 "last_seen", "assignee", "acknowledge_time", "acknowledged_by", "resolve_time", "close_time",
                 "suppressed", "suppressed_until", "flapping", "flap_last", "recurrence_of", "reopen_count",
                 "merged_into", "clear_since", "mains_time", "update_time")
_TIME_ALARM = {"first_seen", "last_seen", "clear_time"}
_TIME_INCIDENT = {"first_seen", "last_seen", "acknowledge_time", "resolve_time", "close_time", "suppressed_until",
                  "flap_last", "clear_since", "mains_time", "update_time"}
_UUID_INCIDENT = {"parent_id", "recurrence_of", "merged_into"}


def ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def ep(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def lock_key(kind: str, name: str) -> int:
    return 0x0E0C_0000_0000 + zlib.crc32(f"noc:{kind}:{name}".encode())


async def lock(conn: asyncpg.Connection, *, regions: Iterable[str] = (), sites: Iterable[str] = ()) -> None:
    """Take the correlation locks of these regions, then these sites (each sorted), to commit."""
    keys = [lock_key("region", r) for r in sorted(set(regions))] + [lock_key("site", s) for s in sorted(set(sites))]
    if not keys:
        return
    await conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM "
                       "(SELECT k FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, n) ORDER BY n OFFSET 0) AS o",
                       keys)


# --------------------------------------------------------------------------- rows <-> records


def alarm_rec(r: asyncpg.Record) -> domain.AlarmRec:
    return domain.AlarmRec(
        id=str(r["id"]), source=r["source"], source_alarm_id=r["source_alarm_id"], site_id=r["site_id"],
        region=r["region"], alarm_type=r["alarm_type"], probable_cause=r["probable_cause"],
        specific_problem=r["specific_problem"], severity=r["severity"], dedup_key=r["dedup_key"],
        clear_key=r["clear_key"], state=r["state"], first_seen=r["first_seen"].timestamp(),
        last_seen=r["last_seen"].timestamp(), clear_time=ep(r["clear_time"]), count=r["count"],
        incident_id=str(r["incident_id"]) if r["incident_id"] else "", tenant_ids=list(r["tenant_ids"]),
        tenant_id=r["tenant_id"], text=r["text"], suppressed=r["suppressed"], transitions=r["transitions"],
        flap_times=list(r["flap_times"]))


def incident_rec(r: asyncpg.Record) -> domain.IncidentRec:
    raw = r["impacts"]
    impacts = json.loads(raw) if isinstance(raw, str) else (raw or [])
    return domain.IncidentRec(
        id=str(r["id"]), title=r["title"], kind=r["kind"], severity=r["severity"], state=r["state"],
        site_id=r["site_id"], region=r["region"], first_seen=r["first_seen"].timestamp(),
        last_seen=r["last_seen"].timestamp(), site_ids=list(r["site_ids"]), root_code=r["root_code"],
        root_summary=r["root_summary"], chain=list(r["chain"]), impacts=[domain.Impact.from_json(i) for i in impacts],
        tenant_ids=list(r["tenant_ids"]), parent_id=str(r["parent_id"]) if r["parent_id"] else "",
        alarm_count=r["alarm_count"], assignee=r["assignee"], acknowledge_time=ep(r["acknowledge_time"]),
        acknowledged_by=r["acknowledged_by"], resolve_time=ep(r["resolve_time"]), close_time=ep(r["close_time"]),
        suppressed=r["suppressed"], suppressed_until=ep(r["suppressed_until"]), flapping=r["flapping"],
        flap_last=ep(r["flap_last"]), recurrence_of=str(r["recurrence_of"]) if r["recurrence_of"] else "",
        reopen_count=r["reopen_count"], merged_into=str(r["merged_into"]) if r["merged_into"] else "",
        clear_since=ep(r["clear_since"]), mains_time=ep(r["mains_time"]), update_time=r["update_time"].timestamp())


def _alarm_values(a: domain.AlarmRec) -> tuple[Any, ...]:
    out: list[Any] = []
    for c in ALARM_COLS:
        v = getattr(a, c)
        if c in _TIME_ALARM:
            v = ts(v)
        elif c == "incident_id":
            v = v or None
        out.append(v)
    return tuple(out)


def _incident_values(i: domain.IncidentRec) -> tuple[Any, ...]:
    out: list[Any] = []
    for c in INCIDENT_COLS:
        v = getattr(i, c)
        if c in _TIME_INCIDENT:
            v = ts(v)
        elif c in _UUID_INCIDENT:
            v = v or None
        elif c == "impacts":
            v = json.dumps([x.to_json() for x in v])
        out.append(v)
    return tuple(out)


def _upsert(table: str, cols: Sequence[str], casts: dict[str, str]) -> str:
    params = ", ".join(f"${n + 1}{casts.get(c, '')}" for n, c in enumerate(cols))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "id")
    return f"INSERT INTO noc.{table} ({', '.join(cols)}) VALUES ({params}) ON CONFLICT (id) DO UPDATE SET {sets}"


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def _alarm_json(a: domain.AlarmRec) -> dict[str, Any]:
    d = {c: getattr(a, c) for c in ALARM_COLS}
    for c in _TIME_ALARM:
        d[c] = _iso(d[c])
    d["incident_id"] = a.incident_id or None
    return d


def _incident_json(i: domain.IncidentRec) -> dict[str, Any]:
    d = {c: getattr(i, c) for c in INCIDENT_COLS}
    for c in _TIME_INCIDENT:
        d[c] = _iso(d[c])
    for c in _UUID_INCIDENT:
        d[c] = d[c] or None
    d["impacts"] = [x.to_json() for x in i.impacts]
    return d


def _upsert_json(table: str, cols: Sequence[str]) -> str:
    """One statement for many rows: a JSON array of row objects (arrays, jsonb and timestamps
    converted by PostgreSQL), inserted or updated by id."""
    names = ", ".join(cols)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "id")
    return (f"INSERT INTO noc.{table} ({names}) SELECT {names} FROM jsonb_populate_recordset(NULL::noc.{table}, "
            f"$1::jsonb) ON CONFLICT (id) DO UPDATE SET {sets}")


_ALARM_UPSERT_JSON = _upsert_json("alarm", ALARM_COLS)
_INCIDENT_UPSERT_JSON = _upsert_json("incident", INCIDENT_COLS)
_ALARM_UPSERT = _upsert("alarm", ALARM_COLS, {"id": "::uuid", "incident_id": "::uuid"})
_INCIDENT_UPSERT = _upsert("incident", INCIDENT_COLS, {"id": "::uuid", "impacts": "::jsonb", "parent_id": "::uuid",
                                                       "recurrence_of": "::uuid", "merged_into": "::uuid"})


# --------------------------------------------------------------------------- idempotency


async def sources_seen(conn: asyncpg.Connection, *, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str],
                                                                                               tuple[str, str]]:
    """(source, source_alarm_id) -> (alarm id or '', content hash) for those already received."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT s.source, s.source_alarm_id, s.alarm_id, s.content_hash FROM noc.alarm_source s "
        "JOIN unnest($1::text[], $2::text[]) AS k(src, sid) ON s.source = k.src AND s.source_alarm_id = k.sid",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["source"], r["source_alarm_id"]): (str(r["alarm_id"]) if r["alarm_id"] else "", r["content_hash"])
            for r in rows}


async def record_sources(conn: asyncpg.Connection, *, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Remember (source, source_alarm_id, alarm id or '', content hash)."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO noc.alarm_source (source, source_alarm_id, alarm_id, content_hash) "
        "SELECT s, i, nullif(a, '')::uuid, h FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS r(s, i, a, h) "
        "ON CONFLICT DO NOTHING",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])


# --------------------------------------------------------------------------- working sets


async def site_alarms(conn: asyncpg.Connection, *, site_ids: Sequence[str], since: float) -> list[domain.AlarmRec]:
    """The latest alarm per (site, dedup key): active ones, and cleared ones seen since `since`."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (site_id, dedup_key) * FROM noc.alarm WHERE site_id = ANY($1::text[]) "
        "AND (state = 1 OR last_seen >= $2 OR clear_time >= $2) ORDER BY site_id, dedup_key, last_seen DESC",
        list(site_ids), ts(since))
    return [alarm_rec(r) for r in rows]


async def site_incidents(conn: asyncpg.Connection, *, site_ids: Sequence[str], since: float
                         ) -> list[domain.IncidentRec]:
    """Active incidents of these sites, and those that ended (or were last seen) since `since`."""
    rows = await conn.fetch(
        "SELECT * FROM noc.incident WHERE site_id = ANY($1::text[]) AND merged_into IS NULL "
        "AND (state IN (1, 2) OR coalesce(resolve_time, close_time, last_seen) >= $2 OR last_seen >= $2)",
        list(site_ids), ts(since))
    return [incident_rec(r) for r in rows]


async def region_incidents(conn: asyncpg.Connection, *, regions: Sequence[str], since: float
                           ) -> list[domain.IncidentRec]:
    """Per region: the active regional outages and the active site power incidents that lost
    mains since `since`."""
    rows = await conn.fetch(
        "SELECT * FROM noc.incident WHERE region = ANY($1::text[]) AND state IN (1, 2) AND merged_into IS NULL "
        "AND (kind = $2 OR (kind = $3 AND mains_time >= $4 AND parent_id IS NULL))",
        list(regions), domain.REGIONAL, domain.POWER, ts(since))
    return [incident_rec(r) for r in rows]


async def children(conn: asyncpg.Connection, *, parent_ids: Sequence[str]) -> list[domain.IncidentRec]:
    if not parent_ids:
        return []
    rows = await conn.fetch("SELECT * FROM noc.incident WHERE parent_id = ANY($1::uuid[]) AND merged_into IS NULL",
                            list(parent_ids))
    return [incident_rec(r) for r in rows]


async def child_ids(conn: asyncpg.Connection, *, parent_ids: Sequence[str]) -> dict[str, list[str]]:
    if not parent_ids:
        return {}
    rows = await conn.fetch("SELECT parent_id, array_agg(id::text ORDER BY id) AS ids FROM noc.incident "
                            "WHERE parent_id = ANY($1::uuid[]) AND merged_into IS NULL GROUP BY parent_id",
                            list(parent_ids))
    return {str(r["parent_id"]): list(r["ids"]) for r in rows}


async def incidents_by_id(conn: asyncpg.Connection, *, ids: Sequence[str], tenant: str | None = None
                          ) -> list[domain.IncidentRec]:
    """The incidents of `ids` that exist (and, with `tenant`, that impact that tenant)."""
    if not ids:
        return []
    rows = await conn.fetch("SELECT * FROM noc.incident WHERE id = ANY($1::uuid[]) "
                            "AND ($2::text IS NULL OR $2 = ANY(tenant_ids))", list(ids), tenant)
    return [incident_rec(r) for r in rows]


async def alarms_of(conn: asyncpg.Connection, *, incident_ids: Sequence[str]) -> list[domain.AlarmRec]:
    if not incident_ids:
        return []
    rows = await conn.fetch("SELECT * FROM noc.alarm WHERE incident_id = ANY($1::uuid[])", list(incident_ids))
    return [alarm_rec(r) for r in rows]


async def alarms_by_id(conn: asyncpg.Connection, *, ids: Sequence[str]) -> list[domain.AlarmRec]:
    if not ids:
        return []
    rows = await conn.fetch("SELECT * FROM noc.alarm WHERE id = ANY($1::uuid[])", list(ids))
    return [alarm_rec(r) for r in rows]


async def due_incidents(conn: asyncpg.Connection, *, now: float, params: domain.Params, limit: int = 500
                        ) -> list[domain.IncidentRec]:
    """Active incidents with a timer due at `now`: an auto-resolve hold over, a suppression's
    window end passed, a flapping calm reached, or a regional outage (its children decide)."""
    rows = await conn.fetch(
        "SELECT * FROM noc.incident WHERE state IN (1, 2) AND merged_into IS NULL AND ("
        "(clear_since IS NOT NULL AND clear_since <= $1) OR (suppressed AND suppressed_until <= $2) "
        "OR (flapping AND (flap_last IS NULL OR flap_last <= $3)) OR kind = $4) ORDER BY id LIMIT $5",
        ts(now - params.auto_resolve_hold_s), ts(now), ts(now - params.flap_window_s), domain.REGIONAL, limit)
    return [incident_rec(r) for r in rows]


# --------------------------------------------------------------------------- writing decisions


async def save(conn: asyncpg.Connection, *, out: domain.Decisions) -> None:
    """Write what correlation or an operator decided: alarms, incidents, joins, timeline."""
    if out.alarms:
        await conn.execute(_ALARM_UPSERT_JSON, json.dumps([_alarm_json(a) for a in out.alarms.values()]))
    if out.incidents:
        await conn.execute(_INCIDENT_UPSERT_JSON, json.dumps([_incident_json(i) for i in out.incidents.values()]))
    if out.bumped_alarms:
        a = list(out.bumped_alarms.values())
        await conn.execute(
            "UPDATE noc.alarm AS t SET count = u.c, last_seen = u.l, severity = u.s FROM unnest($1::uuid[], "
            "$2::bigint[], $3::timestamptz[], $4::int2[]) AS u(i, c, l, s) WHERE t.id = u.i",
            [x.id for x in a], [x.count for x in a], [ts(x.last_seen) for x in a], [x.severity for x in a])
    if out.bumped_incidents:
        i = list(out.bumped_incidents.values())
        await conn.execute(
            "UPDATE noc.incident AS t SET alarm_count = u.c, last_seen = u.l, update_time = u.w FROM unnest("
            "$1::uuid[], $2::bigint[], $3::timestamptz[], $4::timestamptz[]) AS u(i, c, l, w) WHERE t.id = u.i",
            [x.id for x in i], [x.alarm_count for x in i], [ts(x.last_seen) for x in i], [ts(x.update_time) for x in i])
    if out.joins:
        await conn.execute(
            "INSERT INTO noc.incident_alarm (incident_id, alarm_id, joined_at, rule) "
            "SELECT i, a, t, r FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[]) AS j(i, a, t, r) "
            "ON CONFLICT (incident_id, alarm_id) DO NOTHING",
            [j[0] for j in out.joins], [j[1] for j in out.joins], [ts(j[2]) for j in out.joins],
            [j[3] for j in out.joins])
    if out.timeline:
        await conn.execute(
            "INSERT INTO noc.timeline (incident_id, time, actor, kind, text, alarm_id, related_incident_id) "
            "SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int2[], $5::text[], $6::text[], "
            "$7::text[])",
            [e.incident_id for e in out.timeline], [ts(e.time) for e in out.timeline],
            [e.actor for e in out.timeline], [e.kind for e in out.timeline], [e.text for e in out.timeline],
            [e.alarm_id for e in out.timeline], [e.related_incident_id for e in out.timeline])


# --------------------------------------------------------------------------- reads


def _where(filters: list[str], args: list[Any], sql: str, value: Any) -> None:
    args.append(value)
    filters.append(sql.replace("$?", f"${len(args)}"))


async def get_incident(conn: asyncpg.Connection, *, tenant: str | None, incident_id: str, for_update: bool = False
                       ) -> domain.IncidentRec | None:
    sql = "SELECT * FROM noc.incident WHERE id = $1::uuid AND ($2::text IS NULL OR $2 = ANY(tenant_ids))"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if for_update else ""), incident_id, tenant)
    return incident_rec(row) if row is not None else None


async def list_incidents(conn: asyncpg.Connection, *, tenant: str | None, state: int = 0, min_severity: int = 0,
                         kind: int = 0, site_id: str = "", region: str = "", tenant_id: str = "", parent_id: str = "",
                         active_only: bool = False, exclude_suppressed: bool = False,
                         first_from: datetime | None = None, first_to: datetime | None = None,
                         after: tuple[datetime, str] | None = None, limit: int) -> list[domain.IncidentRec]:
    """Newest first (first_seen, id); `after` is the last row of the previous page."""
    f: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        _where(f, args, "$? = ANY(tenant_ids)", tenant)
    if tenant_id:
        _where(f, args, "$? = ANY(tenant_ids)", tenant_id)
    if active_only:
        f.append("state IN (1, 2)")
    elif state:
        _where(f, args, "state = $?", state)
    if min_severity:
        _where(f, args, "severity >= $?", min_severity)
    if kind:
        _where(f, args, "kind = $?", kind)
    if site_id:
        _where(f, args, "$? = ANY(site_ids)", site_id)
    if region:
        _where(f, args, "region = $?", region)
    if parent_id:
        _where(f, args, "parent_id = $?::uuid", parent_id)
    if exclude_suppressed:
        f.append("NOT suppressed")
    if first_from is not None:
        _where(f, args, "first_seen >= $?", first_from)
    if first_to is not None:
        _where(f, args, "first_seen < $?", first_to)
    if after is not None:
        args += [after[0], after[1]]
        f.append(f"(first_seen, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit)
    where = ("WHERE " + " AND ".join(f)) if f else ""
    rows = await conn.fetch(f"SELECT * FROM noc.incident {where} ORDER BY first_seen DESC, id DESC "
                            f"LIMIT ${len(args)}", *args)
    return [incident_rec(r) for r in rows]


async def get_alarm(conn: asyncpg.Connection, *, tenant: str | None, alarm_id: str) -> domain.AlarmRec | None:
    row = await conn.fetchrow(
        "SELECT * FROM noc.alarm WHERE id = $1::uuid AND ($2::text IS NULL OR ($2 = ANY(tenant_ids) "
        "AND tenant_id IN ('', $2)))", alarm_id, tenant)
    return alarm_rec(row) if row is not None else None


async def list_alarms(conn: asyncpg.Connection, *, tenant: str | None, incident_id: str = "", site_id: str = "",
                      region: str = "", source: str = "", state: int = 0, min_severity: int = 0,
                      tenant_id: str = "", first_from: datetime | None = None, first_to: datetime | None = None,
                      after: tuple[datetime, str] | None = None, limit: int) -> list[domain.AlarmRec]:
    f: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        _where(f, args, "$? = ANY(tenant_ids)", tenant)
        _where(f, args, "tenant_id IN ('', $?)", tenant)
    if incident_id:
        _where(f, args, "incident_id = $?::uuid", incident_id)
    if site_id:
        _where(f, args, "site_id = $?", site_id)
    if region:
        _where(f, args, "region = $?", region)
    if source:
        _where(f, args, "source = $?", source)
    if state:
        _where(f, args, "state = $?", state)
    if min_severity:
        # CLEARED and INDETERMINATE count as the lowest
        _where(f, args, "(CASE WHEN severity <= 2 THEN 0 ELSE severity END) >= $?", min_severity)
    if tenant_id:
        _where(f, args, "$? = ANY(tenant_ids)", tenant_id)
    if first_from is not None:
        _where(f, args, "first_seen >= $?", first_from)
    if first_to is not None:
        _where(f, args, "first_seen < $?", first_to)
    if after is not None:
        args += [after[0], after[1]]
        f.append(f"(first_seen, id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(limit)
    where = ("WHERE " + " AND ".join(f)) if f else ""
    rows = await conn.fetch(f"SELECT * FROM noc.alarm {where} ORDER BY first_seen DESC, id DESC LIMIT ${len(args)}",
                            *args)
    return [alarm_rec(r) for r in rows]


async def timeline(conn: asyncpg.Connection, *, incident_id: str) -> list[domain.Entry]:
    rows = await conn.fetch("SELECT * FROM noc.timeline WHERE incident_id = $1::uuid ORDER BY id", incident_id)
    return [domain.Entry(str(r["incident_id"]), r["time"].timestamp(), r["actor"], r["kind"], r["text"],
                         r["alarm_id"], r["related_incident_id"]) for r in rows]


async def stats_rows(conn: asyncpg.Connection, *, tenant: str | None, start: datetime, end: datetime, region: str,
                     tenant_id: str, site_id: str) -> tuple[list[domain.StatIncident], list[domain.StatAlarms]]:
    """The top-level incidents (no parent, not merged) and the alarm occurrences first seen in
    [start, end), filtered and scoped."""
    f = ["first_seen >= $1", "first_seen < $2"]
    args: list[Any] = [start, end]
    for col, value in (("tenant_ids", tenant), ("tenant_ids", tenant_id or None)):
        if value is not None:
            _where(f, args, f"$? = ANY({col})", value)
    if region:
        _where(f, args, "region = $?", region)
    if site_id:
        _where(f, args, "$? = ANY(site_ids)", site_id)
    where = " AND ".join(f)
    inc = await conn.fetch(
        f"SELECT id, site_ids, region, tenant_ids, first_seen, acknowledge_time, resolve_time FROM noc.incident "
        f"WHERE {where} AND parent_id IS NULL AND merged_into IS NULL", *args)
    fa = ["first_seen >= $1", "first_seen < $2"]
    aargs: list[Any] = [start, end]
    if tenant is not None:
        _where(fa, aargs, "$? = ANY(tenant_ids)", tenant)
        _where(fa, aargs, "tenant_id IN ('', $?)", tenant)
    if tenant_id:
        _where(fa, aargs, "$? = ANY(tenant_ids)", tenant_id)
    if region:
        _where(fa, aargs, "region = $?", region)
    if site_id:
        _where(fa, aargs, "site_id = $?", site_id)
    al = await conn.fetch(
        f"SELECT site_id, region, tenant_ids, sum(count)::bigint AS n FROM noc.alarm WHERE {' AND '.join(fa)} "
        f"AND incident_id IS NOT NULL GROUP BY site_id, region, tenant_ids", *aargs)
    return ([domain.StatIncident(str(r["id"]), tuple(r["site_ids"]), r["region"], tuple(r["tenant_ids"]),
                                 r["first_seen"].timestamp(), ep(r["acknowledge_time"]), ep(r["resolve_time"]))
             for r in inc],
            [domain.StatAlarms(r["site_id"], r["region"], tuple(r["tenant_ids"]), int(r["n"])) for r in al])
