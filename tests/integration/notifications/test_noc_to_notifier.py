"""End to end with the real NOC: an alarm correlated by the NOC service into an incident, published
through its outbox on towerco.noc.incident.opened, reaches a webhook and an email through the
notifier; nobody acknowledges, so it escalates; acknowledging it over REST (the gateway, as an
operator would) stops the escalation, and the paged channels are told."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import grpc
import httpx
from notify_support import eventually, fast_config, running_notifier
from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.notifications.v1 import notifications_pb2_grpc

from mesh import bootstrap
from mesh.migrate import migrate
from services.notifications.server import setup as notifications_setup
from workers.notifier.sink import SmtpSink, WebhookReceiver

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "noc"))
from nocstack import noc_stack  # noqa: E402

SECRET = "noc-e2e-signing-secret-0123"


async def test_noc_incident_is_notified_escalates_and_rest_acknowledge_stops_it(stack):
    web = await WebhookReceiver(secret=SECRET).start()
    smtp = await SmtpSink().start()
    try:
        async with noc_stack(stack) as noc:
            await migrate(noc.settings.database_url, components=["notifications"])
            srv = await bootstrap.start("notifications", notifications_setup, port=0, metrics_port=-1,
                                        settings=noc.settings)
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
            api = notifications_pb2_grpc.NotificationsServiceStub(ch)
            admin = noc.md("admin")
            try:
                async with running_notifier(noc.pool, noc.js, fast_config(smtp_port=smtp.port),
                                            database_url=noc.settings.database_url):
                    reg = f"e2e-{uuid.uuid4().hex[:6]}"

                    async def channel(**kw) -> str:
                        return (await api.CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(**kw)),
                                                        metadata=admin)).channel.id

                    board = await channel(name="noc board", kind=pb.CHANNEL_KIND_WEBHOOK,
                                          webhook_url=web.url + "/board", signing_secret=SECRET)
                    pager = await channel(name="duty manager", kind=pb.CHANNEL_KIND_WEBHOOK,
                                          webhook_url=web.url + "/pager", signing_secret=SECRET)
                    mail = await channel(name="noc mailbox", kind=pb.CHANNEL_KIND_EMAIL,
                                         email_address="noc@towerco.test")
                    pol = (await api.CreateEscalationPolicy(pb.CreateEscalationPolicyRequest(
                        policy=pb.EscalationPolicy(name="noc", repeat=3, steps=[
                            pb.EscalationStep(channel_ids=[mail], escalate_after_seconds=3),
                            pb.EscalationStep(channel_ids=[pager], escalate_after_seconds=3)])),
                        metadata=admin)).policy.id
                    await api.CreateRoute(pb.CreateRouteRequest(route=pb.Route(
                        name="e2e", match=pb.IncidentMatcher(regions=[reg]), channel_ids=[board, mail],
                        escalation_policy_id=pol, send_resolved=True)), metadata=admin)
                    await noc.add_site("E2E-0001", region=reg, tenants=("acme",))
                    posted = await noc.noc.PostAlarm(noc_pb2.PostAlarmRequest(
                        source="nms-acme", source_alarm_id=f"e2e-{uuid.uuid4().hex}", site_id="E2E-0001",
                        alarm_type=noc_pb2.ALARM_TYPE_EQUIPMENT, probable_cause="site_down",
                        perceived_severity=noc_pb2.PERCEIVED_SEVERITY_CRITICAL, text="site down per NMS"),
                        metadata=noc.md("service"))
                    iid = posted.incident_id

                    def mentions(recs):
                        return [r for r in recs if iid in r.body.decode("utf-8", "replace")]

                    hook = (await eventually(lambda: mentions(web.accepted("/board")), lambda r: len(r) >= 1,
                                             within=60))[0]
                    body = hook.json()
                    assert hook.signature_ok and body["kind"] == "firing"
                    assert body["incidents"][0]["site_ids"] == ["E2E-0001"]
                    mails = await eventually(lambda: [m for m in smtp.received if iid in m.text],
                                             lambda m: len(m) >= 2, within=60)  # the group's and step 1's
                    assert {m.headers["x-towerco-notification-kind"] for m in mails} >= {"firing", "escalation"}
                    assert all(m.html for m in mails)
                    step2 = (await eventually(lambda: mentions(web.accepted("/pager")), lambda r: len(r) >= 1,
                                              within=60))[0]
                    assert step2.json()["kind"] == "escalation" and step2.json()["escalation"]["step"] == 2

                    async with httpx.AsyncClient(base_url=noc.base, timeout=30) as http:
                        r = await http.post(f"/api/v1/incidents/{iid}:acknowledge", json={"note": "on it"},
                                            headers={"Authorization": f"Bearer {noc.token('noc_operator')}"})
                        assert r.status_code == 200, r.text
                    stopped = await eventually(
                        lambda: [x for x in mentions(web.accepted("/pager")) if x.json()["kind"] ==
                                 "escalation_stopped"], lambda r: len(r) == 1, within=60)
                    assert stopped[0].json()["status"] == "resolved"
                    async with noc.pool.acquire() as conn:
                        await eventually(lambda: conn.fetchval(
                            "SELECT state FROM notifications.escalation WHERE incident_id = $1", iid),
                            lambda s: s == 2, within=30)
                    pages = len([x for x in mentions(web.accepted("/pager")) if x.json()["kind"] == "escalation"])
                    mail_pages = len([m for m in smtp.received if iid in m.text
                                      and m.headers["x-towerco-notification-kind"] == "escalation"])
                    await asyncio.sleep(7.0)  # two more steps would have paged by now
                    assert len([x for x in mentions(web.accepted("/pager")) if x.json()["kind"] == "escalation"]) \
                        == pages
                    assert len([m for m in smtp.received if iid in m.text
                                and m.headers["x-towerco-notification-kind"] == "escalation"]) == mail_pages
                    assert not any(x.duplicate for x in web.received)

            finally:
                await ch.close()
                await srv.stop(grace=1.0, drain_s=0)
    finally:
        await web.stop()
        await smtp.stop()
