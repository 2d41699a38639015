"""`make bench-notify`: an incident storm through the notifier to 50 webhook receivers.

Its own embedded PostgreSQL and NATS, the notifier as its own process (`python -m
workers.notifier.worker`), 50 signing-checking HTTP receivers (workers/notifier/sink.py) and 50
routes (one region each, one receiver each). Phases, in one run:

  baseline   the same number of signed POSTs sent straight from this process to the receivers at
             the same pace (no platform): the floor of the latency;
  storm      N incident events (default 2,000 in 30 s, well over "2,000 in a minute") published as
             the NOC publishes them; routes group by incident with group wait 0, so every event is
             one webhook: sent, duplicates (target 0), latency from publish to receipt p50/p99
             (target p99 <= 1 s) and the notifier's throughput and CPU;
  grouping   N more events on routes grouping by region (group wait 1 s, group interval 5 s):
             the grouping ratio (events per webhook) and its latency.

Prints a table, then one JSON line. BENCH_NOTIFY_EVENTS / BENCH_NOTIFY_SECONDS change the storm.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.notifications.v1 import notifications_pb2_grpc

from bench.procs import cpu_seconds, wait_grpc
from mesh import db, events, subjects
from mesh.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from mesh.migrate import migrate
from workers.notifier import domain
from workers.notifier.sink import WebhookReceiver

RECEIVERS = 50
EIDS: dict[str, str] = {}
SECRET = "bench-signing-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def incident_event(region: str, site: str) -> tuple[str, bytes, str]:
    inc = noc_pb2.Incident(id=str(uuid.uuid4()), title=f"{site}: mains failure", kind=noc_pb2.INCIDENT_KIND_POWER,
                           severity=noc_pb2.INCIDENT_SEVERITY_MAJOR, state=noc_pb2.INCIDENT_STATE_OPEN,
                           site_ids=[site], region=region, tenant_ids=["acme"])
    inc.impacts.add(tenant_id="acme", tenancy_id=f"t-{site}", site_id=site, service_down=True)
    inc.update_time.GetCurrentTime()
    subject = subjects.noc_incident_subject("opened")
    env = events.make_envelope(event_type=subject, source="noc", subject=subject, tenant_ids=["acme"],
                               payload=noc_pb2.IncidentEvent(change=noc_pb2.INCIDENT_CHANGE_OPENED, incident=inc))
    return inc.id, env.SerializeToString(), env.id


async def storm(js, n: int, seconds: float, regions: list[str], sent_at: dict[str, float]) -> float:
    """Publish n events evenly over `seconds`; returns the publishing time."""
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i * seconds / n
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        iid, data, eid = incident_event(regions[i % len(regions)], f"TWR-{i:05d}")
        sent_at[iid] = time.time()
        EIDS[iid] = eid
        await events.publish(js, subjects.noc_incident_subject("opened"), data, msg_id=eid)
    return time.perf_counter() - t0


async def baseline(receivers: list[WebhookReceiver], n: int, seconds: float) -> list[float]:
    """Signed POSTs straight to the receivers at the storm's pace: receipt - send, seconds."""
    lat: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        t0 = time.perf_counter()
        tasks = []

        async def one(i: int) -> None:
            body = domain.encode_body({"kind": "baseline", "i": i, "notification_id": str(uuid.uuid4())})
            r = receivers[i % len(receivers)]
            start = time.time()
            key = str(uuid.uuid4())
            try:
                await client.post(f"{r.url}/baseline", content=body, headers={
                    "Content-Type": "application/json", domain.SIGNATURE_HEADER: domain.sign(SECRET, int(start), body),
                    domain.IDEMPOTENCY_HEADER: key})
            except httpx.HTTPError:
                return  # counted as missing from the baseline
            got = [x for x in reversed(r.received) if x.idempotency_key == key]
            if got:
                lat.append(got[0].time - start)

        for i in range(n):
            delay = t0 + i * seconds / n - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return lat


async def wait_receipts(receivers: list[WebhookReceiver], path: str, want: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if sum(len([x for x in r.received if x.path == path]) for r in receivers) >= want:
            return
        await asyncio.sleep(0.1)


async def run(n: int, seconds: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="towerco-bench-notify-"))
    pg = EmbeddedPostgres(tmp / "pg", fast=True).start()
    nats = EmbeddedNats(tmp / "nats").start()
    proc = svc = None
    try:
        await migrate(pg.url, components=["notifications"])
        pool = await db.create_pool(pg.url, min_size=1, max_size=4)
        nc = await events.connect(nats.url, name="bench-notify")
        js = nc.jetstream()
        await events.ensure_streams(js)
        receivers = [await WebhookReceiver(secret=SECRET).start() for _ in range(RECEIVERS)]
        env = dict(os.environ, DATABASE_URL=pg.url, NATS_URL=nats.url, TOWERCO_LOG_LEVEL="warning",
                   TOWERCO_HOME=str(tmp / "home"))
        port = free_port()
        svc = subprocess.Popen([sys.executable, "-m", "services.notifications.server"], cwd=ROOT,  # noqa: ASYNC220
                               env=dict(env, TOWERCO_NOTIFICATIONS_PORT=str(port)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_grpc(f"127.0.0.1:{port}")
        from mesh.auth import mint_token
        from mesh.config import Settings

        token = mint_token(subject="bench", tenant="*", roles=["admin"], settings=Settings.from_env(env))
        md = (("authorization", f"Bearer {token}"),)
        storm_regions = [f"storm-{i:02d}" for i in range(RECEIVERS)]
        group_regions = [f"group-{i:02d}" for i in range(RECEIVERS)]
        async with __import__("grpc").aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            api = notifications_pb2_grpc.NotificationsServiceStub(ch)
            for i, r in enumerate(receivers):
                for path, reg, grouping in (("/storm", storm_regions[i], {}),
                                            ("/group", group_regions[i], {"group_by": ["region"],
                                                                          "group_wait_seconds": 1,
                                                                          "group_interval_seconds": 5})):
                    c = (await api.CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
                        name=f"r{i}{path}", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url=r.url + path,
                        signing_secret=SECRET)), metadata=md)).channel
                    await api.CreateRoute(pb.CreateRouteRequest(route=pb.Route(
                        name=f"{reg}", match=pb.IncidentMatcher(regions=[reg]), channel_ids=[c.id], **grouping)),
                        metadata=md)
        prof = os.environ.get("BENCH_NOTIFY_PROFILE")
        wrap = [str(Path(sys.executable).parent / "pyinstrument"), "-o", prof, "-r", "text"] if prof else [sys.executable]
        proc = subprocess.Popen([*wrap, "-m", "workers.notifier.worker"], cwd=ROOT,  # noqa: ASYNC220
                                env=dict(env, TOWERCO_NOTIFIER_TICK_S="0.2", TOWERCO_NOTIFIER_CONCURRENCY="64"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(3.0)  # the notifier's consumer is up

        base_lat = await baseline(receivers, n, seconds)

        sent_at: dict[str, float] = {}
        cpu0 = cpu_seconds({"notifier": [proc.pid]})["notifier"]
        t_pub = time.time()
        pub_s = await storm(js, n, seconds, storm_regions, sent_at)
        await wait_receipts(receivers, "/storm", n, within=120)
        reqs = [x for r in receivers for x in r.received if x.path == "/storm"]
        cpu1 = cpu_seconds({"notifier": [proc.pid]})["notifier"]
        keys = [x.idempotency_key for x in reqs if 200 <= x.status < 300]
        lat = []
        for x in reqs:
            for inc in x.json()["incidents"]:
                if inc["id"] in sent_at:
                    lat.append(x.time - sent_at[inc["id"]])
        span = max(x.time for x in reqs) - t_pub if reqs else float("nan")
        if os.environ.get("BENCH_NOTIFY_DUMP"):
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT n.incident_ids[1] AS iid, extract(epoch from n.create_time) AS c,"
                                        " extract(epoch from a.start_time) AS s FROM notifications.notification n"
                                        " JOIN notifications.delivery_attempt a ON a.notification_id = n.id")
                pe = {r["event_id"]: float(r["p"]) for r in await conn.fetch(
                    "SELECT event_id, extract(epoch from process_time) AS p FROM notifications.processed_event")}
            db_t = {r["iid"]: (pe.get(EIDS.get(r["iid"], ""), 0), float(r["c"]), float(r["s"])) for r in rows}
            recv = {inc["id"]: x.time for x in reqs for inc in x.json()["incidents"]}
            dump = json.dumps([[sent_at[i], *db_t.get(i, (0, 0, 0)), recv.get(i, 0)] for i in sent_at])
            await asyncio.to_thread(Path(os.environ["BENCH_NOTIFY_DUMP"]).write_text, dump)

        g_at: dict[str, float] = {}
        await storm(js, n, seconds, group_regions, g_at)
        await asyncio.sleep(8.0)  # the last group interval
        greqs = [x for r in receivers for x in r.received if x.path == "/group"]
        g_incidents = sum(len(x.json()["incidents"]) for x in greqs)
        first_seen: dict[str, float] = {}
        for x in greqs:
            for inc in x.json()["incidents"]:
                first_seen.setdefault(inc["id"], x.time)
        g_lat = [first_seen[i] - g_at[i] for i in g_at if i in first_seen]
        async with pool.acquire() as conn:
            dead = await conn.fetchval("SELECT count(*) FROM notifications.notification WHERE state = 4")
        await nc.close()
        await pool.close()
        for r in receivers:
            await r.stop()
        return {
            "events": n, "publish_s": round(pub_s, 2), "receivers": RECEIVERS,
            "baseline_sent": len(base_lat), "baseline_p50_ms": round(pct(base_lat, 0.5) * 1000, 1), "baseline_p99_ms": round(pct(base_lat, 0.99) * 1000, 1),
            "sent": len(keys), "duplicates": len(keys) - len(set(keys)), "dead": dead,
            "bad_signatures": sum(1 for x in reqs if not x.signature_ok),
            "latency_p50_ms": round(pct(lat, 0.5) * 1000, 1), "latency_p99_ms": round(pct(lat, 0.99) * 1000, 1),
            "latency_max_ms": round(max(lat) * 1000, 1) if lat else None,
            "p99_vs_baseline": round(pct(lat, 0.99) / max(pct(base_lat, 0.99), 1e-6), 1),
            "throughput_per_s": round(len(keys) / span, 1) if span == span and span > 0 else None,
            "notifier_cpu_ms_per_notification": round((cpu1 - cpu0) * 1000 / max(1, len(keys)), 2),
            "grouping_events": n, "grouping_webhooks": len(greqs), "grouping_incidents_told": g_incidents,
            "grouping_ratio": round(n / max(1, len(greqs)), 1),
            "grouping_latency_p50_ms": round(pct(g_lat, 0.5) * 1000, 1),
            "grouping_latency_p99_ms": round(pct(g_lat, 0.99) * 1000, 1),
            "target_p99_ms": 1000, "p99_ok": pct(lat, 0.99) <= 1.0, "duplicates_ok": len(keys) == len(set(keys)),
            "statistics_mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        }
    finally:
        for p in (proc, svc):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        nats.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    n = int(os.environ.get("BENCH_NOTIFY_EVENTS", "2000"))
    seconds = float(os.environ.get("BENCH_NOTIFY_SECONDS", "30"))
    f = asyncio.run(run(n, seconds))
    rows = [("phase", "what", "value"),
            ("baseline", "direct POST p50 / p99 ms", f"{f['baseline_p50_ms']} / {f['baseline_p99_ms']}"),
            ("storm", f"events published in {f['publish_s']} s", str(f["events"])),
            ("storm", "webhooks sent (accepted)", str(f["sent"])),
            ("storm", "duplicates (target 0)", str(f["duplicates"])),
            ("storm", "dead / bad signatures", f"{f['dead']} / {f['bad_signatures']}"),
            ("storm", "event -> receipt p50 / p99 / max ms", f"{f['latency_p50_ms']} / {f['latency_p99_ms']} / "
                                                              f"{f['latency_max_ms']}"),
            ("storm", "p99 vs baseline p99", f"x{f['p99_vs_baseline']} (target p99 <= 1000 ms: "
                                             f"{'ok' if f['p99_ok'] else 'MISSED'})"),
            ("storm", "notifier throughput / CPU", f"{f['throughput_per_s']} /s, "
                                                   f"{f['notifier_cpu_ms_per_notification']} ms CPU each"),
            ("grouping", "events -> webhooks (ratio)", f"{f['grouping_events']} -> {f['grouping_webhooks']} "
                                                       f"(x{f['grouping_ratio']})"),
            ("grouping", "first notice p50 / p99 ms", f"{f['grouping_latency_p50_ms']} / "
                                                      f"{f['grouping_latency_p99_ms']}")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(json.dumps({"bench": "notify", **f}))


if __name__ == "__main__":
    main()
