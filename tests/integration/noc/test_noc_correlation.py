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
