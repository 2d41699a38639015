"""What survives a restart of the NOC process (correlation state and timers are rows), events
reaching JetStream through the outbox, and the site facts following register changes."""

from __future__ import annotations

import time

from nocstack import wait_for
from towerco.noc.v1 import noc_pb2

from mesh import subjects


async def test_correlation_and_timers_survive_a_restart(noc):
    await noc.add_site("RST-0001", region="rst", tenants=("acme",))
    t0 = time.time() - 300
    aid = await noc.anomaly("RST-0001", "rule.mains_lost", t0, tenant_ids=("acme",), region="rst")

    async def opened():
        incs = await noc.incidents(site_id="RST-0001")
        return incs or None

    [inc] = await wait_for(opened, what="the power incident")
    await noc.restart_noc()
    # after the restart the chain goes on in the same incident (state read from PostgreSQL)
    await noc.anomaly("RST-0001", "rule.dg_fail_to_start", t0 + 130, tenant_ids=("acme",), region="rst")

    async def chained():
        incs = await noc.incidents(site_id="RST-0001")
        return incs if incs and incs[0].root_cause.code == "mains_failure+dg_fail_to_start" else None

    [same] = await wait_for(chained, what="the DG failure joining the same incident after the restart")
    assert same.id == inc.id and same.alarm_count == 2
    # a clear, a restart before the hold ends: the timer is a row, the new process resolves it
    await noc.cleared(aid, "RST-0001", "rule.mains_lost", time.time(), tenant_ids=("acme",), region="rst")
    got = await noc.noc.ListAlarms(noc_pb2.ListAlarmsRequest(incident_id=inc.id), metadata=noc.md("viewer"))
    dg = next(a for a in got.alarms if a.probable_cause == "dg_fail_to_start")
    await noc.noc.PostAlarm(noc_pb2.PostAlarmRequest(
        source="rst", source_alarm_id="c1", site_id="RST-0001", alarm_type=noc_pb2.ALARM_TYPE_EQUIPMENT,
        probable_cause="dg_fail_to_start", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_CLEARED,
        clear_key=dg.clear_key), metadata=noc.md("service"))
    await noc.restart_noc()

    async def resolved():
        incs = await noc.incidents(site_id="RST-0001")
        return incs if incs and incs[0].state == noc_pb2.INCIDENT_STATE_RESOLVED else None

    await wait_for(resolved, what="auto-resolved by the restarted process")


async def test_incident_changes_reach_jetstream_through_the_outbox(noc):
    await noc.add_site("EVT-0001", region="evt", tenants=("acme",))
    sub = await noc.js.pull_subscribe(subjects.NOC_INCIDENT_EVENTS, durable="noc-test-events")
    posted = await noc.noc.PostAlarm(noc_pb2.PostAlarmRequest(
        source="evt", source_alarm_id="e1", site_id="EVT-0001", alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL,
        probable_cause="high_temperature", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_MAJOR),
        metadata=noc.md("service"))
    await noc.noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(incident_id=posted.incident_id),
                                      metadata=noc.md("noc_operator"))
    from towerco.events.v1 import events_pb2

    seen: list[tuple[str, int]] = []

    async def both():
        try:
            msgs = await sub.fetch(50, timeout=1)
        except Exception:  # noqa: BLE001 - nothing yet
            msgs = []
        for m in msgs:
            await m.ack()
            env = events_pb2.Envelope.FromString(m.data)
            ev = noc_pb2.IncidentEvent()
            if env.payload.Unpack(ev) and ev.incident.id == posted.incident_id:
                seen.append((m.subject, ev.change))
                assert list(env.tenant_ids) == ["acme"]
        return seen if len(seen) >= 2 else None

    await wait_for(both, what="opened and acknowledged on JetStream")
    assert seen[:2] == [("towerco.noc.incident.opened", noc_pb2.INCIDENT_CHANGE_OPENED),
                        ("towerco.noc.incident.acknowledged", noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED)]


async def test_a_window_added_later_suppresses_the_next_alarm(noc):
    await noc.add_site("WIN-0001", region="win", tenants=("acme",))
    first = await noc.noc.PostAlarm(noc_pb2.PostAlarmRequest(
        source="win", source_alarm_id="w0", site_id="WIN-0001", alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL,
        probable_cause="low_fuel", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_WARNING),
        metadata=noc.md("service"))
    assert not first.alarm.suppressed  # the site's facts are cached now
    now = time.time()
    await noc.add_window("WIN-0001", now - 60, now + 3600)
    n = 0

    async def suppressed():
        nonlocal n
        n += 1
        r = await noc.noc.PostAlarm(noc_pb2.PostAlarmRequest(
            source="win", source_alarm_id=f"w{n}", site_id="WIN-0001", alarm_type=noc_pb2.ALARM_TYPE_EQUIPMENT,
            probable_cause=f"probe_{n}", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_MINOR),
            metadata=noc.md("service"))
        return r if r.alarm.suppressed else None

    await wait_for(suppressed, wait_s=30, what="the register change reaching the NOC's facts")
    # an incident opened now (a new class on the site) is suppressed
    r = await noc.noc.PostAlarm(noc_pb2.PostAlarmRequest(
        source="win", source_alarm_id="w-temp", site_id="WIN-0001", alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL,
        probable_cause="high_temperature", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_MAJOR),
        metadata=noc.md("service"))
    got = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=r.incident_id), metadata=noc.md("viewer"))
    assert got.incident.suppressed and got.incident.kind == noc_pb2.INCIDENT_KIND_ENVIRONMENT
    listed = {i.id for i in await noc.incidents(site_id="WIN-0001")}
    shown = {i.id for i in await noc.incidents(site_id="WIN-0001", exclude_suppressed=True)}
    assert r.incident_id in listed and r.incident_id not in shown
