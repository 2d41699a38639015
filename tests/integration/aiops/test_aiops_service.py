"""Telemetry with known faults published to JetStream -> the real engine (its own durable
consumers) -> anomalies and predictions in PostgreSQL -> the AIOps service over gRPC (full
interceptor chain) and REST through the gateway: scoping, pages, feedback, watch with resume,
bad input."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import httpx
import pytest
from aiops_support import eventually, publish_samples, register_site, running_engine, serve_asgi, snapshots
from towerco.aiops.v1 import aiops_pb2, aiops_pb2_grpc
from towerco.common.v1 import common_pb2

from mesh import bootstrap
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import status_of, violations_of
from services.aiops.server import setup

U = uuid.uuid4().hex[:6]
SITE_A, SITE_B = f"AIA-{U.upper()}", f"AIB-{U.upper()}"
ACME, BETA = f"acme-{U}", f"beta-{U}"


def md(settings, *roles, tenant="*"):
    tok = mint_token(subject="tester", tenant=tenant, roles=list(roles), settings=settings)
    return (("authorization", f"Bearer {tok}"),)


@pytest.fixture(scope="module")
async def world(stack):
    """Two sites: A (leased by acme) loses mains and its DG fails to start; B (leased by beta)
    has its door opened. The engine runs while they report; then the service is started."""
    from mesh import db, events
    from mesh.migrate import migrate

    await migrate(stack.database_url, components=["aiops"])
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=6)
    nc = await events.connect(stack.nats_url, name="aiops-service-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    start = time.time() - 3600
    start -= start % 60
    async with running_engine(pool, js, [SITE_A, SITE_B]) as engine:
        await register_site(js, SITE_A, tenant=ACME)
        await register_site(js, SITE_B, tenant=BETA)
        await eventually(lambda: asyncio.sleep(0, engine.cfgs),
                         lambda c: SITE_A in c and SITE_B in c and c[SITE_A].tenant_ids == (ACME,))

        def outage(i, t):  # A: mains lost at minute 10 for 20 minutes; the DG never starts
            return {"mains_present": 0.0, "dc_bus_v": 50.0, "battery_soc_pct": 90.0 - (i - 40) * 0.2} \
                if 40 <= i < 120 else {}

        def door(i, t):  # B: door open from minute 5 to minute 8
            return {"door_open": 1.0} if 20 <= i < 32 else {}

        await publish_samples(js, snapshots(SITE_A, start, 160, change=outage)
                              + snapshots(SITE_B, start, 160, change=door))

        async def opened():
            async with pool.acquire() as conn:
                return {r["detector"] for r in await conn.fetch(
                    "SELECT detector FROM aiops.anomaly WHERE site_id = ANY($1::text[])", [SITE_A, SITE_B])}
        await eventually(opened, lambda d: {"rule.mains_lost", "rule.dg_fail_to_start", "rule.door_open"} <= d)

        reset_settings()
        settings = Settings.from_env()
        srv = await bootstrap.start("aiops", setup, port=0, metrics_port=-1, settings=settings)
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
        try:
            yield {"stub": aiops_pb2_grpc.AiopsServiceStub(ch), "settings": settings, "pool": pool,
                   "port": srv.port, "engine": engine, "start": start, "js": js}
        finally:
            await ch.close()
            await srv.stop(grace=1.0, drain_s=0)
            await nc.close()
            await pool.close()


async def _all(stub, req, metadata):
    out = []
    while True:
        resp = await stub.ListAnomalies(req, metadata=metadata)
        out += resp.anomalies
        if not resp.page.next_token:
            return out
        req.page.token = resp.page.next_token


async def test_anomalies_of_injected_faults_with_explanations(world):
    stub, s = world["stub"], world["settings"]
    got = await _all(stub, aiops_pb2.ListAnomaliesRequest(site_id=SITE_A), md(s, "viewer"))
    by = {a.detector: a for a in got}
    lost = by["rule.mains_lost"]
    assert lost.start_time.seconds == int(world["start"] + 40 * 15)
    assert lost.end_time.seconds == int(world["start"] + 120 * 15)
    assert lost.state == aiops_pb2.ANOMALY_STATE_CLEARED
    assert lost.tenant_ids == [ACME] and lost.region == "north"
    assert lost.explanation.features[0].name == "mains_present"
    fts = by["rule.dg_fail_to_start"]
    # start delay 60 s + 60 s grace after the mains loss
    assert fts.start_time.seconds == int(world["start"] + 40 * 15 + 120)
    assert fts.severity == aiops_pb2.SEVERITY_MAJOR
    preds = (await stub.ListPredictions(aiops_pb2.ListPredictionsRequest(site_id=SITE_A),
                                        metadata=md(s, "viewer"))).predictions
    # on battery with no DG coming: the battery's depletion, and the site going dark at that time
    assert sorted(p.kind for p in preds) == [aiops_pb2.PREDICTION_KIND_BATTERY_DEPLETION,
                                             aiops_pb2.PREDICTION_KIND_SITE_DOWN]
    battery, down = sorted(preds, key=lambda p: p.kind)
    # mains came back before the battery ran out: both were averted, not right or wrong
    assert battery.outcome == down.outcome == aiops_pb2.PREDICTION_OUTCOME_AVERTED
    assert battery.expected_time.seconds > battery.predict_time.seconds + 1800
    assert down.expected_time == battery.expected_time and down.predict_time == battery.predict_time
    assert {f.name for f in battery.inputs} == {"battery_soc_pct", "battery_bank_ah", "load_a"}
    assert {f.name for f in down.inputs} >= {"hours_on_battery", "battery_soc_pct", "battery_bank_ah", "load_a"}
    only_down = (await stub.ListPredictions(aiops_pb2.ListPredictionsRequest(
        site_id=SITE_A, kind=aiops_pb2.PREDICTION_KIND_SITE_DOWN), metadata=md(s, "viewer"))).predictions
    assert [p.id for p in only_down] == [down.id] and only_down[0].detector == "forecast.site_down"


async def test_tenant_scoping_on_every_read(world):
    stub, s = world["stub"], world["settings"]
    acme = md(s, "tenant_viewer", tenant=ACME)
    mine = await _all(stub, aiops_pb2.ListAnomaliesRequest(), acme)
    assert mine and {a.site_id for a in mine} == {SITE_A}
    other = await _all(stub, aiops_pb2.ListAnomaliesRequest(site_id=SITE_B), md(s, "viewer"))
    assert other
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetAnomaly(aiops_pb2.GetAnomalyRequest(anomaly_id=other[0].id), metadata=acme)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:  # naming another tenant: NOT_FOUND, never PERMISSION_DENIED
        await stub.ListAnomalies(aiops_pb2.ListAnomaliesRequest(tenant_id=BETA), metadata=acme)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.RecordFeedback(aiops_pb2.RecordFeedbackRequest(
            anomaly_id=other[0].id, kind=aiops_pb2.FEEDBACK_KIND_CONFIRMED), metadata=acme)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    preds = (await stub.ListPredictions(aiops_pb2.ListPredictionsRequest(), metadata=md(s, "tenant_viewer",
                                                                                        tenant=BETA))).predictions
    assert all(p.site_id != SITE_A for p in preds)
    a_pred = (await stub.ListPredictions(aiops_pb2.ListPredictionsRequest(site_id=SITE_A),
                                         metadata=md(s, "viewer"))).predictions[0]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetPrediction(aiops_pb2.GetPredictionRequest(prediction_id=a_pred.id),
                                 metadata=md(s, "tenant_viewer", tenant=BETA))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    got = await stub.GetPrediction(aiops_pb2.GetPredictionRequest(prediction_id=a_pred.id), metadata=acme)
    assert got.prediction.id == a_pred.id


async def test_cursor_pages_cover_the_list_once(world):
    stub, s = world["stub"], world["settings"]
    req = aiops_pb2.ListAnomaliesRequest(site_id=SITE_A, page=common_pb2.PageRequest(size=1))
    paged = await _all(stub, req, md(s, "viewer"))
    whole = (await stub.ListAnomalies(aiops_pb2.ListAnomaliesRequest(site_id=SITE_A),
                                      metadata=md(s, "viewer"))).anomalies
    assert [a.id for a in paged] == [a.id for a in whole] and len(whole) >= 2
    majors = await _all(stub, aiops_pb2.ListAnomaliesRequest(site_id=SITE_A, min_severity=aiops_pb2.SEVERITY_MAJOR),
                        md(s, "viewer"))
    assert majors and all(a.severity >= aiops_pb2.SEVERITY_MAJOR for a in majors)


async def test_bad_input_is_invalid_argument_with_field_violations(world):
    stub, s = world["stub"], world["settings"]
    for req, field in (
        (aiops_pb2.ListAnomaliesRequest(min_severity=99), "min_severity"),
        (aiops_pb2.ListAnomaliesRequest(page=common_pb2.PageRequest(token="!!nope")), "page.token"),
        (aiops_pb2.ListAnomaliesRequest(page=common_pb2.PageRequest(size=5000)), "page.size"),
        (aiops_pb2.ListAnomaliesRequest(site_id="X" * 40), "site_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListAnomalies(req, metadata=md(s, "viewer"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in [v.field for v in violations_of(status_of(e.value))]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.RecordFeedback(aiops_pb2.RecordFeedbackRequest(anomaly_id=str(uuid.uuid4())),
                                  metadata=md(s, "noc_operator"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetAnomaly(aiops_pb2.GetAnomalyRequest(anomaly_id="not-a-uuid"), metadata=md(s, "viewer"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_feedback_suppresses_the_rule_for_that_site_and_changes_what_the_engine_does(world):
    stub, s, engine, js = world["stub"], world["settings"], world["engine"], world["js"]
    door = [a for a in await _all(stub, aiops_pb2.ListAnomaliesRequest(site_id=SITE_B), md(s, "viewer"))
            if a.detector == "rule.door_open"][0]
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a viewer may read but not give feedback
        await stub.RecordFeedback(aiops_pb2.RecordFeedbackRequest(
            anomaly_id=door.id, kind=aiops_pb2.FEEDBACK_KIND_FALSE_POSITIVE), metadata=md(s, "viewer"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    resp = await stub.RecordFeedback(aiops_pb2.RecordFeedbackRequest(
        anomaly_id=door.id, kind=aiops_pb2.FEEDBACK_KIND_FALSE_POSITIVE, note="contractor with a key"),
        metadata=md(s, "noc_operator"))
    assert resp.anomaly.feedback == aiops_pb2.FEEDBACK_KIND_FALSE_POSITIVE
    assert resp.anomaly.feedback_note == "contractor with a key"
    await eventually(lambda: asyncio.sleep(0, engine.adjust.get(SITE_B, {})),
                     lambda a: "rule.door_open" in a and a["rule.door_open"].suppressed)
    # the door opens again: no new door anomaly on B while the rule is suppressed there
    later = world["start"] + 160 * 15
    await publish_samples(js, snapshots(SITE_B, later, 20, change=lambda i, t: {"door_open": 1.0} if i >= 5 else {}))
    await asyncio.sleep(0)

    async def last_seen():
        st = engine.states.get(SITE_B)
        return st.last_t if st else None
    await eventually(last_seen, lambda t: t is not None and t >= later + 19 * 15)
    doors = [a for a in await _all(stub, aiops_pb2.ListAnomaliesRequest(site_id=SITE_B), md(s, "viewer"))
             if a.detector == "rule.door_open"]
    assert [a.id for a in doors] == [door.id]


async def test_status_lists_every_detector(world):
    stub, s = world["stub"], world["settings"]
    st = await stub.GetDetectorStatus(aiops_pb2.GetDetectorStatusRequest(), metadata=md(s, "viewer"))
    names = {d.name: d for d in st.detectors}
    assert names["rule.mains_lost"].total_anomalies >= 1
    assert st.sites_tracked >= 2 and st.latest_sample_time.seconds > 0
    # a tenant's status counts its own sites' anomalies only
    beta = await stub.GetDetectorStatus(aiops_pb2.GetDetectorStatusRequest(),
                                        metadata=md(s, "tenant_viewer", tenant=BETA))
    counts = {d.name: d.total_anomalies for d in beta.detectors}
    assert counts["rule.mains_lost"] == 0 and counts["rule.door_open"] >= 1
    assert beta.sites_tracked == 1


async def test_watch_replays_then_resumes_after_a_sequence(world):
    stub, s = world["stub"], world["settings"]
    seen = []
    call = stub.WatchAnomalies(aiops_pb2.WatchAnomaliesRequest(site_id=SITE_A), metadata=md(s, "viewer"))
    async for msg in call:
        seen.append(msg)
        if len(seen) >= 4:
            break
    call.cancel()
    kinds = [(m.anomaly.detector, m.change) for m in seen]
    assert ("rule.mains_lost", aiops_pb2.ANOMALY_CHANGE_DETECTED) in kinds
    assert [m.sequence for m in seen] == sorted(m.sequence for m in seen)
    resumed = stub.WatchAnomalies(aiops_pb2.WatchAnomaliesRequest(site_id=SITE_A, after_sequence=seen[1].sequence),
                                  metadata=md(s, "viewer"))
    first = await resumed.read()
    resumed.cancel()
    assert first.sequence == seen[2].sequence
    # a tenant that does not lease A sees none of its changes
    beta = stub.WatchAnomalies(aiops_pb2.WatchAnomaliesRequest(site_id=SITE_A),
                               metadata=md(s, "tenant_viewer", tenant=BETA))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(beta.read(), 1.5)
    beta.cancel()


async def test_rest_and_websocket_through_the_gateway(world):
    import websockets

    from gateway.app import create_app
    from gateway.config import GatewayConfig

    s = world["settings"]
    app = create_app(GatewayConfig(services=("aiops",), targets={"aiops": f"127.0.0.1:{world['port']}"},
                                   rate_per_s=0), s)
    token = md(s, "tenant_viewer", tenant=ACME)[0][1]
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get("/api/v1/anomalies", params={"siteId": SITE_A}, headers={"authorization": token})
        assert r.status_code == 200, r.text
        body = r.json()
        assert {a["detector"] for a in body["anomalies"]} >= {"rule.mains_lost", "rule.dg_fail_to_start"}
        one = body["anomalies"][0]["id"]
        r = await http.get(f"/api/v1/anomalies/{one}", headers={"authorization": token})
        assert r.status_code == 200 and r.json()["id"] == one
        r = await http.get("/api/v1/anomalies", params={"siteId": SITE_B}, headers={"authorization": token})
        assert r.status_code == 200 and r.json().get("anomalies", []) == []
        r = await http.get("/api/v1/anomalies", params={"minSeverity": "NOPE"}, headers={"authorization": token})
        assert r.status_code == 400
        ws_url = base.replace("http://", "ws://") + f"/api/v1/anomalies:watch?siteId={SITE_A}"
        async with websockets.connect(ws_url, additional_headers={"authorization": token}) as ws:
            import json

            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["result"]["anomaly"]["siteId"] == SITE_A
