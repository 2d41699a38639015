"""Lifecycle, audit, PostAlarm, bad input and tenant visibility of the NOC service, over gRPC and
REST through the gateway (nocstack.py)."""

from __future__ import annotations

import time
import uuid

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from nocstack import ts, wait_for
from towerco.noc.v1 import noc_pb2

J = {"Content-Type": "application/json"}


def _post(source_id: str, site: str = "LIF-0001", **kw) -> noc_pb2.PostAlarmRequest:  # noqa: ANN003
    fields = {"source": "nms-acme", "source_alarm_id": source_id, "site_id": site,
              "alarm_type": noc_pb2.ALARM_TYPE_EQUIPMENT, "probable_cause": "site_down",
              "perceived_severity": noc_pb2.PERCEIVED_SEVERITY_CRITICAL, "text": "site down per NMS"}
    fields.update(kw)
    return noc_pb2.PostAlarmRequest(**fields)


def _status(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    return rpc_status.from_call(exc)


def _reason(exc: grpc.aio.AioRpcError) -> str:
    st = _status(exc)
    for d in st.details if st else []:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return info.reason
    return ""


def _violations(exc: grpc.aio.AioRpcError) -> list[str]:
    st = _status(exc)
    for d in st.details if st else []:
        br = error_details_pb2.BadRequest()
        if d.Unpack(br):
            return [v.field for v in br.field_violations]
    return []


@pytest.fixture(scope="module")
async def site(noc):
    await noc.add_site("LIF-0001", region="life", tenants=("acme",))
    await noc.add_site("LIF-0002", region="life", tenants=("beta",))
    return "LIF-0001"


async def test_post_alarm_is_idempotent_and_refuses_a_reused_id(noc, site):
    md = noc.md("service")
    first = await noc.noc.PostAlarm(_post("nms-1"), metadata=md)
    assert first.incident_id and not first.duplicate and first.alarm.source == "nms-acme"
    again = await noc.noc.PostAlarm(_post("nms-1"), metadata=md)
    assert again.duplicate and again.alarm.id == first.alarm.id and again.incident_id == first.incident_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.PostAlarm(_post("nms-1", text="something else"), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err.value) == "SOURCE_ALARM_ID_REUSED"
    inc = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=first.incident_id),
                                    metadata=noc.md("viewer"))
    assert inc.incident.kind == noc_pb2.INCIDENT_KIND_POWER and inc.incident.alarm_count == 1
    # a clear with the same clear key clears it
    cleared = await noc.noc.PostAlarm(_post("nms-1c", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_CLEARED),
                                      metadata=md)
    assert cleared.alarm.id == first.alarm.id and cleared.alarm.state == noc_pb2.ALARM_STATE_CLEARED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.PostAlarm(_post("nms-1d", perceived_severity=noc_pb2.PERCEIVED_SEVERITY_CLEARED), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err.value) == "NO_ACTIVE_ALARM"


async def test_post_alarm_bad_input_is_invalid_argument_with_field_violations(noc, site):
    md = noc.md("noc_operator")
    cases = [
        (_post("x1", site="NOPE-404"), "site_id"),
        (_post("x2", tenant_id="beta"), "tenant_id"),
        (_post("x3", source="Bad Source"), "source"),
        (_post("x4", probable_cause=""), "probable_cause"),
        (_post("x5", event_time=ts(time.time() + 3600)), "event_time"),
        (_post("x7", event_time=ts(-62135596800)), "event_time"),  # 0001-01-01
    ]
    for req, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await noc.noc.PostAlarm(req, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in _violations(err.value), (field, _violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.PostAlarm(_post("x6"), metadata=noc.md("viewer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_lifecycle_with_audit_timeline_and_events(noc, site):
    posted = await noc.noc.PostAlarm(_post("life-1", probable_cause="enclosure_door_open",
                                           alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL,
                                           perceived_severity=noc_pb2.PERCEIVED_SEVERITY_WARNING),
                                     metadata=noc.md("service"))
    iid = posted.incident_id
    alice = noc.md("noc_operator", subject="alice")
    r = await noc.noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(incident_id=iid, note="on it"),
                                          metadata=alice)
    assert r.incident.state == noc_pb2.INCIDENT_STATE_ACKNOWLEDGED and r.incident.acknowledged_by == "alice"
    await noc.noc.AssignIncident(noc_pb2.AssignIncidentRequest(incident_id=iid, assignee="bob"), metadata=alice)
    await noc.noc.CommentIncident(noc_pb2.CommentIncidentRequest(incident_id=iid, text="truck rolled"), metadata=alice)
    r = await noc.noc.ResolveIncident(noc_pb2.ResolveIncidentRequest(incident_id=iid, note="closed the door"),
                                      metadata=alice)
    assert r.incident.state == noc_pb2.INCIDENT_STATE_RESOLVED and r.incident.assignee == "bob"
    r = await noc.noc.CloseIncident(noc_pb2.CloseIncidentRequest(incident_id=iid), metadata=alice)
    assert r.incident.state == noc_pb2.INCIDENT_STATE_CLOSED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.ResolveIncident(noc_pb2.ResolveIncidentRequest(incident_id=iid), metadata=alice)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err.value) == "INCIDENT_CLOSED"
    assert "cannot resolve a closed incident" in err.value.details()
    r = await noc.noc.ReopenIncident(noc_pb2.ReopenIncidentRequest(incident_id=iid, reason="door open again"),
                                     metadata=noc.md("noc_operator", subject="carol"))
    assert r.incident.state == noc_pb2.INCIDENT_STATE_OPEN and r.incident.reopen_count == 1
    got = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=iid), metadata=noc.md("viewer"))
    trail = [(e.kind, e.actor) for e in got.incident.timeline]
    assert trail == [(noc_pb2.TIMELINE_KIND_OPENED, "correlator"), (noc_pb2.TIMELINE_KIND_ACKNOWLEDGED, "alice"),
                     (noc_pb2.TIMELINE_KIND_ASSIGNED, "alice"), (noc_pb2.TIMELINE_KIND_COMMENTED, "alice"),
                     (noc_pb2.TIMELINE_KIND_RESOLVED, "alice"), (noc_pb2.TIMELINE_KIND_CLOSED, "alice"),
                     (noc_pb2.TIMELINE_KIND_REOPENED, "carol")]
    subjects = [s for s, _ in await noc.events_of(iid)]
    assert subjects == ["towerco.noc.incident." + c for c in
                        ("opened", "acknowledged", "updated", "updated", "resolved", "closed", "reopened")]
    # a viewer reads but may not act (403 for a visible incident); a malformed or unknown id is 404
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(incident_id=iid),
                                          metadata=noc.md("viewer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await noc.noc.ResolveIncident(noc_pb2.ResolveIncidentRequest(incident_id=bad), metadata=alice)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_merge_and_split(noc, site):
    md = noc.md("noc_operator", subject="dave")
    a = await noc.noc.PostAlarm(_post("ms-1", probable_cause="fuel_theft", alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL),
                                metadata=md)
    b = await noc.noc.PostAlarm(_post("ms-2", probable_cause="dg_running_with_mains",
                                      alarm_type=noc_pb2.ALARM_TYPE_EQUIPMENT), metadata=md)
    assert a.incident_id != b.incident_id
    merged = await noc.noc.MergeIncidents(noc_pb2.MergeIncidentsRequest(
        incident_id=a.incident_id, source_incident_ids=[b.incident_id]), metadata=md)
    assert merged.incident.alarm_count == 2
    src = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=b.incident_id), metadata=md)
    assert src.incident.merged_into == a.incident_id and src.incident.state == noc_pb2.INCIDENT_STATE_CLOSED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.MergeIncidents(noc_pb2.MergeIncidentsRequest(
            incident_id=a.incident_id, source_incident_ids=[b.incident_id]), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err.value) == "INCIDENT_MERGED"
    split = await noc.noc.SplitIncident(noc_pb2.SplitIncidentRequest(
        incident_id=a.incident_id, alarm_ids=[b.alarm.id], title="cooling"), metadata=md)
    assert split.new_incident.title == "cooling" and split.incident.alarm_count == 1
    assert split.new_incident.kind == noc_pb2.INCIDENT_KIND_EQUIPMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.SplitIncident(noc_pb2.SplitIncidentRequest(
            incident_id=a.incident_id, alarm_ids=[a.alarm.id]), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err.value) == "SPLIT_ALL_ALARMS"


async def test_tenant_viewer_sees_only_its_incidents_and_tenancies(noc, site):
    mine = await noc.noc.PostAlarm(_post("ten-1", probable_cause="low_fuel",
                                         alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL), metadata=noc.md("service"))
    theirs = await noc.noc.PostAlarm(_post("ten-2", site="LIF-0002", probable_cause="low_fuel",
                                           alarm_type=noc_pb2.ALARM_TYPE_ENVIRONMENTAL), metadata=noc.md("service"))
    acme = noc.md("tenant_viewer", "acme")
    got = await noc.noc.GetIncident(noc_pb2.GetIncidentRequest(incident_id=mine.incident_id), metadata=acme)
    assert list(got.incident.tenant_ids) == ["acme"] and {i.tenant_id for i in got.incident.impacts} == {"acme"}
    for call, req in ((noc.noc.GetIncident, noc_pb2.GetIncidentRequest(incident_id=theirs.incident_id)),
                      (noc.noc.GetAlarm, noc_pb2.GetAlarmRequest(alarm_id=theirs.alarm.id)),
                      (noc.noc.AcknowledgeIncident, noc_pb2.AcknowledgeIncidentRequest(incident_id=theirs.incident_id))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, metadata=acme)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # visible but not theirs to change: 403
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.AcknowledgeIncident(noc_pb2.AcknowledgeIncidentRequest(incident_id=mine.incident_id),
                                          metadata=acme)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await noc.noc.ListIncidents(noc_pb2.ListIncidentsRequest(page={"size": 1000}), metadata=acme)
    assert listed.incidents and all(list(i.tenant_ids) == ["acme"] for i in listed.incidents)
    assert theirs.incident_id not in {i.id for i in listed.incidents}
    other = await noc.noc.ListIncidents(noc_pb2.ListIncidentsRequest(tenant_id="beta"), metadata=acme)
    assert not other.incidents
    alarms = await noc.noc.ListAlarms(noc_pb2.ListAlarmsRequest(page={"size": 1000}), metadata=acme)
    assert alarms.alarms and all("LIF-0002" != a.site_id for a in alarms.alarms)


async def test_rest_acknowledge_resolve_and_errors_never_500(noc, site):
    posted = await noc.noc.PostAlarm(_post("rest-1", probable_cause="rectifier_failure"), metadata=noc.md("service"))
    iid = posted.incident_id
    h = {**J, "Authorization": f"Bearer {noc.token('noc_operator', subject='erin')}"}
    async with httpx.AsyncClient(base_url=noc.base, timeout=30) as http:
        r = await http.post(f"/api/v1/incidents/{iid}:acknowledge", headers=h, json={"note": "looking"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "INCIDENT_STATE_ACKNOWLEDGED"
        r = await http.post(f"/api/v1/incidents/{iid}:resolve", headers=h, json={"note": "replaced module"})
        assert r.status_code == 200 and r.json()["state"] == "INCIDENT_STATE_RESOLVED"
        r = await http.post(f"/api/v1/incidents/{iid}:acknowledge", headers=h, json={})
        assert r.status_code == 400 and r.json()["code"] == 9  # FAILED_PRECONDITION
        r = await http.post("/api/v1/alarms", headers=h, json={
            "source": "nms-acme", "sourceAlarmId": "rest-2", "siteId": "NOPE-1", "alarmType": "ALARM_TYPE_EQUIPMENT",
            "probableCause": "site_down", "perceivedSeverity": "PERCEIVED_SEVERITY_MAJOR"})
        assert r.status_code == 400 and r.json()["code"] == 3
        r = await http.get("/api/v1/incidents", headers=h, params={"state": "INCIDENT_STATE_RESOLVED"})
        assert r.status_code == 200 and iid in {i["id"] for i in r.json()["incidents"]}
        r = await http.get("/api/v1/noc/stats", headers=h, params={
            "range.startTime": "2020-01-01T00:00:00Z", "range.endTime": "2100-01-01T00:00:00Z",
            "groupBy": "STATS_GROUP_BY_SITE"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert int(body["overall"]["incidents"]) >= 1 and body["groups"]


async def test_stats_over_a_range(noc, site):
    await wait_for(lambda: noc.incidents(site_id=site), what="incidents on the site")
    now = time.time()
    req = noc_pb2.GetNocStatsRequest(group_by=noc_pb2.STATS_GROUP_BY_TENANT)
    req.range.start_time.CopyFrom(ts(now - 3600))
    req.range.end_time.CopyFrom(ts(now + 60))
    staff = await noc.noc.GetNocStats(req, metadata=noc.md("viewer"))
    assert staff.overall.incidents >= 1 and staff.overall.raw_alarms >= staff.overall.incidents
    acme = await noc.noc.GetNocStats(req, metadata=noc.md("tenant_viewer", "acme"))
    assert [g.key for g in acme.groups] == ["acme"]
    bad = noc_pb2.GetNocStatsRequest()
    bad.range.start_time.CopyFrom(ts(now))
    bad.range.end_time.CopyFrom(ts(now - 10))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await noc.noc.GetNocStats(bad, metadata=noc.md("viewer"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
