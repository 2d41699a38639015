"""TelemetryService over real gRPC, JetStream and PostgreSQL with the ingestor running: ingest
semantics, bad input, queries, snapshot, live tail, auth, poison messages."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from grpc_status import rpc_status
from telemetry_support import batch, platform
from towerco.telemetry.v1 import telemetry_pb2 as tpb

from mesh import events
from mesh.errors import violations_of


@pytest.fixture(scope="module")
async def p(stack, telemetry_db):
    async with platform(stack, ingestor=True) as plat:
        yield plat


async def fails(call, code):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, (err.value.code(), err.value.details())
    return err.value


async def test_ingest_accepts_good_samples_rejects_bad_ones_and_stores_exactly_the_accepted(p):
    sites = await p.create_sites(3)
    now = time.time()
    req = batch(sites, now - 10)
    extra = [
        ("NOPE-404", "dc_bus_v", 50.0, now, ""),  # unknown site
        (sites[0], "volts", 50.0, now, ""),  # unknown metric
        (sites[0], "dc_bus_v", 500.0, now, ""),  # out of range
        (sites[0], "dc_bus_v", float("nan"), now, ""),
        (sites[0], "door_open", 0.5, now, ""),
        (sites[0], "dc_bus_v", 50.0, now + 3600, ""),  # future
        (sites[0], "dc_bus_v", 50.0, now - 400 * 86400, ""),  # older than retention
        (sites[1], "tenant_link_up", 1.0, now, ""),  # missing tenant
    ]
    for sid, metric, value, t, tenant in extra:
        s = req.samples.add(site_id=sid, metric=metric, value=value, tenant_id=tenant)
        s.time.FromNanoseconds(int(t * 1e9))
    req.samples.add(site_id=sites[2], metric="load_a", value=12.5)  # no time
    reply = await p.telemetry.Ingest(req, metadata=p.service)
    assert (reply.accepted, reply.rejected, reply.duplicate) == (3, 9, False)
    reasons = {(r.index, r.field, r.reason) for r in reply.rejections}
    assert reasons == {
        (3, "site_id", "UNKNOWN_SITE"), (4, "metric", "UNKNOWN_METRIC"), (5, "value", "OUT_OF_RANGE"),
        (6, "value", "NOT_FINITE"), (7, "value", "NOT_BOOLEAN"), (8, "time", "IN_FUTURE"),
        (9, "time", "TOO_OLD"), (10, "tenant_id", "TENANT_REQUIRED"), (11, "time", "MISSING_TIME"),
    }
    assert all(r.message for r in reply.rejections)
    count, total = await p.wait_count(sites, 3)
    assert (count, total) == (3, 50.0 + 51.0 + 52.0)
    assert (await p.count(["NOPE-404"]))[0] == 0


async def test_resending_a_batch_stores_nothing_twice(p):
    sites = await p.create_sites(20)
    req = batch(sites, time.time() - 5)
    first = await p.telemetry.Ingest(req, metadata=p.service)
    again = await p.telemetry.Ingest(req, metadata=p.service)
    assert first.accepted == again.accepted == 20
    assert not first.duplicate and again.duplicate
    await p.wait_count(sites, 20)
    await asyncio.sleep(0.5)
    assert (await p.count(sites))[0] == 20


async def test_site_created_after_start_is_known_at_once(p):
    [site] = await p.create_sites(1)
    reply = await p.telemetry.Ingest(batch([site], time.time()), metadata=p.service)
    assert reply.accepted == 1


async def test_malformed_and_oversized_requests(p):
    [site] = await p.create_sites(1)
    err = await fails(p.telemetry.Ingest(tpb.IngestRequest(batch_id=""), metadata=p.service),
                      grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in violations_of(rpc_status.from_call(err))] == ["batch_id"]
    too_many = batch([site] * 10_001, time.time())
    err = await fails(p.telemetry.Ingest(too_many, metadata=p.service), grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in violations_of(rpc_status.from_call(err))] == ["samples"]
    huge = batch(["X" * 600] * 9000, time.time())  # > 4 MiB on the wire
    assert huge.ByteSize() > 4 * 1024 * 1024
    await fails(p.telemetry.Ingest(huge, metadata=p.service), grpc.StatusCode.RESOURCE_EXHAUSTED)
    # the server is still fine
    assert (await p.telemetry.Ingest(batch([site], time.time()), metadata=p.service)).accepted == 1


async def test_roles(p):
    [site] = await p.create_sites(1)
    await fails(p.telemetry.Ingest(batch([site], time.time())), grpc.StatusCode.UNAUTHENTICATED)
    await fails(p.telemetry.Ingest(batch([site], time.time()), metadata=p.md("viewer")),
                grpc.StatusCode.PERMISSION_DENIED)
    await fails(p.telemetry.LatestSnapshot(tpb.LatestSnapshotRequest(site_id=site), metadata=p.md(
        "tenant_viewer", tenant="someone-else")), grpc.StatusCode.NOT_FOUND)


async def test_tenant_viewer_sees_its_sites_and_only_its_own_tenancy_series(p):
    mine, other = f"op{uuid.uuid4().hex[:6]}", f"op{uuid.uuid4().hex[:6]}"
    [site] = await p.create_sites(1, tenants=(mine, other))
    req = tpb.IngestRequest(batch_id=uuid.uuid4().hex)
    for tenant in (mine, other):
        req.samples.add(site_id=site, metric="tenant_link_up", tenant_id=tenant, value=1.0).time.GetCurrentTime()
    req.samples.add(site_id=site, metric="dc_bus_v", value=53.0).time.GetCurrentTime()
    assert (await p.telemetry.Ingest(req, metadata=p.service)).accepted == 3
    await p.wait_count([site], 3)
    viewer = p.md("tenant_viewer", tenant=mine)
    snap = await p.telemetry.LatestSnapshot(tpb.LatestSnapshotRequest(site_id=site), metadata=viewer)
    assert sorted((s.metric, s.tenant_id) for s in snap.samples) == [("dc_bus_v", ""), ("tenant_link_up", mine)]
    staff = await p.telemetry.LatestSnapshot(tpb.LatestSnapshotRequest(site_id=site), metadata=p.md("viewer"))
    assert len(staff.samples) == 3
    rng = {"start_time": {"seconds": int(time.time()) - 600}, "end_time": {"seconds": int(time.time()) + 600}}
    q = await p.telemetry.QuerySamples(tpb.QuerySamplesRequest(site_id=site, range=rng), metadata=viewer)
    assert sorted((s.metric, s.tenant_id) for s in q.series) == [("dc_bus_v", ""), ("tenant_link_up", mine)]


async def test_ingest_stream_sums_every_batch(p):
    sites = await p.create_sites(5)
    now = time.time()

    async def requests():
        for k in range(10):
            req = batch(sites, now - 100 + k)
            req.samples.add(site_id="UNKNOWN-1", metric="dc_bus_v", value=1.0).time.FromNanoseconds(int(now * 1e9))
            yield tpb.IngestStreamRequest(batch_id=req.batch_id, samples=req.samples)

    reply = await p.telemetry.IngestStream(requests(), metadata=p.service)
    assert (reply.batches, reply.accepted, reply.rejected) == (10, 50, 10)
    assert {r.reason for r in reply.rejections} == {"UNKNOWN_SITE"}
    assert (await p.wait_count(sites, 50))[0] == 50


async def test_query_latest_and_aggregates(p):
    [site] = await p.create_sites(1, tenants=(f"op{uuid.uuid4().hex[:6]}",))
    base = int(time.time()) // 60 * 60 - 3600
    req = tpb.IngestRequest(batch_id=uuid.uuid4().hex)
    for i in range(60):  # one sample a minute for an hour
        for metric, value in (("dc_bus_v", 50.0 + i % 4), ("load_a", float(i))):
            s = req.samples.add(site_id=site, metric=metric, value=value)
            s.time.FromSeconds(base + 60 * i)
    s = req.samples.add(site_id=site, metric="tenant_link_up", tenant_id="opx", value=1.0)
    s.time.FromSeconds(base + 30)
    assert (await p.telemetry.Ingest(req, metadata=p.service)).accepted == 121
    await p.wait_count([site], 121)

    rng = {"start_time": {"seconds": base}, "end_time": {"seconds": base + 3600}}
    raw = await p.telemetry.QuerySamples(tpb.QuerySamplesRequest(site_id=site, metrics=["load_a"], range=rng),
                                         metadata=p.admin)
    assert [s.metric for s in raw.series] == ["load_a"]
    assert [pt.value for pt in raw.series[0].points] == [float(i) for i in range(60)]

    agg = await p.telemetry.QuerySamples(tpb.QuerySamplesRequest(
        site_id=site, metrics=["load_a"], range=rng, step={"seconds": 900},
        aggregation=tpb.AGGREGATION_AVG), metadata=p.admin)
    assert [pt.value for pt in agg.series[0].points] == [7.0, 22.0, 37.0, 52.0]
    assert [pt.time.seconds for pt in agg.series[0].points] == [base, base + 900, base + 1800, base + 2700]
    for aggregation, want in ((tpb.AGGREGATION_MAX, 14.0), (tpb.AGGREGATION_MIN, 0.0),
                              (tpb.AGGREGATION_LAST, 14.0), (tpb.AGGREGATION_COUNT, 15.0)):
        got = await p.telemetry.QuerySamples(tpb.QuerySamplesRequest(
            site_id=site, metrics=["load_a"], range=rng, step={"seconds": 900}, aggregation=aggregation),
            metadata=p.admin)
        assert got.series[0].points[0].value == want

    everything = await p.telemetry.QuerySamples(tpb.QuerySamplesRequest(site_id=site, range=rng, limit=5),
                                                metadata=p.admin)
    assert [(s.metric, s.tenant_id, len(s.points)) for s in everything.series] == [
        ("dc_bus_v", "", 5), ("load_a", "", 5), ("tenant_link_up", "opx", 1)]

    snap = await p.telemetry.LatestSnapshot(tpb.LatestSnapshotRequest(site_id=site), metadata=p.admin)
    latest = {(s.metric, s.tenant_id): (s.value, s.time.seconds) for s in snap.samples}
    assert latest == {("dc_bus_v", ""): (53.0, base + 3540), ("load_a", ""): (59.0, base + 3540),
                      ("tenant_link_up", "opx"): (1.0, base + 30)}


async def test_bad_queries_are_invalid_argument(p):
    [site] = await p.create_sites(1)
    rng = {"start_time": {"seconds": 2000}, "end_time": {"seconds": 1000}}
    err = await fails(p.telemetry.QuerySamples(tpb.QuerySamplesRequest(
        site_id=site, metrics=["bogus"], range=rng), metadata=p.admin), grpc.StatusCode.INVALID_ARGUMENT)
    # the range order is a declared rule (checked by the interceptor before the handler runs)
    assert {v.field for v in violations_of(rpc_status.from_call(err))} == {"range.end_time"}
    err = await fails(p.telemetry.QuerySamples(tpb.QuerySamplesRequest(
        site_id=site, metrics=["bogus"], range={"start_time": {"seconds": 1000}, "end_time": {"seconds": 2000}}),
        metadata=p.admin), grpc.StatusCode.INVALID_ARGUMENT)
    assert {v.field for v in violations_of(rpc_status.from_call(err))} == {"metrics[0]"}
    rng = {"start_time": {"seconds": 1000}, "end_time": {"seconds": 1_000_000_000}}
    err = await fails(p.telemetry.QuerySamples(tpb.QuerySamplesRequest(
        site_id=site, range=rng, step={"seconds": 1}, aggregation=tpb.AGGREGATION_AVG), metadata=p.admin),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in violations_of(rpc_status.from_call(err))] == ["step"]
    await fails(p.telemetry.QuerySamples(tpb.QuerySamplesRequest(site_id=site), metadata=p.admin),
                grpc.StatusCode.INVALID_ARGUMENT)
    await fails(p.telemetry.QuerySamples(tpb.QuerySamplesRequest(
        site_id="NOT-THERE", range={"start_time": {"seconds": 1}, "end_time": {"seconds": 2}}), metadata=p.admin),
        grpc.StatusCode.NOT_FOUND)


async def test_tail_streams_live_samples_of_one_site(p):
    sites = await p.create_sites(2)
    call = p.telemetry.TailSamples(tpb.TailSamplesRequest(site_id=sites[0], metrics=["load_a"]),
                                   metadata=p.md("viewer"))
    got: list = []

    async def read():
        async for msg in call:
            got.append(msg.sample)
            if len(got) == 3:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)  # the subscription is in place
    for k in range(3):
        req = batch(sites, time.time(), metric="load_a", value=lambda i, k=k: float(10 * k + i))
        req.samples.add(site_id=sites[0], metric="dc_bus_v", value=50.0).time.GetCurrentTime()
        await p.telemetry.Ingest(req, metadata=p.service)
    await asyncio.wait_for(reader, 10)
    call.cancel()
    assert [(s.site_id, s.metric, s.value) for s in got] == [(sites[0], "load_a", v) for v in (0.0, 10.0, 20.0)]


async def test_poison_message_goes_to_the_dlq_with_a_reason(p, stack):
    nc = await events.connect(stack.nats_url, name="poisoner")
    try:
        js = nc.jetstream()
        key = uuid.uuid4().hex
        await events.publish(js, "telemetry.samples.3", b"\xff\xfe not protobuf", msg_id=f"poison-{key}")
        sub = await js.subscribe("dlq.TELEMETRY.ingestor", ordered_consumer=True)
        deadline = time.monotonic() + 20
        found = None
        while found is None and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                continue
            if msg.headers.get("Towerco-Dlq-Msg-Id") == f"poison-{key}":
                found = msg
        assert found is not None, "poison message never reached the DLQ"
        assert "TelemetryBatch" in found.headers["Towerco-Dlq-Reason"]
        await sub.unsubscribe()
    finally:
        await nc.close()
