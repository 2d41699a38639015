"""The chaos suite: the platform on a 3-node NATS JetStream cluster (streams at replicas 3) with
two replicas of the telemetry service, the ingestor, the kpi_calculator and the aiops_engine
(partitions shared by leases), the Sites service, the NOC service and the gateway, each its own
process. While a sender ingests at a steady rate with known ground truth, the faults come one
after another:

  kill -9 the NOC (then restart it) while anomalies flow · kill -9 a NATS node (then restart it)
  · kill -9 the TELEMETRY stream leader (then restart it) · kill -9 an ingestor, a
  kpi_calculator, an aiops_engine replica and a telemetry service replica (each restarted, as a
  supervisor would) · restart PostgreSQL · SIGSTOP an ingestor past its ack wait · SIGSTOP a
  kpi_calculator replica past its lease ttl.

At the end, exact accounting: acknowledged samples = stored samples (count and sum); the KPI
minute aggregates equal a clean recomputation from the stored samples; every expected anomaly
(a DC bus dip below the band) is stored exactly once; the NOC holds one alarm per anomaly id and
exactly the incidents its correlation rules make of them (a dc_bus_low anomaly: one POWER
incident per site, root cause dc_low), none duplicated, none without an alarm, no alarm outside
an incident, each incident's opening published once (outbox, JetStream) and received once by a
WebSocket WatchIncidents feed held open through the gateway over the faults; nothing was
dead-lettered; every gateway request during the faults either succeeded or failed fast with
503, and the gateway recovered without anyone touching it. A fault report table is printed.
The sites have no tenancy, so the NOC asks the KPI service for no SLA exposure (none runs).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
import uuid
from datetime import UTC, datetime

import grpc
import nats.errors
import orjson
import pytest
from chaos_support import (
    FaultRecord,
    IncidentFeed,
    Probe,
    Proc,
    Sender,
    pg_action,
    report_table,
    service_port,
    until,
)
from towerco.events.v1 import events_pb2
from towerco.noc.v1 import noc_pb2
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2 as tpb

from bench.procs import wait_grpc
from mesh import db, events, subjects
from mesh.auth import mint_token
from mesh.config import Settings
from mesh.embedded import EmbeddedNatsCluster, free_port
from mesh.migrate import migrate
from services.noc import domain as noc_domain
from workers.kpi_calculator import domain as kpi_domain

pytestmark = pytest.mark.slow

PARTITIONS = 8
SITES = 16
ACK_WAIT_S = 3.0
LEASE_TTL_S = 3.0
LEASE_HEARTBEAT_S = 0.5
STOP_S = 5.0  # SIGSTOP longer than the ack wait
GATEWAY_FAST_S = 3.0  # a failing gateway request answers within this


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory):
    stack.require_embedded()
    c = EmbeddedNatsCluster(tmp_path_factory.mktemp("chaos") / "nats").start()
    try:
        yield c
    finally:
        c.stop()


async def lease_owners(pool, schema: str, group: str) -> dict[int, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT partition, member FROM {schema}.partition_lease WHERE grp = $1 "
                                "AND owner IS NOT NULL AND expires_at > now()", group)
    return {r["partition"]: r["member"] for r in rows}


async def test_faults_on_a_cluster_lose_and_double_nothing(stack, cluster, tmp_path, capsys):
    u = uuid.uuid4().hex[:5]
    prefix = f"CHAOS{u.upper()}"
    kpi_group, aiops_group = f"chaos-kpi-{u}", f"chaos-aiops-{u}"
    await migrate(stack.database_url)
    settings = Settings.from_env({"DATABASE_URL": stack.database_url})
    admin = mint_token(subject="chaos", tenant="*", roles=["admin"], settings=settings)
    service = mint_token(subject="chaos", tenant="*", roles=["service"], settings=settings)

    sites_port, tel_ports, gw_port = service_port(), [service_port(), service_port()], free_port()
    noc_port = service_port()
    env = {k: v for k, v in stack.env().items() if not k.startswith("TOWERCO_")}
    env.update(NATS_URL=cluster.url, TOWERCO_NATS_REPLICAS="3", TOWERCO_PARTITIONS=str(PARTITIONS),
               TOWERCO_LOG_LEVEL="warning", TOWERCO_SITES_PORT=str(sites_port),
               TOWERCO_SITES_TARGET=f"127.0.0.1:{sites_port}",
               TOWERCO_LEASE_TTL_S=str(LEASE_TTL_S), TOWERCO_LEASE_HEARTBEAT_S=str(LEASE_HEARTBEAT_S))
    procs: dict[str, Proc] = {}

    def proc(name: str, module: str, **extra: str) -> Proc:
        procs[name] = Proc(name, module, {**env, **extra}, tmp_path)
        return procs[name]

    pool = await db.create_pool(stack.database_url, min_size=1, max_size=4)
    nc = await events.connect(cluster.url, name="chaos")
    js = nc.jetstream()
    sender = probe = feed = None
    tasks: list[asyncio.Task] = []
    try:
        await events.ensure_streams(js, replicas=3)
        proc("sites", "services.sites.server").start()
        await wait_grpc(f"127.0.0.1:{sites_port}", 90)
        site_ids = [f"{prefix}-{i:02d}" for i in range(SITES)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sites_port}") as ch:
            st = sites_pb2_grpc.SitesServiceStub(ch)
            md = (("authorization", f"Bearer {admin}"),)
            for sid in site_ids:
                await st.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                    id=sid, name=sid, region=f"chaos-{u}", location={"latitude": -1.0, "longitude": 36.0})),
                    metadata=md, timeout=30)
        # the NOC: its anomaly consumer on the cluster, the register from Sites; no KPI service runs
        # (the chaos sites have no tenancy, so there is no SLA exposure to ask for; a KPI service
        # that cannot answer is tolerated anyway: exposure "unknown", services/noc/facts.py)
        proc("noc", "services.noc.server", TOWERCO_NOC_PORT=str(noc_port), TOWERCO_NOC_DURABLE=f"chaos-noc-{u}",
             TOWERCO_NOC_ACK_WAIT_S=str(ACK_WAIT_S), TOWERCO_KPI_TARGET=f"127.0.0.1:{free_port()}").start()
        for i, port in enumerate(tel_ports):
            proc(f"telemetry-{i + 1}", "services.telemetry.server", TOWERCO_TELEMETRY_PORT=str(port)).start()
        proc("gateway", "gateway.server", TOWERCO_GATEWAY_PORT=str(gw_port), TOWERCO_GATEWAY_SERVICES="sites,noc",
             TOWERCO_NOC_TARGET=f"127.0.0.1:{noc_port}",
             TOWERCO_GATEWAY_RATE_LIMIT="0", TOWERCO_GATEWAY_TIMEOUT_S="5").start()
        for i in (1, 2):
            proc(f"ingestor-{i}", "workers.ingestor.worker", TOWERCO_INGESTOR_ACK_WAIT_S=str(ACK_WAIT_S),
                 TOWERCO_INGESTOR_CONCURRENCY="1").start()
            proc(f"kpi_calculator-{i}", "workers.kpi_calculator.worker", TOWERCO_KPI_PARTITIONS="auto",
                 TOWERCO_KPI_REPLICA=f"r{i}", TOWERCO_KPI_DURABLE_PREFIX=kpi_group,
                 TOWERCO_KPI_ACK_WAIT_S=str(ACK_WAIT_S)).start()
            proc(f"aiops_engine-{i}", "workers.aiops_engine.worker", TOWERCO_AIOPS_PARTITIONS="auto",
                 TOWERCO_AIOPS_REPLICA=f"r{i}", TOWERCO_AIOPS_DURABLE_PREFIX=aiops_group,
                 TOWERCO_AIOPS_ACK_WAIT_S=str(ACK_WAIT_S), TOWERCO_AIOPS_RETRAIN_S="0").start()
        for port in (*tel_ports, noc_port):
            await wait_grpc(f"127.0.0.1:{port}", 120)

        async def shared(schema: str, group: str):
            owners = await lease_owners(pool, schema, group)
            return len(owners) == PARTITIONS and set(owners.values()) == {"r1", "r2"}

        await until(lambda: shared("kpi", kpi_group), within=120, what="kpi partitions shared by r1 and r2")
        await until(lambda: shared("aiops", aiops_group), within=120, what="aiops partitions shared by r1 and r2")

        # ground truth: the sites' DC bus dips below the band for 3 steps, one site after another
        dips: dict[tuple[int, int], bool] = {}
        expected: set[tuple[str, float]] = set()
        now = time.time()
        t0 = float((math.floor(now / 3600) - 3) * 3600)
        for i in range(8):
            step = 15 + 22 * i
            for k in range(3):
                dips[(i, step + k)] = True
            expected.add((site_ids[i], t0 + step * 15.0))
        last_dip = max(s for _, s in dips)
        sender = Sender([f"127.0.0.1:{p}" for p in tel_ports], service, site_ids, t0, dips)
        probe = Probe(f"http://127.0.0.1:{gw_port}/api/v1/sites/{site_ids[0]}", admin)
        await until(lambda: _http_ok(probe.url, admin), within=60, what="gateway answering")
        feed = IncidentFeed(f"ws://127.0.0.1:{gw_port}/api/v1/incidents:watch", admin, query=f"region=chaos-{u}")
        tasks = [asyncio.create_task(sender.run()), asyncio.create_task(probe.run()),
                 asyncio.create_task(feed.run())]
        await until(lambda: sender.steps >= 10, within=60, what="the sender going")
        clock0 = time.monotonic()
        rows: list[FaultRecord] = []

        def record(fault: str, t: float, recovered: float | None, note: str = "", end: float | None = None) -> None:
            window = probe.between(t, (end or time.monotonic()) + 1.0)
            statuses = collections.Counter(s for _, s, _ in window)
            rows.append(FaultRecord(fault, t - clock0, recovered, note,
                                    " ".join(f"{s}x{n}" for s, n in sorted(statuses.items()))))

        async def stored() -> tuple[int, float]:
            async with pool.acquire() as conn:
                r = await conn.fetchrow("SELECT count(*), coalesce(sum(value), 0) FROM telemetry.samples "
                                        "WHERE site_id = ANY($1::text[])", site_ids)
            return int(r[0]), float(r[1])

        async def stream_leader() -> str:
            info = await js.stream_info(events.TELEMETRY_STREAM)
            return info.cluster.leader if info.cluster else ""

        async def noc_alarms() -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT count(*) FROM noc.alarm_source s JOIN noc.alarm a "
                                               "ON a.id = s.alarm_id WHERE a.site_id = ANY($1::text[])", site_ids))

        # 0. kill -9 the NOC once it correlated the first anomaly, while the next ones flow; restart
        await until(noc_alarms, within=90, what="the NOC correlating the first anomaly")
        before = await noc_alarms()
        t = time.monotonic()
        procs["noc"].kill9()
        await asyncio.sleep(2.0)
        procs["noc"].start()
        await until(lambda: _grew_to(noc_alarms, before), within=90, what="the restarted NOC correlating again")
        record("kill -9 noc, restart (anomalies flowing)", t, time.monotonic() - t,
               f"{before} alarm(s) before the kill; the restart resumed the durable consumer")

        # 1. kill -9 a NATS node that leads nothing of TELEMETRY, then restart it
        leader = await stream_leader()
        victim = next(i for i, n in enumerate(cluster.nodes) if n.server_name != leader)
        t = time.monotonic()
        cluster.stop(victim, kill=True)
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.restart, victim)
        await asyncio.to_thread(cluster.wait_ready)
        record(f"kill -9 NATS node {cluster.nodes[victim].server_name}, restart", t,
               time.monotonic() - t, f"acks resumed after {sender.acks_after(t) or 0:.1f}s")

        # 2. kill -9 the TELEMETRY stream leader, then restart it
        leader = await stream_leader()
        victim = cluster.node_named(leader)
        t = time.monotonic()
        cluster.stop(victim, kill=True)

        async def new_leader():
            try:
                lead = await stream_leader()
            except Exception:  # noqa: BLE001 - no leader yet
                return None
            return lead if lead and lead != leader else None

        elected = await until(new_leader, within=60, what="a new TELEMETRY leader")
        elected_s = time.monotonic() - t
        await until(lambda: sender.last_ack > t + elected_s, within=60, what="acks after the election")
        await asyncio.to_thread(cluster.restart, victim)
        await asyncio.to_thread(cluster.wait_ready)
        record(f"kill -9 stream leader {leader} -> {elected}", t, sender.acks_after(t),
               f"new leader elected in {elected_s:.1f}s")

        # 3. kill -9 an ingestor replica: the other carries on; restart it
        before = (await stored())[0]
        t = time.monotonic()
        procs["ingestor-1"].kill9()
        await until(lambda: _grew(stored, before), within=60, what="rows still growing")
        recovered = time.monotonic() - t
        procs["ingestor-1"].start()
        record("kill -9 ingestor-1, restart", t, recovered, "rows kept growing (ingestor-2)")

        # 4/5. kill -9 a kpi_calculator and an aiops_engine replica: partitions move to the other
        for name, schema, group in (("kpi_calculator", "kpi", kpi_group), ("aiops_engine", "aiops", aiops_group)):
            had = {p for p, m in (await lease_owners(pool, schema, group)).items() if m == "r1"}
            t = time.monotonic()
            procs[f"{name}-1"].kill9()

            async def all_r2(schema=schema, group=group):
                owners = await lease_owners(pool, schema, group)
                return len(owners) == PARTITIONS and set(owners.values()) == {"r2"}

            await until(all_r2, within=60, what=f"{name} partitions moved to r2")
            moved = time.monotonic() - t
            record(f"kill -9 {name} r1 ({len(had)} partitions)", t, moved,
                   f"partitions on r2 after {moved:.1f}s (lease ttl {LEASE_TTL_S:g}s)")
            t = time.monotonic()
            procs[f"{name}-1"].start()
            await until(lambda schema=schema, group=group: shared(schema, group), within=90,
                        what=f"{name} r1 rejoined")
            record(f"restart {name} r1 (rejoins)", t, time.monotonic() - t, "partitions shared again")

        # 6. kill -9 a telemetry service replica: the sender fails over; restart it
        t = time.monotonic()
        procs["telemetry-1"].kill9()
        await asyncio.sleep(1.0)
        recovered = sender.acks_after(t)
        procs["telemetry-1"].start()
        await wait_grpc(f"127.0.0.1:{tel_ports[0]}", 90)
        record("kill -9 telemetry-1, restart", t, recovered, "sender failed over to telemetry-2")

        # 7. restart PostgreSQL
        t = time.monotonic()
        await asyncio.to_thread(pg_action, stack.pg, "stop(mode='fast')")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg_action, stack.pg, "start()")
        up = time.monotonic()
        await until(lambda: any(s == 200 for tt, s, _ in probe.results if tt > up), within=60,
                    what="the gateway answering 200 after PostgreSQL came back")
        ok_at = next(tt for tt, s, _ in probe.results if tt > up and s == 200)
        record("restart PostgreSQL (fast stop, start)", t, ok_at - t, "gateway back without intervention",
               end=ok_at)

        # 8. SIGSTOP an ingestor longer than its ack wait, then SIGCONT
        t = time.monotonic()
        procs["ingestor-2"].pause()
        await asyncio.sleep(STOP_S)
        procs["ingestor-2"].resume()
        record(f"SIGSTOP ingestor-2 {STOP_S:g}s (ack wait {ACK_WAIT_S:g}s)", t, None,
               "its batches redelivered to ingestor-1")

        # 9. SIGSTOP a kpi_calculator replica past its lease ttl: the other takes its partitions
        # (PostgreSQL ends a transaction it left open), and once resumed its next batch is fenced
        t = time.monotonic()
        log_before = len(procs["kpi_calculator-2"].tail(10_000_000))
        procs["kpi_calculator-2"].pause()

        async def all_r1():
            owners = await lease_owners(pool, "kpi", kpi_group)
            return len(owners) == PARTITIONS and set(owners.values()) == {"r1"}

        try:
            await until(all_r1, within=60, what="kpi partitions moved to r1 while r2 is stopped")
            moved = time.monotonic() - t
        finally:
            procs["kpi_calculator-2"].resume()
        await until(lambda: shared("kpi", kpi_group), within=90, what="kpi r2 back in the sharing")
        log = procs["kpi_calculator-2"].tail(10_000_000)[log_before:]
        lost, fenced = log.count("lost to another replica"), log.count("relinquishes")
        assert lost > 0, "the resumed replica never noticed that its leases had moved"
        record(f"SIGSTOP kpi_calculator r2 > lease ttl {LEASE_TTL_S:g}s", t, moved,
               f"partitions on r1 after {moved:.1f}s; resumed r2 dropped {lost} lost partition(s), "
               f"{fenced} batch(es) fenced; shared again after {time.monotonic() - t:.1f}s")

        await until(lambda: sender.steps > last_dip + 8, within=120, what="the sender past the last dip")
        await asyncio.sleep(2.0)
        sender.stop.set()
        probe.stop.set()
        await asyncio.gather(*tasks[:2])
        tasks = tasks[2:]

        # -------------------------------------------------------------- exact accounting
        await until(lambda: _reached(stored, sender.acked), within=120, what="every acknowledged sample stored")
        await asyncio.sleep(2.0)  # a late duplicate would land now
        count, total = await stored()
        assert count == sender.acked, f"{count} rows stored for {sender.acked} acknowledged samples"
        assert total == pytest.approx(sender.total, abs=1e-6)

        async def drained() -> bool:
            for group in (kpi_group, aiops_group):
                for p in range(PARTITIONS):
                    info = await js.consumer_info(events.TELEMETRY_STREAM, f"{group}-{p}")
                    if info.num_pending or info.num_ack_pending:
                        return False
            return True

        await until(drained, within=120, what="the kpi and aiops consumers drained")

        async def noc_drained() -> bool:
            info = await js.consumer_info(events.EVENTS_STREAM, f"chaos-noc-{u}")
            return not (info.num_pending or info.num_ack_pending)

        await until(noc_drained, within=120, what="the NOC's anomaly consumer drained")
        await asyncio.sleep(1.0)

        async with pool.acquire() as conn:
            sample_rows = await conn.fetch("SELECT site_id, metric, tenant_id, time, value FROM telemetry.samples "
                                           "WHERE site_id = ANY($1::text[])", site_ids)
            minute_rows = await conn.fetch("SELECT site_id, (extract(epoch FROM minute) / 60)::int8 AS m, aggs "
                                           "FROM kpi.site_minute WHERE site_id = ANY($1::text[])", site_ids)
            anomalies = await conn.fetch("SELECT site_id, start_time, count(*) AS n FROM aiops.anomaly "
                                         "WHERE site_id = ANY($1::text[]) AND detector = 'rule.dc_bus_low' "
                                         "GROUP BY 1, 2", site_ids)
        clean_samples = []
        for r in sample_rows:
            s = tpb.Sample(site_id=r["site_id"], metric=r["metric"], tenant_id=r["tenant_id"], value=r["value"])
            s.time.FromDatetime(r["time"])
            clean_samples.append(s)
        clean, _, _ = kpi_domain.fold_messages([clean_samples], oldest=0.0)
        got = {(r["site_id"], r["m"]): orjson.loads(r["aggs"]) for r in minute_rows}
        assert set(got) == set(clean), "the KPI minutes differ from a clean recomputation (which minutes)"
        for key, aggs in clean.items():
            assert set(got[key]) == set(aggs), key
            for k, a in aggs.items():
                b = got[key][k]
                assert b[0] == a[0], f"{key} {k}: {b[0]} samples folded, {a[0]} stored"  # none lost, none twice
                assert b[1] == pytest.approx(a[1], abs=1e-6) and b[2] == a[2] and b[3] == a[3], (key, k, a, b)

        found = {(r["site_id"], r["start_time"].timestamp()): r["n"] for r in anomalies}
        assert set(found) == expected, f"anomalies {sorted(found)} != expected {sorted(expected)}"
        assert all(n == 1 for n in found.values()), found

        incidents = await check_incidents(pool, js, site_ids, f"chaos-{u}", {s for s, _ in expected})
        inc_ids = incidents.pop("ids")
        await until(lambda: set(feed.opened()) >= inc_ids, within=60, what="every opening on the WebSocket feed")
        await asyncio.sleep(1.0)  # a repeat would arrive now
        feed.stop.set()
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        tasks = []
        assert not [e for e in ended if isinstance(e, Exception)], f"the feed client failed: {ended}"
        assert feed.opened() == dict.fromkeys(inc_ids, 1), f"openings on the feed: {feed.opened()}"
        seqs = [int(m["sequence"]) for m in feed.received]
        assert seqs == sorted(set(seqs)), "the feed repeated or reordered a change"

        dlq = await js.stream_info(events.DLQ_STREAM)
        assert dlq.state.messages == 0, "something was dead-lettered"

        bad = [(round(tt - clock0, 1), s, round(d, 2)) for tt, s, d in probe.results
               if s not in (200, 503) or (s != 200 and d > GATEWAY_FAST_S)]
        assert not bad, f"gateway requests that neither succeeded nor failed fast with 503: {bad}"
        assert all(s == 200 for _, s, _ in probe.results[-3:]), "the gateway did not recover"

        for name, p in procs.items():
            assert p.alive(), f"{name} died: {p.tail()}"
        table = report_table(rows, sender, [
            ("stored", f"{count} samples, sum {total:.2f} = acknowledged (count and sum)"),
            ("kpi minutes", f"{len(clean)} site-minutes equal a clean recomputation"),
            ("anomalies", f"{len(found)} expected dc_bus_low anomalies, each stored once"),
            ("gateway", f"{len(probe.results)} requests: "
                        + ", ".join(f"{s} x{n}" for s, n in sorted(collections.Counter(
                            s for _, s, _ in probe.results).items()))),
            ("noc", f"{incidents['alarms']} alarms = {incidents['anomalies']} anomalies (one per anomaly id); "
                    f"{incidents['incidents']} power incidents, one per dipping site, each opened once "
                    f"(outbox and JetStream), none duplicated, none uncorrelated"),
            ("incident feed", f"WebSocket through the gateway: {len(feed.received)} changes, each opening once, "
                              f"sequences increasing; {feed.connects} connection(s) over the faults "
                              "(the gateway resumes its upstream across the NOC kill; a reconnect resumes by "
                              "afterSequence)"),
            ("run", f"{datetime.now(UTC):%H:%M:%S} UTC, faults over {time.monotonic() - clock0:.0f}s"),
        ])
        with capsys.disabled():
            print(table)
    finally:
        if sender is not None:
            sender.stop.set()
        if probe is not None:
            probe.stop.set()
        if feed is not None:
            feed.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in reversed(list(procs.values())):
            p.stop()
        if stack.pg is not None and not stack.pg.running():
            pg_action(stack.pg, "start()")
        await nc.close()
        await pool.close()


async def check_incidents(pool, js, site_ids: list[str], region: str, dipped: set[str]) -> dict:
    """The NOC's exact accounting: one alarm per stored anomaly (by source alarm id), every alarm
    in exactly one incident, one incident per (site, kind) the anomalies make (dc_bus_low: one
    POWER incident per dipping site, root cause DC bus low), no incident of the region without an
    alarm (nor a regional parent: no mains failed), and each incident's opening published once."""
    async with pool.acquire() as conn:
        anomalies = await conn.fetch("SELECT id::text AS id, site_id, detector, metrics, tenant_id FROM aiops.anomaly "
                                     "WHERE site_id = ANY($1::text[])", site_ids)
        sources = await conn.fetch("SELECT s.source_alarm_id, s.alarm_id::text AS alarm_id FROM noc.alarm_source s "
                                   "JOIN noc.alarm a ON a.id = s.alarm_id WHERE s.source = 'aiops' "
                                   "AND a.site_id = ANY($1::text[])", site_ids)
        alarms = await conn.fetch("SELECT id::text AS id, site_id, dedup_key, source_alarm_id, "
                                  "incident_id::text AS incident_id FROM noc.alarm WHERE site_id = ANY($1::text[])",
                                  site_ids)
        incidents = await conn.fetch("SELECT id::text AS id, site_id, kind, root_code, alarm_count FROM noc.incident "
                                     "WHERE site_id = ANY($1::text[]) OR region = $2", site_ids, region)
        joins = await conn.fetch("SELECT incident_id::text AS incident_id, alarm_id::text AS alarm_id "
                                 "FROM noc.incident_alarm WHERE alarm_id = ANY($1::uuid[])", [a["id"] for a in alarms])
        opened = await conn.fetch("SELECT envelope FROM noc.outbox WHERE subject = $1",
                                  subjects.noc_incident_subject("opened"))
    by_id = {a["id"]: a for a in anomalies}
    raised = [r["source_alarm_id"] for r in sources if not r["source_alarm_id"].endswith("/cleared")]
    assert sorted(raised) == sorted(by_id), f"NOC alarm sources {sorted(raised)} != anomalies {sorted(by_id)}"
    assert all(r["source_alarm_id"].removesuffix("/cleared") in by_id for r in sources), "a clear of no anomaly"
    keys = collections.Counter((a["site_id"], a["dedup_key"]) for a in alarms)
    assert all(n == 1 for n in keys.values()), f"an alarm twice: {keys}"
    want_alarms = {(a["site_id"], noc_domain.signal_from_anomaly(
        anomaly_id=a["id"], site_id=a["site_id"], detector=a["detector"], metrics=list(a["metrics"]),
        tenant_id=a["tenant_id"], severity=0,
        time=0.0, summary="", cleared=False).dedup_key) for a in anomalies}
    assert set(keys) == want_alarms, f"alarms {sorted(keys)} != {sorted(want_alarms)}"
    assert all(a["incident_id"] for a in alarms), "an alarm left uncorrelated"
    inc_ids = {i["id"] for i in incidents}
    assert all(a["incident_id"] in inc_ids for a in alarms), "an alarm joined to an incident that does not exist"
    joined = collections.Counter(j["alarm_id"] for j in joins)
    assert all(joined[a["id"]] == 1 for a in alarms), f"an alarm joined to several incidents (or none): {joined}"
    assert {(j["incident_id"], j["alarm_id"]) for j in joins} == {(a["incident_id"], a["id"]) for a in alarms}
    with_alarms = {a["incident_id"] for a in alarms}
    assert inc_ids == with_alarms, f"incidents without an alarm: {sorted(inc_ids - with_alarms)}"
    kinds = collections.Counter((i["site_id"], i["kind"]) for i in incidents)
    assert all(n == 1 for n in kinds.values()), f"a duplicate incident: {kinds}"
    want = {(a["site_id"], noc_domain.detector_cause(a["detector"]).kind) for a in anomalies}
    assert set(kinds) == want, f"incidents {sorted(kinds)} != expected {sorted(want)}"
    power = {i["site_id"]: i for i in incidents if i["kind"] == noc_domain.POWER}
    assert set(power) == dipped, f"power incidents at {sorted(power)}, DC bus dips at {sorted(dipped)}"
    assert all(i["root_code"] == "dc_low" for i in power.values()), [dict(i) for i in power.values()]

    def opened_ids(datas) -> collections.Counter:
        got: collections.Counter = collections.Counter()
        for data in datas:
            ev = noc_pb2.IncidentEvent()
            if events_pb2.Envelope.FromString(data).payload.Unpack(ev) and ev.incident.id in inc_ids:
                got[ev.incident.id] += 1
        return got

    in_outbox = opened_ids(r["envelope"] for r in opened)
    assert in_outbox == collections.Counter(inc_ids), f"openings in the NOC outbox: {in_outbox}"
    # what the outbox relay published: read the stream until every opening arrived, then 2 s more
    # (a duplicate would show)
    sub = await js.pull_subscribe(subjects.noc_incident_subject("opened"), stream=events.EVENTS_STREAM)
    datas: list[bytes] = []

    async def read(until_all: bool) -> bool:
        try:
            msgs = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            msgs = []
        datas.extend(m.data for m in msgs)
        for m in msgs:
            await m.ack()
        return until_all and set(opened_ids(datas)) >= inc_ids

    try:
        with contextlib.suppress(AssertionError):
            await until(lambda: read(True), within=60, what="every opening on JetStream")
        await read(False)
        await read(False)
    finally:
        await sub.unsubscribe()
    on_stream = opened_ids(datas)
    assert on_stream == collections.Counter(inc_ids), f"openings on JetStream: {on_stream}"
    return {"anomalies": len(by_id), "alarms": len(alarms), "incidents": len(incidents), "ids": inc_ids}


async def _grew_to(count, before: int) -> bool:
    return (await count()) > before


async def _http_ok(url: str, token: str) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(url, headers={"authorization": f"Bearer {token}"})
            return r.status_code == 200
    except httpx.HTTPError:
        return False


async def _grew(stored, before: int) -> bool:
    return (await stored())[0] > before


async def _reached(stored, want: int) -> bool:
    return (await stored())[0] >= want

