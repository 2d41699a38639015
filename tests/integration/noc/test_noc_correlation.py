"""Correlation on a real platform: anomaly events on JetStream -> the NOC's consumer -> incidents
in PostgreSQL, read back over gRPC (nocstack.py)."""

from __future__ import annotations

import time

from nocstack import wait_for
from towerco.noc.v1 import noc_pb2


async def _site_incidents(noc, site: str) -> list[noc_pb2.Incident]:
    return await noc.incidents(site_id=site)


async def test_power_chain_collapses_into_one_incident_with_root_cause_and_impact(noc):
    tenancies = await noc.add_site("PWR-0001", region="chain", tenants=("acme", "beta"))
    t0 = time.time() - 600
    tids = ("acme", "beta")
    await noc.anomaly("PWR-0001", "rule.mains_lost", t0, tenant_ids=tids, region="chain")
    await noc.anomaly("PWR-0001", "rule.dg_fail_to_start", t0 + 120, tenant_ids=tids, region="chain")
    await noc.anomaly("PWR-0001", "rule.battery_near_lvd", t0 + 200, tenant_ids=tids, region="chain")
    await noc.anomaly("PWR-0001", "rule.dc_bus_low", t0 + 260, tenant_ids=tids, region="chain")
    await noc.anomaly("PWR-0001", "rule.tenant_link_down", t0 + 270, tenant_ids=tids, tenant_id="acme",
                      region="chain")

    async def settled():
        incs = await _site_incidents(noc, "PWR-0001")
        return incs if incs and incs[0].alarm_count == 5 else None

    [inc] = await wait_for(settled, what="one power incident with 5 alarms")
    assert inc.kind == noc_pb2.INCIDENT_KIND_POWER
    assert inc.root_cause.code == "mains_failure+dg_fail_to_start"
    assert inc.root_cause.summary == "mains failure, DG failed to start"
    assert list(inc.root_cause.chain) == ["mains_failure", "dg_fail_to_start", "battery_low", "dc_low",
                                          "tenant_link_down"]
    assert inc.title == "PWR-0001: mains failure, DG failed to start"
    assert inc.severity == noc_pb2.INCIDENT_SEVERITY_CRITICAL
    assert {(i.tenant_id, i.tenancy_id) for i in inc.impacts} == {(t, tenancies[t]) for t in tids}
    assert all(i.service_down and i.sla_target_percent == 99.9 for i in inc.impacts)
    assert all(i.budget_remaining_minutes > 0 for i in inc.impacts)
    got = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=inc.id), metadata=noc.md("viewer"))
    kinds = [e.kind for e in got.incident.timeline]
    assert kinds[0] == noc_pb2.TIMELINE_KIND_OPENED
    assert kinds.count(noc_pb2.TIMELINE_KIND_ALARM_JOINED) == 4
    assert noc_pb2.TIMELINE_KIND_ROOT_CAUSE_CHANGED not in kinds[:1]
    assert len(got.alarms) == 5 and {a.incident_id for a in got.alarms} == {inc.id}


async def test_regional_storm_makes_one_parent_with_the_sites_as_children(noc):
    sites = [f"REG-{k:04d}" for k in range(6)]
    for s in sites:
        await noc.add_site(s, region="storm", tenants=("acme",))
    t0 = time.time() - 300
    for k, s in enumerate(sites):
        await noc.anomaly(s, "rule.mains_lost", t0 + k * 20, tenant_ids=("acme",), region="storm")

    async def parent():
        incs = await noc.incidents(region="storm", kind=noc_pb2.INCIDENT_KIND_REGIONAL_OUTAGE)
        return incs if incs and len(incs[0].child_ids) == len(sites) else None

    [p] = await wait_for(parent, what="a regional outage with 6 children")
    assert p.root_cause.summary == "regional grid outage" and sorted(p.site_ids) == sites
    kids = await noc.incidents(parent_id=p.id)
    assert sorted(k.site_ids[0] for k in kids) == sites and {k.parent_id for k in kids} == {p.id}
    assert {k.kind for k in kids} == {noc_pb2.INCIDENT_KIND_POWER}


async def test_maintenance_window_suppresses_and_raises_at_its_end(noc):
    now = time.time()
    await noc.add_site("MNT-0001", region="mnt", tenants=("acme",))
    await noc.add_window("MNT-0001", now - 60, now + 4)
    await noc.anomaly("MNT-0001", "rule.door_open", now, tenant_ids=("acme",), region="mnt")

    # (the window is short so that it ends within the test: the suppressed state may already be
    # over when first looked at, so it is checked in the timeline and the events)
    async def raised():
        incs = await noc.incidents(site_id="MNT-0001")
        return incs if incs and not incs[0].suppressed and incs[0].state == noc_pb2.INCIDENT_STATE_OPEN else None

    [inc] = await wait_for(raised, what="the incident raised when the window ended")
    got = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=inc.id), metadata=noc.md("viewer"))
    kinds = [e.kind for e in got.incident.timeline]
    assert noc_pb2.TIMELINE_KIND_SUPPRESSED in kinds and noc_pb2.TIMELINE_KIND_UNSUPPRESSED in kinds
    evs = await noc.events_of(inc.id)
    assert [s for s, _ in evs][:1] == ["towerco.noc.incident.opened"] and evs[0][1].incident.suppressed
    raised_ev = [e for s, e in evs if s == "towerco.noc.incident.updated" and not e.incident.suppressed]
    assert raised_ev and raised_ev[-1].entry.kind == noc_pb2.TIMELINE_KIND_UNSUPPRESSED


async def test_flapping_alarm_is_one_flapping_incident(noc):
    await noc.add_site("FLP-0001", region="flap", tenants=("acme",))
    t0 = time.time() - 400
    for k in range(6):
        aid = await noc.anomaly("FLP-0001", "rule.rectifier_fault", t0 + k * 40, tenant_ids=("acme",), region="flap")
        await noc.cleared(aid, "FLP-0001", "rule.rectifier_fault", t0 + k * 40 + 10, tenant_ids=("acme",),
                          region="flap")

    async def flapping():
        incs = await noc.incidents(site_id="FLP-0001")
        return incs if incs and incs[0].flapping and incs[0].alarm_count == 6 else None

    [inc] = await wait_for(flapping, what="one flapping incident")
    alarms = await noc.noc.ListAlarms(noc_pb2.ListAlarmsRequest(incident_id=inc.id), metadata=noc.md("viewer"))
    [alarm] = alarms.alarms
    assert alarm.count == 6 and alarm.transitions == 11


async def test_auto_resolve_then_recurrence_reopens(noc):
    await noc.add_site("ARS-0001", region="ars", tenants=("acme",))
    t0 = time.time() - 30
    aid = await noc.anomaly("ARS-0001", "rule.high_cabinet_temp", t0, tenant_ids=("acme",), region="ars")
    await noc.cleared(aid, "ARS-0001", "rule.high_cabinet_temp", time.time(), tenant_ids=("acme",), region="ars")

    async def resolved():
        incs = await noc.incidents(site_id="ARS-0001")
        return incs if incs and incs[0].state == noc_pb2.INCIDENT_STATE_RESOLVED else None

    [inc] = await wait_for(resolved, what="auto-resolved after the hold (2 s in these tests)")
    got = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=inc.id), metadata=noc.md("viewer"))
    assert got.incident.timeline[-1].kind == noc_pb2.TIMELINE_KIND_AUTO_RESOLVED
    await noc.anomaly("ARS-0001", "rule.high_cabinet_temp", time.time(), tenant_ids=("acme",), region="ars")

    async def reopened():
        incs = await noc.incidents(site_id="ARS-0001")
        return incs if incs and incs[0].state == noc_pb2.INCIDENT_STATE_OPEN else None

    [again] = await wait_for(reopened, what="reopened by the recurrence")
    assert again.id == inc.id and again.reopen_count == 1


async def test_redelivered_anomaly_changes_nothing(noc):
    await noc.add_site("DUP-0001", region="dup", tenants=("acme",))
    t0 = time.time()
    aid = await noc.anomaly("DUP-0001", "rule.low_fuel", t0, tenant_ids=("acme",), region="dup")
    await noc.anomaly("DUP-0001", "rule.low_fuel", t0, tenant_ids=("acme",), region="dup", anomaly_id=aid)
    await noc.anomaly("DUP-0001", "rule.door_open", t0 + 1, tenant_ids=("acme",), region="dup")

    async def both():
        incs = await noc.incidents(site_id="DUP-0001")
        return incs if len(incs) == 2 else None

    incs = await wait_for(both, what="the fuel and the door incidents")
    fuel = next(i for i in incs if i.kind == noc_pb2.INCIDENT_KIND_FUEL)
    assert fuel.alarm_count == 1
