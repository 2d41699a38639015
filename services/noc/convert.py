"""Domain records <-> towerco.noc.v1 messages (the one place the NOC builds its wire shapes; the
servicer and the correlator's events both use it)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from towerco.noc.v1 import noc_pb2

from services.noc import domain


def _ts(epoch: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(round(epoch * 1e9)))
    return t


def alarm_pb(a: domain.AlarmRec) -> noc_pb2.Alarm:
    m = noc_pb2.Alarm(
        id=a.id, source=a.source, source_alarm_id=a.source_alarm_id, site_id=a.site_id, region=a.region,
        alarm_type=a.alarm_type, probable_cause=a.probable_cause,  # type: ignore[arg-type]
        specific_problem=a.specific_problem, perceived_severity=a.severity,  # type: ignore[arg-type]
        dedup_key=a.dedup_key, clear_key=a.clear_key, state=a.state,  # type: ignore[arg-type]
        count=a.count, incident_id=a.incident_id, tenant_ids=a.tenant_ids, tenant_id=a.tenant_id, text=a.text,
        suppressed=a.suppressed, transitions=a.transitions)
    m.first_seen.CopyFrom(_ts(a.first_seen))
    m.last_seen.CopyFrom(_ts(a.last_seen))
    if a.clear_time is not None:
        m.clear_time.CopyFrom(_ts(a.clear_time))
    return m


def impact_pb(i: domain.Impact) -> noc_pb2.TenancyImpact:
    return noc_pb2.TenancyImpact(tenant_id=i.tenant_id, tenancy_id=i.tenancy_id, site_id=i.site_id,
                                 service_down=i.service_down, sla_target_percent=i.sla_target_percent,
                                 availability_percent=i.availability_percent,
                                 budget_remaining_minutes=i.budget_remaining_minutes)


def entry_pb(e: domain.Entry) -> noc_pb2.TimelineEntry:
    m = noc_pb2.TimelineEntry(actor=e.actor, kind=e.kind, text=e.text, alarm_id=e.alarm_id,  # type: ignore[arg-type]
                              related_incident_id=e.related_incident_id)
    m.time.CopyFrom(_ts(e.time))
    return m


def incident_pb(i: domain.IncidentRec, *, child_ids: list[str] | None = None,
                timeline: list[domain.Entry] | None = None) -> noc_pb2.Incident:
    m = noc_pb2.Incident(
        id=i.id, title=i.title, kind=i.kind, severity=i.severity, state=i.state,  # type: ignore[arg-type]
        site_ids=i.site_ids, region=i.region,
        root_cause=noc_pb2.RootCause(code=i.root_code, summary=i.root_summary, chain=i.chain),
        impacts=[impact_pb(x) for x in i.impacts], tenant_ids=i.tenant_ids, parent_id=i.parent_id,
        child_ids=child_ids if child_ids is not None else i.child_ids, alarm_count=i.alarm_count,
        assignee=i.assignee, acknowledged_by=i.acknowledged_by, suppressed=i.suppressed, flapping=i.flapping,
        recurrence_of=i.recurrence_of, reopen_count=i.reopen_count, merged_into=i.merged_into)
    m.first_seen.CopyFrom(_ts(i.first_seen))
    m.last_seen.CopyFrom(_ts(i.last_seen))
    m.update_time.CopyFrom(_ts(i.update_time or i.last_seen))
    for field, value in (("acknowledge_time", i.acknowledge_time), ("resolve_time", i.resolve_time),
                         ("close_time", i.close_time)):
        if value is not None:
            getattr(m, field).CopyFrom(_ts(value))
    if timeline:
        m.timeline.extend(entry_pb(e) for e in timeline)
    return m


def event_pb(inc: domain.IncidentRec, change: str, entry: domain.Entry,
             child_ids: list[str] | None = None) -> noc_pb2.IncidentEvent:
    return noc_pb2.IncidentEvent(change=domain.CHANGE_NUMBER[change],  # type: ignore[arg-type]
                                 incident=incident_pb(inc, child_ids=child_ids), entry=entry_pb(entry))
