"""The notifier's pure decisions with explicit clocks: routing order and continue_matching,
Alertmanager's group wait / interval / repeat, escalation steps and repeats, on-call hand-overs
and overrides, silences, signatures, backoff; and the service's on-call copy agrees."""

from __future__ import annotations

from towerco.noc.v1 import noc_pb2
from towerco.notifications.v1 import notifications_pb2 as pb

from mesh import oncall
from services.notifications import domain as sdomain
from workers.notifier import domain as d


def facts(**kw) -> d.Facts:
    base = dict(id="i1", severity=noc_pb2.INCIDENT_SEVERITY_MAJOR, region="north", site_ids=("TWR-1",),
                tenant_ids=("acme",), kind=noc_pb2.INCIDENT_KIND_POWER, state=noc_pb2.INCIDENT_STATE_OPEN,
                suppressed=False)
    base.update(kw)
    return d.Facts(**base)


def test_route_first_match_wins_unless_continue():
    a = d.Rule("a", position=1, regions=("north",), continue_matching=True)
    b = d.Rule("b", position=2, min_severity=noc_pb2.INCIDENT_SEVERITY_CRITICAL)
    c = d.Rule("c", position=3)
    e = d.Rule("e", position=4)
    assert [r.id for r in d.route([e, c, b, a], facts())] == ["a", "c"]
    assert [r.id for r in d.route([e, c, b, a], facts(severity=noc_pb2.INCIDENT_SEVERITY_CRITICAL))] == ["a", "b"]
    assert [r.id for r in d.route([e, c, b, a], facts(region="south"))] == ["c"]
    assert d.route([], facts()) == []


def test_matchers_every_condition():
    r = d.Rule("r", tenant_ids=("beta",), site_ids=("TWR-1", "TWR-2"), kinds=(noc_pb2.INCIDENT_KIND_FUEL,))
    assert not d.matches(r, facts())
    assert d.matches(r, facts(tenant_ids=("acme", "beta"), kind=noc_pb2.INCIDENT_KIND_FUEL))
    assert not d.matches(r, facts(tenant_ids=("beta",), kind=noc_pb2.INCIDENT_KIND_FUEL, site_ids=("TWR-3",)))


def test_group_key_by_fields():
    r = d.Rule("r", group_by=("site", "region"))
    assert d.group_key(r, facts(site_ids=("B", "A"))) == "region=north;site=A,B"
    assert d.group_key(d.Rule("x"), facts()) == "incident=i1"
    assert d.group_key(d.Rule("x", group_by=("severity", "kind")), facts()) == "kind=POWER;severity=MAJOR"


def test_group_wait_interval_repeat_timeline():
    rule = d.Rule("r", group_wait_s=30, group_interval_s=300, repeat_interval_s=3600)
    g = d.GroupTimes(created=1000.0)
    assert d.next_flush(g, rule) == 1030.0  # group_wait after the first incident
    assert d.should_send(g, rule, 1030.0)
    g = d.after_flush(g, sent=True, now=1030.0, firing=True)
    assert d.next_flush(g, rule) == 1030.0 + 3600  # unchanged: repeat_interval after the last send
    assert not d.should_send(g, rule, 2000.0)
    g = d.after_change(g, firing=True)  # a new incident joins at t=1100
    assert d.next_flush(g, rule) == 1030.0 + 300  # group_interval after the last flush
    g = d.after_flush(g, sent=True, now=1330.0, firing=True)
    assert d.next_flush(g, rule) == 1330.0 + 3600
    assert d.should_send(g, rule, 1330.0 + 3600)
    done = d.after_flush(g, sent=True, now=5000.0, firing=False)
    assert d.next_flush(done, rule) is None  # everything resolved and told


def test_escalation_advances_and_repeats_then_exhausts():
    p = d.Policy("p", steps=(d.Step(("a",), "", 60), d.Step(("b",), "", 120)), repeat=1)
    e = d.Escalation(0, 0, 0.0)
    e1 = d.advance(p, e, 10.0)
    assert e1 == d.Escalation(1, 0, 70.0)  # step 2 if not acknowledged within 60 s of step 1
    e2 = d.advance(p, e1, 70.0)
    assert e2 == d.Escalation(0, 1, 190.0)  # after the last step: round 2 from step 1
    e3 = d.advance(p, e2, 190.0)
    assert e3 == d.Escalation(1, 1, 250.0)
    assert d.advance(p, e3, 250.0) is None  # repeat 1: two rounds, then exhausted
    assert d.advance(d.Policy("q", steps=()), e, 0.0) is None


ANN, BOB, CAT, SUB = d.Member("ann", "c-ann"), d.Member("bob", "c-bob"), d.Member("cat", "c-cat"), d.Member("sub")


def test_on_call_hand_over_layers_and_overrides():
    day = 86400.0
    primary = d.RotationSpec((ANN, BOB, CAT), start=1000.0, shift_s=day, name="primary")
    sched = d.ScheduleSpec((primary,))
    assert d.on_call(sched, 999.0) is None  # not started
    assert d.on_call(sched, 1000.0) == d.OnCall(ANN, "primary", 1000.0, 1000.0 + day)
    assert d.on_call(sched, 1000.0 + day - 0.001).member == ANN
    assert d.on_call(sched, 1000.0 + day).member == BOB  # hand-over on the dot
    assert d.on_call(sched, 1000.0 + 3 * day).member == ANN  # wraps round
    weekend = d.RotationSpec((CAT,), start=1000.0 + 5 * day, shift_s=2 * day, name="weekend")
    layered = d.ScheduleSpec((primary, weekend))
    assert d.on_call(layered, 1000.0 + 4 * day).member == BOB  # the later layer has not started
    assert d.on_call(layered, 1000.0 + 5 * day).source == "weekend"
    o1 = d.OverrideSpec(SUB, 1000.0 + day + 3600, 1000.0 + day + 7200)
    o2 = d.OverrideSpec(ANN, 1000.0 + day + 5400, 1000.0 + day + 9000)
    ov = d.ScheduleSpec((primary,), (o1, o2))
    assert d.on_call(ov, 1000.0 + day + 3600).member == SUB
    assert d.on_call(ov, 1000.0 + day + 6000) == d.OnCall(ANN, "override", o2.start, o2.end)  # latest wins
    assert d.on_call(ov, 1000.0 + day + 9000).member == BOB  # override over: the rotation again


def test_the_service_reads_a_stored_schedule_as_the_rule_does():
    s = pb.Schedule(rotations=[pb.Rotation(name="p", shift_seconds=3600, members=[
        pb.OnCallMember(name=m.name, channel_id=m.channel_id) for m in (ANN, BOB)])])
    s.rotations[0].start_time.FromSeconds(1000)
    o = s.overrides.add(member=pb.OnCallMember(name="sub"))
    o.start_time.FromSeconds(5000)
    o.end_time.FromSeconds(6000)
    spec = d.ScheduleSpec((d.RotationSpec((ANN, BOB), 1000.0, 3600.0, "p"),), (d.OverrideSpec(SUB, 5000.0, 6000.0),))
    assert oncall.schedule_spec(s) == spec
    for t in (999.0, 1000.0, 4599.0, 4600.0, 5000.0, 5999.0, 6000.0, 90000.0):
        assert oncall.on_call(oncall.schedule_spec(s), t) == d.on_call(spec, t)


def test_silences_match_all_matchers_in_their_range():
    s = d.SilenceSpec("s", (d.MatcherSpec("region", "north"), d.MatcherSpec("site", "TWR-[0-9]+", 3)), 100.0, 200.0)
    assert d.silenced_by([s], facts(), 150.0) == "s"
    assert d.silenced_by([s], facts(), 99.0) is None and d.silenced_by([s], facts(), 200.0) is None
    assert d.silenced_by([s], facts(site_ids=("XYZ",)), 150.0) is None
    neg = d.SilenceSpec("n", (d.MatcherSpec("tenant", "beta", 2), d.MatcherSpec("severity", "MINOR|WARNING", 4)),
                        0.0, 1e12)
    assert d.silenced_by([neg], facts(), 1.0) == "n"
    assert d.silenced_by([neg], facts(tenant_ids=("beta",)), 1.0) is None
    assert d.silenced_by([neg], facts(severity=noc_pb2.INCIDENT_SEVERITY_MINOR), 1.0) is None
    assert d.silenced_by([d.SilenceSpec("e", (), 0, 1e12)], facts(), 1.0) is None  # no matchers: nothing
    assert d.check_regex("(") and d.check_regex("a|b") is None


def test_firing_pageable_suppressed():
    assert facts().firing and facts().pageable
    ack = facts(state=noc_pb2.INCIDENT_STATE_ACKNOWLEDGED)
    assert ack.firing and not ack.pageable
    assert not facts(suppressed=True).firing and not facts(suppressed=True).pageable
    assert facts(state=noc_pb2.INCIDENT_STATE_CLOSED).resolved


def test_tenant_channel_payload_is_scoped():
    inc = noc_pb2.Incident(id="x", tenant_ids=["acme", "beta"], impacts=[
        noc_pb2.TenancyImpact(tenant_id="acme", tenancy_id="t1"), noc_pb2.TenancyImpact(tenant_id="beta",
                                                                                        tenancy_id="t2")])
    other = noc_pb2.Incident(id="y", tenant_ids=["beta"])
    assert [i.id for i in d.scoped([inc, other], "")] == ["x", "y"]
    mine = d.scoped([inc, other], "acme")
    assert [i.id for i in mine] == ["x"] and list(mine[0].tenant_ids) == ["acme"]
    assert [i.tenancy_id for i in mine[0].impacts] == ["t1"] and len(inc.impacts) == 2  # the original unchanged


def test_signature_and_tolerance():
    body = b'{"a":1}'
    h = d.sign("s" * 16, 1000, body)
    assert h.startswith("t=1000,v1=") and len(h.split("v1=")[1]) == 64
    assert d.verify("s" * 16, h, body, now=1100)
    assert not d.verify("s" * 16, h, body, now=1000 + d.SIGNATURE_TOLERANCE_S + 1)
    assert not d.verify("s" * 16, "garbage", body, now=1000)
    assert d.verify("s" * 16, h + ",v1=" + "0" * 64, body, now=1000)  # several signatures: one matches


def test_backoff_grows_with_jitter_and_caps():
    lo = [d.retry_delay(n, base_s=1, cap_s=60, rand=lambda a, b: a) for n in range(1, 9)]
    hi = [d.retry_delay(n, base_s=1, cap_s=60, rand=lambda a, b: b) for n in range(1, 9)]
    assert lo == [0.5, 1, 2, 4, 8, 16, 30, 30] and hi == [1, 2, 4, 8, 16, 32, 60, 60]
    assert d.retryable(500) and d.retryable(429) and d.retryable(0) and not d.retryable(400)
    assert not d.retryable(401) and d.retryable(408)


def test_body_and_summary():
    inc = noc_pb2.Incident(id="x", title="TWR-1: mains failure", severity=noc_pb2.INCIDENT_SEVERITY_CRITICAL)
    b = d.webhook_body(notification_id="n", kind=d.KIND_ESCALATION, channel_id="c", tenant_id="", route_id="r",
                       group_key="g", incidents=[inc, inc], created="2026-01-01T00:00:00Z", step=2, round_=1)
    assert b["summary"] == "[ESCALATION step 2] CRITICAL TWR-1: mains failure (+1 more)"
    assert b["escalation"] == {"step": 2, "round": 1} and b["status"] == "firing"
    assert d.encode_body(b) == d.encode_body(dict(reversed(list(b.items()))))  # canonical
    # the stop notice says why the paging stopped
    for state, why in ((noc_pb2.INCIDENT_STATE_ACKNOWLEDGED, "ACKNOWLEDGED"), (noc_pb2.INCIDENT_STATE_RESOLVED, "RESOLVED"),
                       (noc_pb2.INCIDENT_STATE_CLOSED, "CLOSED")):
        inc.state = state
        assert d.summary(d.KIND_ESCALATION_STOPPED, [inc]).startswith(f"[ESCALATION STOPPED: {why}] CRITICAL TWR-1")
    inc.state = noc_pb2.INCIDENT_STATE_OPEN  # stopped by its suppression: no state to give
    assert d.summary(d.KIND_ESCALATION_STOPPED, [inc]).startswith("[ESCALATION STOPPED] CRITICAL TWR-1")


def test_service_checks_channels_and_page_tokens():
    assert sdomain.channel_problems(kind=1, webhook_url="", signing_secret="", email_address="a@b") == [
        ("channel.webhook_url", "is required for a webhook channel"),
        ("channel.signing_secret", "must be at least 16 characters for a webhook"),
        ("channel.email_address", "must be empty for a webhook channel")]
    assert sdomain.channel_problems(kind=2, webhook_url="", signing_secret="", email_address="a@b") == []
    assert sdomain.decode_offset(sdomain.encode_offset(50)) == 50 and sdomain.decode_offset("") == 0
    for bad in ("garbage", sdomain.encode_offset(-1)):
        try:
            sdomain.decode_offset(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
