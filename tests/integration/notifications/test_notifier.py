"""Incident events published on a real JetStream as the NOC publishes them -> the real notifier
(its own durable consumer, state in PostgreSQL) -> a real HTTP receiver and a real SMTP server
(aiosmtpd); configuration and the delivery log through the Notifications service over gRPC.

Each test uses its own region, so routes of one test never match another's incidents."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import grpc
import pytest
from notify_support import dead_letter, eventually, fast_config, incident, publish, running_notifier
from towerco.events.v1 import events_pb2
from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.notifications.v1 import notifications_pb2_grpc

from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import status_of, violations_of
from mesh.migrate import migrate
from services.notifications.server import setup
from workers.notifier import domain
from workers.notifier.sink import SmtpSink, WebhookReceiver

SECRET = "test-signing-secret-0123456789"
FAILS: dict[str, int] = {}  # path -> how many first requests fail with 500 ("always": a huge number)


def respond(path: str, n: int) -> int:
    return 500 if n <= FAILS.get(path, 0) else 200


def region() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def world(stack):
    await migrate(stack.database_url, components=["notifications"])
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=8)
    nc = await events.connect(stack.nats_url, name="notifier-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    web = await WebhookReceiver(secret=SECRET, respond=respond).start()
    smtp = await SmtpSink().start()
    reset_settings()
    settings = Settings.from_env()
    srv = await bootstrap.start("notifications", setup, port=0, metrics_port=-1, settings=settings)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    cfg = fast_config(smtp_port=smtp.port)
    try:
        async with running_notifier(pool, js, cfg, database_url=stack.database_url) as notifier:
            yield {"stub": notifications_pb2_grpc.NotificationsServiceStub(ch), "settings": settings, "pool": pool,
                   "js": js, "web": web, "smtp": smtp, "notifier": notifier, "port": srv.port}
    finally:
        await ch.close()
        await srv.stop(grace=1.0, drain_s=0)
        await web.stop()
        await smtp.stop()
        await nc.close()
        await pool.close()


def md(w, role="admin", tenant="*"):
    tok = mint_token(subject=f"tester-{role}", tenant=tenant, roles=[role], settings=w["settings"])
    return (("authorization", f"Bearer {tok}"),)


async def webhook(w, path: str, *, tenant: str = "", secret: str = SECRET) -> str:
    resp = await w["stub"].CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
        name=f"hook {path}", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url=w["web"].url + path, signing_secret=secret,
        tenant_id=tenant)), metadata=md(w))
    assert resp.channel.has_signing_secret and not resp.channel.signing_secret  # write-only
    return resp.channel.id


async def mailbox(w, address: str, *, tenant: str = "") -> str:
    resp = await w["stub"].CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
        name=f"mail {address}", kind=pb.CHANNEL_KIND_EMAIL, email_address=address, tenant_id=tenant)),
        metadata=md(w))
    return resp.channel.id


async def route(w, reg: str, channels: list[str], **kw) -> str:
    kw.setdefault("match", pb.IncidentMatcher(regions=[reg]))
    r = pb.Route(name=f"route {reg}", channel_ids=channels, **kw)
    return (await w["stub"].CreateRoute(pb.CreateRouteRequest(route=r), metadata=md(w))).route.id


def made(rec) -> float:
    """When the notifier made a notification (its body's created_at, the flush or step time)."""
    return datetime.fromisoformat(rec.json()["created_at"].replace("Z", "+00:00")).timestamp()


def hits(w, path: str):
    return [r for r in w["web"].received if r.path == path]


def accepted(w, path: str):
    return w["web"].accepted(path)


# ------------------------------------------------------------------------------- grouping


async def test_grouping_waits_batches_and_repeats_with_alertmanager_timing(world):
    """group_wait 1 s collects three incidents into one notification; a fourth joining later is
    told group_interval (2 s) after the first flush; an unchanged group is re-sent
    repeat_interval (3 s) after its last notification; a resolved one is told (send_resolved)."""
    w, reg, path = world, region(), f"/group-{uuid.uuid4().hex[:6]}"
    hook = await webhook(w, path)
    await route(w, reg, [hook], group_by=["region"], group_wait_seconds=1, group_interval_seconds=2,
                repeat_interval_seconds=3, send_resolved=True)
    t0 = time.time()
    incs = [incident(region=reg, site=f"TWR-{i}") for i in range(3)]
    for inc in incs:
        await publish(w["js"], inc)
    first = (await eventually(lambda: accepted(w, path), lambda r: len(r) >= 1))[0]
    body = first.json()
    assert first.time - t0 >= 1.0, "group_wait: the first notification waits 1 s"
    assert sorted(i["id"] for i in body["incidents"]) == sorted(i.id for i in incs)
    assert body["kind"] == "firing" and body["group_key"] == f"region={reg}"
    assert first.signature_ok is True and first.idempotency_key == body["notification_id"]

    late = incident(region=reg, site="TWR-9")
    await publish(w["js"], late)
    second = (await eventually(lambda: accepted(w, path), lambda r: len(r) >= 2))[1]
    assert made(second) - made(first) >= 2.0, "group_interval: changes wait 2 s after the last flush"
    assert late.id in [i["id"] for i in second.json()["incidents"]]
    assert len(second.json()["incidents"]) == 4

    third = (await eventually(lambda: accepted(w, path), lambda r: len(r) >= 3, within=20))[2]
    assert made(third) - made(second) >= 3.0, "repeat_interval: an unchanged group re-sent after 3 s"
    assert len(third.json()["incidents"]) == 4

    for inc in incs + [late]:
        await publish(w["js"], inc, noc_pb2.INCIDENT_CHANGE_RESOLVED)
    last = await eventually(lambda: accepted(w, path), lambda r: r and r[-1].json()["kind"] == "resolved", within=20)
    assert {i["state"] for i in last[-1].json()["incidents"]} == {"INCIDENT_STATE_RESOLVED"}
    n = len(accepted(w, path))
    async with w["pool"].acquire() as conn:  # the group is done: no timer left
        left = await conn.fetchval("SELECT count(*) FROM notifications.alert_group WHERE group_key = $1",
                                   f"region={reg}")
    assert left == 0 and len(accepted(w, path)) == n


async def test_routing_order_continue_and_email(world):
    """The first matching rule takes the incident; continue_matching lets the next one too; a
    later rule after one without it never sees the incident. Email goes out as plain + HTML."""
    w, reg = world, region()
    p1, p2, p3 = (f"/route{i}-{uuid.uuid4().hex[:6]}" for i in range(3))
    h1, h2, h3 = await webhook(w, p1), await webhook(w, p2), await webhook(w, p3)
    mail = await mailbox(w, f"noc-{reg}@example.test")
    await route(w, reg, [h1, mail], position=1, continue_matching=True, group_wait_seconds=0)
    await route(w, reg, [h2], position=2, group_wait_seconds=0,
                match=pb.IncidentMatcher(regions=[reg], min_severity=noc_pb2.INCIDENT_SEVERITY_MAJOR))
    await route(w, reg, [h3], position=3, group_wait_seconds=0)
    major = incident(region=reg, severity=noc_pb2.INCIDENT_SEVERITY_MAJOR)
    minor = incident(region=reg, severity=noc_pb2.INCIDENT_SEVERITY_MINOR)
    await publish(w["js"], major)
    await publish(w["js"], minor)
    await eventually(lambda: accepted(w, p1), lambda r: len(r) == 2)
    await eventually(lambda: accepted(w, p2), lambda r: len(r) == 1)
    await eventually(lambda: accepted(w, p3), lambda r: len(r) == 1)
    assert accepted(w, p2)[0].json()["incidents"][0]["id"] == major.id
    assert accepted(w, p3)[0].json()["incidents"][0]["id"] == minor.id
    mails = await eventually(lambda: [m for m in w["smtp"].received if f"noc-{reg}@example.test" in m.rcpt_to],
                             lambda m: len(m) == 2)
    assert all(m.text and m.html and "<table" in m.html for m in mails)
    assert {major.id, minor.id} <= {i for m in mails for i in (major.id, minor.id) if i in m.text}
    assert all(m.headers["message-id"].startswith("<") for m in mails)


# ------------------------------------------------------------------------------- delivery


async def test_receiver_failing_three_times_then_succeeding_gets_one_delivery(world):
    w, reg, path = world, region(), f"/flaky-{uuid.uuid4().hex[:6]}"
    FAILS[path] = 3
    await route(w, reg, [await webhook(w, path)], group_wait_seconds=0)
    await publish(w["js"], incident(region=reg))
    ok = await eventually(lambda: accepted(w, path), lambda r: len(r) == 1)
    assert len(hits(w, path)) == 4 and [r.status for r in hits(w, path)] == [500, 500, 500, 200]
    assert len({r.idempotency_key for r in hits(w, path)}) == 1  # the same notification each time
    assert [r.headers["x-towerco-attempt"] for r in hits(w, path)] == ["1", "2", "3", "4"]
    nid = ok[0].idempotency_key
    n = (await w["stub"].GetNotification(pb.GetNotificationRequest(notification_id=nid), metadata=md(w))).notification
    assert n.state == pb.DELIVERY_STATE_DELIVERED and n.attempts == 4
    assert [d.response_code for d in n.deliveries] == [500, 500, 500, 200]
    assert [d.ok for d in n.deliveries] == [False, False, False, True]
    assert all(d.latency_ms > 0 for d in n.deliveries)
    await asyncio_sleep(0.5)
    assert len(accepted(w, path)) == 1  # nothing more arrives


async def test_receiver_always_failing_is_dead_lettered_with_the_reason(world, caplog):
    w, reg, path = world, region(), f"/dead-{uuid.uuid4().hex[:6]}"
    FAILS[path] = 10 ** 6
    await route(w, reg, [await webhook(w, path)], group_wait_seconds=0)
    inc = incident(region=reg)
    await publish(w["js"], inc)
    req = pb.ListNotificationsRequest(incident_id=inc.id)

    async def listed():
        return (await w["stub"].ListNotifications(req, metadata=md(w))).notifications

    dead = await eventually(listed, lambda ns: ns and ns[0].state == pb.DELIVERY_STATE_DEAD)
    assert dead[0].attempts == 5 and "dead-lettered" in dead[0].last_error and "HTTP 500" in dead[0].last_error
    assert len(hits(w, path)) == 5 and not accepted(w, path)
    assert any("dead-lettered" in r.getMessage() for r in caplog.records)
    # and on the DLQ stream, for an operator's DLQ tooling: the reason and the notification
    durable = w["notifier"].cfg.durable
    msg = await dead_letter(w["js"], f"dlq.EVENTS.{durable}", dead[0].id)
    assert msg.headers["Towerco-Dlq-Reason"] == dead[0].last_error.strip()  # one line, trimmed
    assert msg.headers["Towerco-Dlq-Kind"] == "notification" and msg.headers["Towerco-Dlq-Deliveries"] == "5"
    assert (msg.headers["Towerco-Dlq-Stream"], msg.headers["Towerco-Dlq-Consumer"]) == ("EVENTS", durable)
    env = events_pb2.Envelope.FromString(msg.data)
    note = events.unpack(env, pb.Notification)
    assert env.type == "towerco.notifications.notification.dead" and env.source == "notifier"
    assert msg.headers["Nats-Msg-Id"] == env.id
    assert note.id == dead[0].id and note.state == pb.DELIVERY_STATE_DEAD and note.last_error == dead[0].last_error
    assert list(note.incident_ids) == [inc.id] and note.channel_id == dead[0].channel_id
    assert [d.response_code for d in note.deliveries] == [500] * 5
    async with w["pool"].acquire() as conn:  # written with the DEAD row, published by the relay
        row = await conn.fetchrow("SELECT subject, published_at FROM notifications.outbox WHERE event_id = $1",
                                  uuid.UUID(env.id))
    assert row["subject"] == f"dlq.EVENTS.{durable}"
    await eventually(lambda: _published(w, env.id), lambda t: t is not None)


async def test_permanent_refusal_and_bad_signature_are_not_retried(world):
    """A 4xx other than 408/425/429 is permanent: dead after one attempt. A channel whose secret
    differs from the receiver's is refused 401 (the receiver checks the signature)."""
    w, reg, path = world, region(), f"/badsig-{uuid.uuid4().hex[:6]}"
    await route(w, reg, [await webhook(w, path, secret="another-secret-of-16+")], group_wait_seconds=0)
    inc = incident(region=reg)
    await publish(w["js"], inc)
    req = pb.ListNotificationsRequest(incident_id=inc.id)

    async def listed():
        return (await w["stub"].ListNotifications(req, metadata=md(w))).notifications

    dead = await eventually(listed, lambda ns: ns and ns[0].state == pb.DELIVERY_STATE_DEAD)
    assert dead[0].attempts == 1 and "HTTP 401" in dead[0].last_error
    assert [r.signature_ok for r in hits(w, path)] == [False]
    msg = await dead_letter(w["js"], f"dlq.EVENTS.{w['notifier'].cfg.durable}", dead[0].id)
    assert "refused permanently" in msg.headers["Towerco-Dlq-Reason"] and msg.headers["Towerco-Dlq-Deliveries"] == "1"


async def _published(w, event_id: str):
    async with w["pool"].acquire() as conn:
        return await conn.fetchval("SELECT published_at FROM notifications.outbox WHERE event_id = $1",
                                   uuid.UUID(event_id))


async def test_test_send_is_delivered_and_logged(world):
    w, path = world, f"/test-{uuid.uuid4().hex[:6]}"
    hook = await webhook(w, path)
    n = (await w["stub"].TestSend(pb.TestSendRequest(channel_id=hook, message="hello"), metadata=md(w))).notification
    assert n.kind == pb.NOTIFICATION_KIND_TEST and n.state == pb.DELIVERY_STATE_PENDING
    got = await eventually(lambda: accepted(w, path), lambda r: len(r) == 1)
    assert got[0].json()["kind"] == "test" and got[0].json()["message"] == "hello"
    assert got[0].idempotency_key == n.id

    async def state():
        return (await w["stub"].GetNotification(pb.GetNotificationRequest(notification_id=n.id),
                                                metadata=md(w))).notification.state

    await eventually(state, lambda s: s == pb.DELIVERY_STATE_DELIVERED)


# ------------------------------------------------------------------------------ escalation


async def policy(w, steps: list[tuple[list[str], int]], repeat: int = 0, schedule: str = "") -> str:
    p = pb.EscalationPolicy(name="policy", repeat=repeat, steps=[
        pb.EscalationStep(channel_ids=chs, escalate_after_seconds=after, schedule_id=schedule if i == 0 else "")
        for i, (chs, after) in enumerate(steps)])
    return (await w["stub"].CreateEscalationPolicy(pb.CreateEscalationPolicyRequest(policy=p),
                                                   metadata=md(w))).policy.id


async def test_escalation_steps_then_acknowledge_stops_it(world):
    """Step 1 pages A at once; unacknowledged for 2 s, step 2 pages B; then acknowledged: A and B
    get the stop notice (send_resolved) and nothing pages again."""
    w, reg = world, region()
    pa, pb_ = f"/escA-{uuid.uuid4().hex[:6]}", f"/escB-{uuid.uuid4().hex[:6]}"
    a, b = await webhook(w, pa), await webhook(w, pb_)
    pol = await policy(w, [([a], 2), ([b], 2)], repeat=1)
    await w["stub"].CreateRoute(pb.CreateRouteRequest(route=pb.Route(
        name="esc", match=pb.IncidentMatcher(regions=[reg]), escalation_policy_id=pol, send_resolved=True)),
        metadata=md(w))
    inc = incident(region=reg)
    t0 = time.time()
    await publish(w["js"], inc)
    step1 = (await eventually(lambda: accepted(w, pa), lambda r: len(r) == 1))[0]
    assert step1.json()["kind"] == "escalation" and step1.json()["escalation"] == {"step": 1, "round": 0}
    assert step1.time - t0 < 5
    step2 = (await eventually(lambda: accepted(w, pb_), lambda r: len(r) == 1))[0]
    assert made(step2) - made(step1) >= 2.0 and step2.json()["escalation"]["step"] == 2
    await publish(w["js"], inc, noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED)
    await eventually(lambda: accepted(w, pa), lambda r: len(r) == 2 or (len(r) == 3))
    stop_a = [r for r in accepted(w, pa) if r.json()["kind"] == "escalation_stopped"]
    stop_b = await eventually(lambda: [r for r in accepted(w, pb_) if r.json()["kind"] == "escalation_stopped"],
                              lambda r: len(r) == 1)
    assert stop_b[0].json()["status"] == "resolved"
    await asyncio_sleep(4.5)  # past where round 2 would have paged A again
    pages = [r for r in accepted(w, pa) + accepted(w, pb_) if r.json()["kind"] == "escalation"]
    # step 1 of round 1 may have paged A before the acknowledgement arrived (2 s after step 2)
    assert len(pages) <= 3 and len(stop_a) <= 1
    n = len(accepted(w, pa)) + len(accepted(w, pb_))
    await asyncio_sleep(2.5)
    assert len(accepted(w, pa)) + len(accepted(w, pb_)) == n


async def test_acknowledged_before_step_two_never_pages_it(world):
    w, reg = world, region()
    pa, pb_ = f"/ackA-{uuid.uuid4().hex[:6]}", f"/ackB-{uuid.uuid4().hex[:6]}"
    pol = await policy(w, [([await webhook(w, pa)], 3), ([await webhook(w, pb_)], 3)])
    await w["stub"].CreateRoute(pb.CreateRouteRequest(route=pb.Route(
        name="esc", match=pb.IncidentMatcher(regions=[reg]), escalation_policy_id=pol)), metadata=md(w))
    inc = incident(region=reg)
    await publish(w["js"], inc)
    await eventually(lambda: accepted(w, pa), lambda r: len(r) == 1)
    await publish(w["js"], inc, noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED)
    async with w["pool"].acquire() as conn:
        await eventually(lambda: conn.fetchval("SELECT state FROM notifications.escalation WHERE incident_id = $1",
                                               inc.id), lambda s: s == 2)
    await asyncio_sleep(4.0)
    assert not hits(w, pb_) and len(accepted(w, pa)) == 1  # no stop notice: the route did not ask


async def test_escalation_pages_whoever_is_on_call(world):
    w, reg = world, region()
    p_ann, p_bob = f"/ann-{uuid.uuid4().hex[:6]}", f"/bob-{uuid.uuid4().hex[:6]}"
    ann, bob = await webhook(w, p_ann), await webhook(w, p_bob)
    now = time.time()
    sched = pb.Schedule(name="noc", rotations=[pb.Rotation(name="primary", shift_seconds=3600, members=[
        pb.OnCallMember(name="ann", channel_id=ann), pb.OnCallMember(name="bob", channel_id=bob)])])
    sched.rotations[0].start_time.FromSeconds(int(now) - 3600 - 60)  # bob's shift now (second member)
    sid = (await w["stub"].CreateSchedule(pb.CreateScheduleRequest(schedule=sched), metadata=md(w))).schedule.id
    oc = await w["stub"].GetOnCall(pb.GetOnCallRequest(schedule_id=sid), metadata=md(w))
    assert oc.member.name == "bob" and oc.source == "primary"
    assert oc.shift_end_time.seconds == int(now) - 60 + 3600
    later = pb.GetOnCallRequest(schedule_id=sid)
    later.at_time.FromSeconds(int(now) + 3600)
    assert (await w["stub"].GetOnCall(later, metadata=md(w))).member.name == "ann"  # hand-over
    pol = await policy(w, [([], 60)], schedule=sid)
    await w["stub"].CreateRoute(pb.CreateRouteRequest(route=pb.Route(
        name="oncall", match=pb.IncidentMatcher(regions=[reg]), escalation_policy_id=pol)), metadata=md(w))
    await publish(w["js"], incident(region=reg))
    await eventually(lambda: accepted(w, p_bob), lambda r: len(r) == 1)
    assert not hits(w, p_ann)


# ----------------------------------------------------------------------- silences, scoping


async def test_silenced_and_suppressed_incidents_are_not_sent(world):
    w, reg, path = world, region(), f"/silence-{uuid.uuid4().hex[:6]}"
    await route(w, reg, [await webhook(w, path)], group_wait_seconds=0)
    sil = pb.Silence(comment="maintenance", matchers=[pb.Matcher(name="region", value=reg),
                                                      pb.Matcher(name="site", value="TWR-S.*",
                                                                 operator=pb.MATCH_OPERATOR_REGEX)])
    sil.end_time.FromSeconds(int(time.time()) + 3600)
    created = (await w["stub"].CreateSilence(pb.CreateSilenceRequest(silence=sil), metadata=md(w))).silence
    assert created.author == "tester-admin" and created.HasField("start_time")
    quiet = incident(region=reg, site="TWR-S1")
    suppressed = incident(region=reg, site="TWR-X1", suppressed=True)
    loud = incident(region=reg, site="TWR-L1")
    for inc in (quiet, suppressed, loud):
        await publish(w["js"], inc)
    got = await eventually(lambda: accepted(w, path), lambda r: len(r) == 1)
    assert [i["id"] for i in got[0].json()["incidents"]] == [loud.id]

    async def states(inc_id):
        return [n.state for n in (await w["stub"].ListNotifications(
            pb.ListNotificationsRequest(incident_id=inc_id), metadata=md(w))).notifications]

    assert await eventually(lambda: states(quiet.id), lambda s: s == [pb.DELIVERY_STATE_SILENCED])
    assert await states(suppressed.id) == []
    await w["stub"].ExpireSilence(pb.ExpireSilenceRequest(silence_id=created.id), metadata=md(w))
    active = (await w["stub"].ListSilences(pb.ListSilencesRequest(active_only=True), metadata=md(w))).silences
    assert created.id not in [s.id for s in active]
    await asyncio_sleep(0.5)
    assert len(accepted(w, path)) == 1


async def test_tenant_channel_receives_only_its_tenant_scoped(world):
    w, reg = world, region()
    pa, pi = f"/acme-{uuid.uuid4().hex[:6]}", f"/internal-{uuid.uuid4().hex[:6]}"
    acme = await webhook(w, pa, tenant="acme")
    internal = await webhook(w, pi)
    await route(w, reg, [acme, internal], group_wait_seconds=0)
    shared = incident(region=reg, site="TWR-AB", tenants=("acme", "beta"))
    betas = incident(region=reg, site="TWR-B", tenants=("beta",))
    await publish(w["js"], shared)
    await publish(w["js"], betas)
    await eventually(lambda: accepted(w, pi), lambda r: len(r) == 2)
    got = await eventually(lambda: accepted(w, pa), lambda r: len(r) == 1)
    await asyncio_sleep(0.5)
    assert len(accepted(w, pa)) == 1
    text = got[0].body.decode()
    assert "beta" not in text and betas.id not in text
    body = got[0].json()
    assert body["tenant_id"] == "acme" and body["incidents"][0]["tenant_ids"] == ["acme"]
    assert [i["tenant_id"] for i in body["incidents"][0]["impacts"]] == ["acme"]
    # the delivery log: acme's viewer sees its channel's notification only
    viewer = md(w, "tenant_viewer", "acme")
    mine = (await w["stub"].ListNotifications(pb.ListNotificationsRequest(), metadata=viewer)).notifications
    assert mine and {n.tenant_id for n in mine} == {"acme"}
    internal_ids = [n.id for n in (await w["stub"].ListNotifications(
        pb.ListNotificationsRequest(channel_id=internal), metadata=md(w))).notifications]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await w["stub"].GetNotification(pb.GetNotificationRequest(notification_id=internal_ids[0]), metadata=viewer)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tenant_viewer_sees_only_its_channels_and_no_configuration(world):
    w = world
    mine = await mailbox(w, "ops@acme.test", tenant="acme")
    theirs = await mailbox(w, "ops@beta.test", tenant="beta")
    internal = await mailbox(w, "noc@towerco.test")
    viewer = md(w, "tenant_viewer", "acme")
    listed = (await w["stub"].ListChannels(pb.ListChannelsRequest(page={"size": 1000}), metadata=viewer)).channels
    assert mine in [c.id for c in listed] and {c.tenant_id for c in listed} == {"acme"}
    assert not (await w["stub"].ListChannels(pb.ListChannelsRequest(tenant_id="beta"), metadata=viewer)).channels
    for cid in (theirs, internal, "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await w["stub"].GetChannel(pb.GetChannelRequest(channel_id=cid), metadata=viewer)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await w["stub"].TestSend(pb.TestSendRequest(channel_id=cid), metadata=viewer)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:  # its own channel: visible, but it may not change it
        await w["stub"].DeleteChannel(pb.DeleteChannelRequest(channel_id=mine), metadata=viewer)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not (await w["stub"].ListRoutes(pb.ListRoutesRequest(), metadata=viewer)).routes
    assert not (await w["stub"].ListSilences(pb.ListSilencesRequest(), metadata=viewer)).silences
    rid = (await w["stub"].ListRoutes(pb.ListRoutesRequest(), metadata=md(w))).routes[0].id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await w["stub"].GetRoute(pb.GetRouteRequest(route_id=rid), metadata=viewer)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a viewer reads but does not write
        await w["stub"].CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
            name="x", kind=pb.CHANNEL_KIND_EMAIL, email_address="x@y.z")), metadata=md(w, "viewer"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


# ------------------------------------------------------------------------------ bad input


async def bad(w, call, req, *fields):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(req, metadata=md(w))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    got = {f for f, _ in violations_of(status_of(e.value))}
    for f in fields:
        assert f in got, (f, got)


async def test_bad_input_is_invalid_argument_with_field_violations(world):
    w, s = world, world["stub"]
    await bad(w, s.CreateChannel, pb.CreateChannelRequest(), "channel")
    await bad(w, s.CreateChannel, pb.CreateChannelRequest(channel=pb.Channel(
        name="h", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url="ftp://x", signing_secret="short")),
        "channel.webhook_url")
    await bad(w, s.CreateChannel, pb.CreateChannelRequest(channel=pb.Channel(
        name="h", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url="http://x/y", signing_secret="short")),
        "channel.signing_secret")
    await bad(w, s.CreateChannel, pb.CreateChannelRequest(channel=pb.Channel(name="m", kind=pb.CHANNEL_KIND_EMAIL)),
              "channel.email_address")
    await bad(w, s.CreateChannel, pb.CreateChannelRequest(channel=pb.Channel(name="m", kind=7, email_address="a@b")),
              "channel.kind")
    await bad(w, s.CreateRoute, pb.CreateRouteRequest(route=pb.Route(name="r", group_by=["colour"])),
              "route.group_by[0]")
    await bad(w, s.CreateRoute, pb.CreateRouteRequest(route=pb.Route(name="r", channel_ids=[str(uuid.uuid4()), "x"])),
              "route.channel_ids[0]", "route.channel_ids[1]")
    await bad(w, s.CreateRoute, pb.CreateRouteRequest(route=pb.Route(name="r")), "route.channel_ids")
    await bad(w, s.CreateRoute, pb.CreateRouteRequest(route=pb.Route(name="r", group_wait_seconds=-1)),
              "route.group_wait_seconds")
    await bad(w, s.CreateEscalationPolicy, pb.CreateEscalationPolicyRequest(policy=pb.EscalationPolicy(
        name="p", steps=[pb.EscalationStep(escalate_after_seconds=0)])), "policy.steps[0].escalate_after_seconds")
    await bad(w, s.CreateEscalationPolicy, pb.CreateEscalationPolicyRequest(policy=pb.EscalationPolicy(name="p")),
              "policy.steps")
    sil = pb.Silence(comment="c", matchers=[pb.Matcher(name="site", value="(", operator=pb.MATCH_OPERATOR_REGEX)])
    sil.end_time.FromSeconds(int(time.time()) + 60)
    await bad(w, s.CreateSilence, pb.CreateSilenceRequest(silence=sil), "silence.matchers[0].value")
    past = pb.Silence(comment="c", matchers=[pb.Matcher(name="site", value="x")])
    past.end_time.FromSeconds(int(time.time()) - 60)
    await bad(w, s.CreateSilence, pb.CreateSilenceRequest(silence=past), "silence.end_time")
    sched = pb.Schedule(name="s", rotations=[pb.Rotation(members=[pb.OnCallMember(name="a")], shift_seconds=10)])
    await bad(w, s.CreateSchedule, pb.CreateScheduleRequest(schedule=sched), "schedule.rotations[0].start_time")
    await bad(w, s.ListChannels, pb.ListChannelsRequest(page={"token": "garbage"}), "page.token")


async def asyncio_sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


def test_signature_example_of_the_docs():
    """docs/notifications.md's verification recipe, on a body the notifier would send."""
    body = domain.encode_body({"kind": "test", "notification_id": "n-1"})
    header = domain.sign(SECRET, 1_700_000_000, body)
    assert domain.verify(SECRET, header, body, now=1_700_000_010)
    assert not domain.verify(SECRET, header, body + b" ", now=1_700_000_010)
    assert not domain.verify("wrong-secret-0000000", header, body, now=1_700_000_010)
    assert not domain.verify(SECRET, header, body, now=1_700_000_000 + 3600)  # replayed later
    assert json.loads(body) == {"kind": "test", "notification_id": "n-1"}
