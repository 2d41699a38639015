"""The Update RPCs of the Notifications service (UpdateChannel, UpdateRoute, UpdateEscalationPolicy,
UpdateSchedule) over gRPC and over REST through the gateway (PATCH, with and without an
updateMask), and the real notifier following an update: a notification made after a channel's
URL or secret changed goes to the new URL, signed with the new secret; one made after a route
changed follows the new route.

Each test uses its own region, so routes of one test never match another's incidents."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2
from notify_support import eventually, fast_config, incident, publish, running_notifier
from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as pb
from towerco.notifications.v1 import notifications_pb2_grpc

from gateway.app import create_app
from gateway.config import GatewayConfig
from mesh import bootstrap, db, events
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import status_of, violations_of
from mesh.migrate import migrate
from services.notifications.server import setup
from workers.notifier.sink import WebhookReceiver

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gwfake import serve_gateway  # noqa: E402

SECRET = "update-tests-signing-secret-01"


@pytest.fixture(scope="module")
async def world(stack):
    await migrate(stack.database_url, components=["notifications"])
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=8)
    nc = await events.connect(stack.nats_url, name="notifications-update-tests")
    js = nc.jetstream()
    await events.ensure_streams(js)
    web = await WebhookReceiver(secret=SECRET).start()
    reset_settings()
    settings = Settings.from_env()
    srv = await bootstrap.start("notifications", setup, port=0, metrics_port=-1, settings=settings)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    app = create_app(GatewayConfig(services=("notifications",), targets={"notifications": f"127.0.0.1:{srv.port}"},
                                   rate_per_s=0), settings)
    try:
        async with serve_gateway(app) as base, running_notifier(pool, js, fast_config(),
                                                                 database_url=stack.database_url):
            yield {"stub": notifications_pb2_grpc.NotificationsServiceStub(ch), "settings": settings, "web": web,
                   "js": js, "base": base}
    finally:
        await ch.close()
        await srv.stop(grace=1.0, drain_s=0)
        await web.stop()
        await nc.close()
        await pool.close()


def token(w, role: str = "admin", tenant: str = "*") -> str:
    return mint_token(subject=f"tester-{role}", tenant=tenant, roles=[role], settings=w["settings"])


def md(w, role: str = "admin", tenant: str = "*"):
    return (("authorization", f"Bearer {token(w, role, tenant)}"),)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def region() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def webhook(w, path: str, *, tenant: str = "", secret: str = SECRET) -> pb.Channel:
    return (await w["stub"].CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
        name=f"hook {path}", kind=pb.CHANNEL_KIND_WEBHOOK, webhook_url=w["web"].url + path, signing_secret=secret,
        tenant_id=tenant)), metadata=md(w))).channel


async def mailbox(w, address: str, *, tenant: str = "") -> pb.Channel:
    return (await w["stub"].CreateChannel(pb.CreateChannelRequest(channel=pb.Channel(
        name=f"mail {address}", kind=pb.CHANNEL_KIND_EMAIL, email_address=address, tenant_id=tenant)),
        metadata=md(w))).channel


async def route(w, reg: str, channels: list[str], **kw) -> pb.Route:
    kw.setdefault("match", pb.IncidentMatcher(regions=[reg]))
    return (await w["stub"].CreateRoute(pb.CreateRouteRequest(route=pb.Route(
        name=f"route {reg}", channel_ids=channels, **kw)), metadata=md(w))).route


async def policy(w, channel: str) -> pb.EscalationPolicy:
    return (await w["stub"].CreateEscalationPolicy(pb.CreateEscalationPolicyRequest(policy=pb.EscalationPolicy(
        name="paging", repeat=1, steps=[pb.EscalationStep(channel_ids=[channel], escalate_after_seconds=300)])),
        metadata=md(w))).policy


async def schedule(w, channel: str) -> pb.Schedule:
    s = pb.Schedule(name="duty", rotations=[pb.Rotation(name="day", shift_seconds=86400, members=[
        pb.OnCallMember(name="ann", channel_id=channel)])])
    s.rotations[0].start_time.FromSeconds(1_700_000_000)
    return (await w["stub"].CreateSchedule(pb.CreateScheduleRequest(schedule=s), metadata=md(w))).schedule


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def invalid(call, *fields: str) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    got = violations_of(status_of(e.value))
    for f in fields:
        assert f in {g for g, _ in got}, (f, got)
    return got


# ------------------------------------------------------------------------------------ gRPC


async def test_update_channel_with_and_without_a_mask_never_returns_the_secret(world):
    w, s = world, world["stub"]
    ch = await webhook(w, "/u-chan")
    new_url = w["web"].url + "/u-chan-moved"
    # a mask: only the named field changes, whatever else the message carries
    got = (await s.UpdateChannel(pb.UpdateChannelRequest(
        channel=pb.Channel(id=ch.id, name="ignored", webhook_url=new_url), update_mask=mask("webhook_url")),
        metadata=md(w))).channel
    assert got.webhook_url == new_url and got.name == ch.name and got.kind == pb.CHANNEL_KIND_WEBHOOK
    assert got.has_signing_secret and not got.signing_secret and got.create_time == ch.create_time
    # no mask over gRPC: the fields set (id and the output-only ones aside)
    got = (await s.UpdateChannel(pb.UpdateChannelRequest(channel=pb.Channel(
        id=ch.id, name="renamed", kind=pb.CHANNEL_KIND_EMAIL, has_signing_secret=False)), metadata=md(w))).channel
    assert got.name == "renamed" and got.webhook_url == new_url and got.kind == pb.CHANNEL_KIND_WEBHOOK
    assert got.has_signing_secret
    # the secret may be set, not read
    got = (await s.UpdateChannel(pb.UpdateChannelRequest(
        channel=pb.Channel(id=ch.id, signing_secret="another-secret-of-16+"), update_mask=mask("signing_secret")),
        metadata=md(w))).channel
    assert got.has_signing_secret and not got.signing_secret
    read = (await s.GetChannel(pb.GetChannelRequest(channel_id=ch.id), metadata=md(w))).channel
    assert read == got and not read.signing_secret
    # "*": every updatable field (an email channel's address, a webhook's URL kept valid)
    mail = await mailbox(w, "old@towerco.test")
    got = (await s.UpdateChannel(pb.UpdateChannelRequest(
        channel=pb.Channel(id=mail.id, name="noc", email_address="new@towerco.test"), update_mask=mask("*")),
        metadata=md(w))).channel
    assert (got.name, got.email_address, got.kind) == ("noc", "new@towerco.test", pb.CHANNEL_KIND_EMAIL)


async def test_bad_paths_and_bad_values_are_invalid_argument_with_field_violations(world):
    w, s = world, world["stub"]
    ch = await webhook(w, "/u-bad")
    mail = await mailbox(w, "bad@towerco.test")
    uc = s.UpdateChannel

    def req(channel: pb.Channel, *paths: str) -> pb.UpdateChannelRequest:
        return pb.UpdateChannelRequest(channel=channel, update_mask=mask(*paths) if paths else None)

    # paths the contract does not list, named on update_mask
    got = await invalid(uc(req(pb.Channel(id=ch.id, kind=pb.CHANNEL_KIND_EMAIL), "kind"), metadata=md(w)),
                        "update_mask.paths[0]")
    assert "one of: name, webhook_url, signing_secret, email_address" in got[0][1]
    await invalid(uc(req(pb.Channel(id=ch.id), "name", "tenant_id", "colour"), metadata=md(w)),
                  "update_mask.paths[1]", "update_mask.paths[2]")
    # values: the merged channel by CreateChannel's rules
    await invalid(uc(req(pb.Channel(id=ch.id, webhook_url="ftp://x"), "webhook_url"), metadata=md(w)),
                  "channel.webhook_url")
    await invalid(uc(req(pb.Channel(id=ch.id), "webhook_url"), metadata=md(w)), "channel.webhook_url")
    await invalid(uc(req(pb.Channel(id=ch.id, signing_secret="short"), "signing_secret"), metadata=md(w)),
                  "channel.signing_secret")
    await invalid(uc(req(pb.Channel(id=ch.id), "name"), metadata=md(w)), "channel.name")
    await invalid(uc(req(pb.Channel(id=mail.id, webhook_url="http://x/y"), "webhook_url"), metadata=md(w)),
                  "channel.webhook_url")
    await invalid(uc(req(pb.Channel(id=mail.id, signing_secret="s" * 20), "signing_secret"), metadata=md(w)),
                  "channel.signing_secret")
    await invalid(uc(req(pb.Channel(name="x"), "name"), metadata=md(w)), "channel.id")
    await invalid(uc(pb.UpdateChannelRequest(), metadata=md(w)), "channel")
    # nothing to change: no mask and no field set
    await invalid(uc(req(pb.Channel(id=ch.id)), metadata=md(w)), "update_mask")
    after = (await s.GetChannel(pb.GetChannelRequest(channel_id=ch.id), metadata=md(w))).channel
    assert after.webhook_url == ch.webhook_url and after.name == ch.name  # nothing was changed

    hook = ch.id
    r = await route(w, region(), [hook])
    pol = await policy(w, hook)
    sch = await schedule(w, hook)
    missing = str(uuid.uuid4())
    await invalid(s.UpdateRoute(pb.UpdateRouteRequest(route=pb.Route(id=r.id, channel_ids=[missing, "x"]),
                                                      update_mask=mask("channel_ids")), metadata=md(w)),
                  "route.channel_ids[0]", "route.channel_ids[1]")
    await invalid(s.UpdateRoute(pb.UpdateRouteRequest(route=pb.Route(id=r.id, escalation_policy_id=missing),
                                                      update_mask=mask("escalation_policy_id")), metadata=md(w)),
                  "route.escalation_policy_id")
    await invalid(s.UpdateRoute(pb.UpdateRouteRequest(route=pb.Route(id=r.id), update_mask=mask("channel_ids")),
                                metadata=md(w)), "route.channel_ids")
    await invalid(s.UpdateRoute(pb.UpdateRouteRequest(route=pb.Route(id=r.id), update_mask=mask("name")),
                                metadata=md(w)), "route.name")
    await invalid(s.UpdateRoute(pb.UpdateRouteRequest(route=pb.Route(id=r.id, group_by=["colour"])),
                                metadata=md(w)), "route.group_by[0]")
    await invalid(s.UpdateRoute(pb.UpdateRouteRequest(route=pb.Route(id=r.id), update_mask=mask("create_time")),
                                metadata=md(w)), "update_mask.paths[0]")
    await invalid(s.UpdateEscalationPolicy(pb.UpdateEscalationPolicyRequest(
        policy=pb.EscalationPolicy(id=pol.id), update_mask=mask("steps")), metadata=md(w)), "policy.steps")
    await invalid(s.UpdateEscalationPolicy(pb.UpdateEscalationPolicyRequest(policy=pb.EscalationPolicy(
        id=pol.id, steps=[pb.EscalationStep(schedule_id=missing, escalate_after_seconds=0)])), metadata=md(w)),
        "policy.steps[0].escalate_after_seconds")
    await invalid(s.UpdateEscalationPolicy(pb.UpdateEscalationPolicyRequest(policy=pb.EscalationPolicy(
        id=pol.id, steps=[pb.EscalationStep(schedule_id=missing, escalate_after_seconds=5)])), metadata=md(w)),
        "policy.steps[0].schedule_id")
    await invalid(s.UpdateSchedule(pb.UpdateScheduleRequest(schedule=pb.Schedule(id=sch.id, rotations=[
        pb.Rotation(members=[pb.OnCallMember(name="a")], shift_seconds=60)])), metadata=md(w)),
        "schedule.rotations[0].start_time")
    await invalid(s.UpdateSchedule(pb.UpdateScheduleRequest(schedule=pb.Schedule(id=sch.id),
                                                            update_mask=mask("overrides")), metadata=md(w)),
                  "update_mask.paths[0]")
    await invalid(s.UpdateSchedule(pb.UpdateScheduleRequest(schedule=pb.Schedule(id=sch.id),
                                                            update_mask=mask("rotations")), metadata=md(w)),
                  "schedule.rotations")
    stored = (await s.GetRoute(pb.GetRouteRequest(route_id=r.id), metadata=md(w))).route
    assert stored == r  # refused updates changed nothing


async def test_update_route_policy_and_schedule(world):
    w, s = world, world["stub"]
    a, b = (await mailbox(w, "a@towerco.test")).id, (await mailbox(w, "b@towerco.test")).id
    reg = region()
    r = await route(w, reg, [a], position=7, group_by=["region"], send_resolved=True,
                    match=pb.IncidentMatcher(regions=[reg], min_severity=2))
    got = (await s.UpdateRoute(pb.UpdateRouteRequest(
        route=pb.Route(id=r.id, channel_ids=[b], match=pb.IncidentMatcher(regions=["elsewhere"]), position=1),
        update_mask=mask("channel_ids", "match.regions", "position")), metadata=md(w))).route
    assert list(got.channel_ids) == [b] and list(got.match.regions) == ["elsewhere"] and got.position == 1
    assert got.match.min_severity == 2 and list(got.group_by) == ["region"] and got.send_resolved  # kept
    assert got.id == r.id and got.create_time == r.create_time and got.name == r.name
    assert (await s.GetRoute(pb.GetRouteRequest(route_id=r.id), metadata=md(w))).route == got
    listed = (await s.ListRoutes(pb.ListRoutesRequest(page={"size": 1000}), metadata=md(w))).routes
    assert [x for x in listed if x.id == r.id] == [got]  # the list's order column moved with it

    pol = await policy(w, a)
    sch = await schedule(w, a)
    got = (await s.UpdateEscalationPolicy(pb.UpdateEscalationPolicyRequest(policy=pb.EscalationPolicy(
        id=pol.id, name="paging v2", steps=[pb.EscalationStep(channel_ids=[b], escalate_after_seconds=60),
                                            pb.EscalationStep(schedule_id=sch.id, escalate_after_seconds=60)])),
        metadata=md(w))).policy
    assert got.name == "paging v2" and got.repeat == 1 and [list(x.channel_ids) for x in got.steps] == [[b], []]
    assert got.steps[1].schedule_id == sch.id

    override = pb.Override(member=pb.OnCallMember(name="cover", channel_id=a))
    override.start_time.FromSeconds(1_800_000_000)
    override.end_time.FromSeconds(1_800_003_600)
    await s.AddOverride(pb.AddOverrideRequest(schedule_id=sch.id, override=override), metadata=md(w))
    rot = pb.Rotation(name="night", shift_seconds=3600, members=[pb.OnCallMember(name="bob", channel_id=b)])
    rot.start_time.FromSeconds(1_700_000_000)
    got = (await s.UpdateSchedule(pb.UpdateScheduleRequest(schedule=pb.Schedule(id=sch.id, name="duty v2",
                                                                                rotations=[rot])),
                                  metadata=md(w))).schedule
    assert got.name == "duty v2" and [x.name for x in got.rotations] == ["night"]
    assert [o.member.name for o in got.overrides] == ["cover"]  # overrides stay
    now = (await s.GetOnCall(pb.GetOnCallRequest(schedule_id=sch.id), metadata=md(w)))
    assert now.member.name == "bob" and now.source == "night"


async def test_not_found_tenant_scope_and_roles(world):
    """Another tenant's channel and the towerco's configuration are NOT_FOUND to a tenant, before
    its role is looked at (like Delete); what it sees but may not change is PERMISSION_DENIED."""
    w, s = world, world["stub"]
    mine = (await mailbox(w, "ops@acme.test", tenant="acme")).id
    theirs = (await mailbox(w, "ops@beta.test", tenant="beta")).id
    internal = (await mailbox(w, "noc@towerco.test")).id
    r = await route(w, region(), [internal])
    pol, sch = await policy(w, internal), await schedule(w, internal)
    acme = md(w, "tenant_viewer", "acme")

    async def codes(meta, channel: str, route_id: str, policy_id: str, schedule_id: str) -> dict[str, object]:
        return {
            "channel": await code_of(s.UpdateChannel(pb.UpdateChannelRequest(
                channel=pb.Channel(id=channel, name="x")), metadata=meta)),
            "route": await code_of(s.UpdateRoute(pb.UpdateRouteRequest(
                route=pb.Route(id=route_id, name="x")), metadata=meta)),
            "policy": await code_of(s.UpdateEscalationPolicy(pb.UpdateEscalationPolicyRequest(
                policy=pb.EscalationPolicy(id=policy_id, name="x")), metadata=meta)),
            "schedule": await code_of(s.UpdateSchedule(pb.UpdateScheduleRequest(
                schedule=pb.Schedule(id=schedule_id, name="x")), metadata=meta)),
        }

    nf, denied = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED
    assert await codes(acme, theirs, r.id, pol.id, sch.id) == dict.fromkeys(("channel", "route", "policy", "schedule"), nf)
    assert (await codes(acme, internal, r.id, pol.id, sch.id))["channel"] == nf
    assert (await codes(acme, mine, r.id, pol.id, sch.id))["channel"] == denied
    assert set((await codes(md(w, "viewer"), internal, r.id, pol.id, sch.id)).values()) == {denied}
    for bad_id in (str(uuid.uuid4()), "not-a-uuid"):
        assert set((await codes(md(w), bad_id, bad_id, bad_id, bad_id)).values()) == {nf}, bad_id
    operator = md(w, "noc_operator")
    got = (await s.UpdateChannel(pb.UpdateChannelRequest(channel=pb.Channel(id=theirs, name="beta ops")),
                                 metadata=operator)).channel
    assert got.name == "beta ops" and got.tenant_id == "beta"
    names = {(await s.GetChannel(pb.GetChannelRequest(channel_id=c), metadata=md(w))).channel.name
             for c in (mine, internal)}
    assert "x" not in names  # the refused updates changed nothing


# ------------------------------------------------------------------------ the notifier follows


async def test_the_notifier_follows_an_updated_channel_and_route(world):
    w, s, web = world, world["stub"], world["web"]
    reg, other = region(), region()
    ch = await webhook(w, "/u-old", secret="wrong-secret-0123456789")
    spare = await webhook(w, "/u-spare")
    r = await route(w, reg, [ch.id], group_wait_seconds=0)

    # 1. a new URL and the receiver's secret: the next notification goes there, signed with it
    await s.UpdateChannel(pb.UpdateChannelRequest(
        channel=pb.Channel(id=ch.id, webhook_url=web.url + "/u-new", signing_secret=SECRET),
        update_mask=mask("webhook_url", "signing_secret")), metadata=md(w))
    first = incident(region=reg)
    await publish(w["js"], first)
    got = await eventually(lambda: web.accepted("/u-new"), lambda x: len(x) >= 1)
    assert first.id in got[0].body.decode() and got[0].signature_ok is True
    assert not [x for x in web.received if x.path == "/u-old"]

    # 2. the route now sends elsewhere and matches another region
    await s.UpdateRoute(pb.UpdateRouteRequest(
        route=pb.Route(id=r.id, channel_ids=[spare.id], match=pb.IncidentMatcher(regions=[other])),
        update_mask=mask("channel_ids", "match.regions")), metadata=md(w))
    stale, fresh = incident(region=reg), incident(region=other)
    await publish(w["js"], stale)
    await publish(w["js"], fresh)
    got = await eventually(lambda: web.accepted("/u-spare"), lambda x: len(x) >= 1)
    assert fresh.id in got[0].body.decode()
    await asyncio.sleep(1.0)  # the stale event was consumed before the fresh one; give its sends time
    assert all(stale.id not in x.body.decode() for x in web.received)  # the old match no longer takes it
    made = (await s.ListNotifications(pb.ListNotificationsRequest(incident_id=stale.id), metadata=md(w)))
    assert not made.notifications
    assert len(web.accepted("/u-new")) == 1


# ------------------------------------------------------------------------------------ REST


async def test_patch_over_rest(world):
    w = world
    ch = await webhook(w, "/u-rest")
    r = await route(w, region(), [ch.id], match=pb.IncidentMatcher(regions=["x"], min_severity=3))
    sch = await schedule(w, ch.id)
    headers = {"authorization": f"Bearer {token(w)}"}
    async with httpx.AsyncClient(base_url=w["base"], headers=headers, timeout=30) as http:
        url = f"/api/v1/notification-channels/{ch.id}"
        # no updateMask: the body's keys
        resp = await http.patch(url, json={"webhookUrl": w["web"].url + "/u-rest-2"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["webhookUrl"].endswith("/u-rest-2") and body["name"] == ch.name and body["hasSigningSecret"]
        assert "signingSecret" not in body
        # a secret is taken, never echoed
        resp = await http.patch(url, json={"signingSecret": "rest-secret-0123456789"})
        assert resp.status_code == 200 and "signingSecret" not in resp.json() and resp.json()["hasSigningSecret"]
        assert "rest-secret" not in resp.text
        # an updateMask: only its paths change (camelCase or snake_case)
        resp = await http.patch(url, params={"updateMask": "name"}, json={"name": "rest hook", "webhookUrl": "https://ignored.test/x"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["name"] == "rest hook" and resp.json()["webhookUrl"].endswith("/u-rest-2")
        # bad paths, bad values, not found
        resp = await http.patch(url, params={"updateMask": "kind"}, json={"kind": "CHANNEL_KIND_EMAIL"})
        assert resp.status_code == 400, resp.text
        assert fields(resp) == ["update_mask.paths[0]"]
        resp = await http.patch(url, json={"id": ch.id, "name": "x"})  # the id is the path's
        assert resp.status_code == 400 and fields(resp) == ["update_mask.paths[0]"], resp.text
        resp = await http.patch(url, json={"webhookUrl": "ftp://x"})
        assert resp.status_code == 400 and "channel.webhook_url" in fields(resp), resp.text
        resp = await http.patch(url, json={"signingSecret": "short"})
        assert resp.status_code == 400 and fields(resp) == ["channel.signing_secret"], resp.text
        resp = await http.patch(url, json={"name": ""})
        assert resp.status_code == 400 and fields(resp) == ["channel.name"], resp.text
        resp = await http.patch(f"/api/v1/notification-channels/{uuid.uuid4()}", json={"name": "x"})
        assert resp.status_code == 404 and resp.json()["code"] == 5, resp.text
        resp = await http.patch(url, json={"name": "x"}, headers={
            "authorization": f"Bearer {token(w, 'tenant_viewer', 'acme')}"})
        assert resp.status_code == 404, resp.text  # the towerco's channel: hidden from a tenant

        resp = await http.patch(f"/api/v1/notification-routes/{r.id}", json={"match": {"regions": ["y", "z"]}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["match"] == {"regions": ["y", "z"], "minSeverity": noc_pb2.IncidentSeverity.Name(3)}
        assert resp.json()["channelIds"] == [ch.id]
        resp = await http.patch(f"/api/v1/notification-routes/{r.id}", json={"groupWaitSeconds": -1})
        assert resp.status_code == 400 and fields(resp) == ["route.group_wait_seconds"], resp.text

        resp = await http.patch(f"/api/v1/oncall-schedules/{sch.id}", json={"name": "rest duty"})
        assert resp.status_code == 200 and resp.json()["name"] == "rest duty", resp.text
        assert resp.json()["rotations"][0]["members"][0]["name"] == "ann"
        resp = await http.patch(f"/api/v1/oncall-schedules/{sch.id}", json={"rotations": []})
        assert resp.status_code == 400 and fields(resp) == ["schedule.rotations"], resp.text

        pol = await policy(w, ch.id)
        resp = await http.patch(f"/api/v1/escalation-policies/{pol.id}", params={"updateMask": "repeat"},
                                json={"repeat": 4})
        assert resp.status_code == 200 and resp.json()["repeat"] == 4 and resp.json()["name"] == "paging", resp.text
        resp = await http.patch(f"/api/v1/escalation-policies/{pol.id}", json={"steps": []})
        assert resp.status_code == 400 and fields(resp) == ["policy.steps"], resp.text
    read = (await w["stub"].GetChannel(pb.GetChannelRequest(channel_id=ch.id), metadata=md(w))).channel
    assert read.name == "rest hook" and read.webhook_url.endswith("/u-rest-2")


def fields(resp: httpx.Response) -> list[str]:
    return [v["field"] for d in resp.json().get("details", []) for v in d.get("fieldViolations", [])]
