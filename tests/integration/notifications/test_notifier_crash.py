"""kill -9 of the notifier process mid-escalation and mid group wait: on restart the timers fire at
their stored due times, and nothing is sent twice (every timer is a row; a flush writes its
notifications and moves its timer in one transaction)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime

import grpc
import pytest
from notify_support import eventually, incident, publish
from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.notifications.v1 import notifications_pb2_grpc

from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.migrate import migrate
from services.notifications.server import setup
from workers.notifier.sink import SmtpSink, WebhookReceiver

pytestmark = pytest.mark.slow
SECRET = "crash-test-secret-0123456789"


def made(rec) -> float:
    return datetime.fromisoformat(rec.json()["created_at"].replace("Z", "+00:00")).timestamp()


def start_notifier(stack, durable: str, smtp_port: int) -> subprocess.Popen:
    env = stack.env()
    env.update(TOWERCO_NOTIFIER_DURABLE=durable, TOWERCO_NOTIFIER_TICK_S="0.1", TOWERCO_NOTIFIER_SMTP_PORT=str(smtp_port),
               TOWERCO_NOTIFIER_RETRY_BASE_S="0.1", TOWERCO_NOTIFIER_LEASE_S="3", TOWERCO_LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, "-m", "workers.notifier.worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def test_kill_9_mid_escalation_continues_on_time_and_sends_nothing_twice(stack):
    stack.require_embedded()
    await migrate(stack.database_url, components=["notifications"])
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=4)
    nc = await events.connect(stack.nats_url, name="notifier-crash-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    web = await WebhookReceiver(secret=SECRET).start()
    smtp = await SmtpSink().start()
    reset_settings()
    settings = Settings.from_env()
    srv = await bootstrap.start("notifications", setup, port=0, metrics_port=-1, settings=settings)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    api = notifications_pb2_grpc.NotificationsServiceStub(ch)
    admin = (("authorization", f"Bearer {mint_token(subject='t', tenant='*', roles=['admin'], settings=settings)}"),)
    durable = f"notifier-crash-{uuid.uuid4().hex[:6]}"
    proc = start_notifier(stack, durable, smtp.port)
    try:
        reg = f"crash-{uuid.uuid4().hex[:6]}"

        async def hook(path: str) -> str:
            return (await api.CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
                name=path, kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url=web.url + path, signing_secret=SECRET)),
                metadata=admin)).channel.id

        a, b, c, g = await hook("/a"), await hook("/b"), await hook("/c"), await hook("/g")
        pol = (await api.CreateEscalationPolicy(pb.CreateEscalationPolicyRequest(policy=pb.EscalationPolicy(
            name="crash", steps=[pb.EscalationStep(channel_ids=[a], escalate_after_seconds=6),
                                 pb.EscalationStep(channel_ids=[b], escalate_after_seconds=4),
                                 pb.EscalationStep(channel_ids=[c], escalate_after_seconds=60)])),
            metadata=admin)).policy.id
        await api.CreateRoute(pb.CreateRouteRequest(route=pb.Route(
            name="crash", match=pb.IncidentMatcher(regions=[reg]), escalation_policy_id=pol, channel_ids=[g],
            group_wait_seconds=5)), metadata=admin)
        inc = incident(region=reg)
        await publish(js, inc)
        step1 = (await eventually(lambda: web.accepted("/a"), lambda r: len(r) == 1, within=60))[0]
        async with pool.acquire() as conn:  # its delivery recorded (a kill between the receiver's answer and
            # that record is the one window where a repeat can arrive: with the same Idempotency-Key)
            await eventually(lambda: conn.fetchval("SELECT state FROM notifications.notification WHERE id = $1",
                                                   uuid.UUID(step1.idempotency_key)), lambda st: st == 3)
        os.kill(proc.pid, signal.SIGKILL)  # mid-escalation (step 2 due in 6 s) and mid group wait
        proc.wait(10)
        await asyncio.sleep(2.0)
        assert not web.accepted("/b") and not web.accepted("/g")  # nobody sends while it is down
        proc = start_notifier(stack, durable, smtp.port)
        step2 = (await eventually(lambda: web.accepted("/b"), lambda r: len(r) == 1, within=60))[0]
        grouped = (await eventually(lambda: web.accepted("/g"), lambda r: len(r) == 1, within=60))[0]
        assert 6.0 <= made(step2) - made(step1) < 6.0 + 15, "step 2 at its stored due time, not restarted"
        assert made(grouped) - made(step1) < 5.0 + 15 and grouped.json()["incidents"][0]["id"] == inc.id
        step3 = (await eventually(lambda: web.accepted("/c"), lambda r: len(r) == 1, within=60))[0]
        assert made(step3) - made(step2) >= 4.0
        await publish(js, inc, noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED)
        await asyncio.sleep(1.5)
        every = web.received
        assert [r.status for r in every] == [200] * len(every)
        assert not any(r.duplicate for r in every), "no notification arrived twice"
        assert len(web.accepted("/a")) == 1 and len(web.accepted("/b")) == 1 and len(web.accepted("/c")) == 1
        assert len(web.accepted("/g")) == 1
        async with pool.acquire() as conn:
            state = await conn.fetchval("SELECT state FROM notifications.escalation WHERE incident_id = $1", inc.id)
            open_ = await conn.fetchval("SELECT count(*) FROM notifications.notification WHERE $1 = ANY(incident_ids)"
                                        " AND state <> 3", inc.id)
        assert state == 3 and open_ == 0  # exhausted after its last step (repeat 0); every page delivered
    finally:
        proc.kill()
        proc.wait(10)
        await ch.close()
        await srv.stop(grace=1.0, drain_s=0)
        await web.stop()
        await smtp.stop()
        await js.delete_consumer(events.EVENTS_STREAM, durable)
        await nc.close()
        await pool.close()
