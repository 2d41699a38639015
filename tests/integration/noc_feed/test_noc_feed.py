"""The lossless live incident feed (services/noc/feed.py) on a real JetStream: replay then live,
resume after the last sequence with nothing lost or repeated (also in the middle of a storm and
across a NATS restart), tenant isolation, filters, bad input, retention, no leaked consumers."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from noc_feed_support import (
    OPERATOR,
    STAFF,
    consumers,
    eventually,
    incident_event,
    nothing_more,
    publish_incident,
    publish_other,
    take,
    tenant_viewer,
)
from towerco.noc.v1 import noc_pb2

from mesh.auth import Identity
from mesh.errors import InvalidArgument, OutOfRange, PermissionDenied
from services.noc.feed import CURSOR_AHEAD, CURSOR_EXPIRED

Req = noc_pb2.WatchIncidentsRequest


async def test_replay_then_live_in_stream_order(js, feed, closing):
    seqs = []
    for i in range(5):
        seqs.append(await publish_incident(js, incident_event(title=f"old {i}")))
        await publish_other(js)  # other domains' events interleave on EVENTS
    stream = feed.watch(Req(), STAFF)
    closing.append(stream)
    got = await take(stream, 5)
    assert [m.sequence for m in got] == seqs
    assert [m.incident.title for m in got] == [f"old {i}" for i in range(5)]
    assert all(m.change == noc_pb2.INCIDENT_CHANGE_OPENED and m.entry.text == "opened" for m in got)
    assert all(not m.incident.timeline for m in got)  # the contract: no timeline on the feed
    live = [await publish_incident(js, incident_event(title=f"new {i}")) for i in range(3)]
    got = await take(stream, 3)
    assert [m.sequence for m in got] == live
    assert [m.incident.title for m in got] == [f"new {i}" for i in range(3)]


async def test_resume_after_last_sequence_has_no_gap_and_no_duplicate(js, feed, closing):
    ids = [incident_event() for _ in range(10)]
    for ev in ids:
        await publish_incident(js, ev)
    first = feed.watch(Req(), STAFF)
    got = await take(first, 4)
    await first.aclose()
    missed = [await publish_incident(js, incident_event(title=f"while away {i}")) for i in range(3)]
    second = feed.watch(Req(after_sequence=got[-1].sequence), STAFF)
    closing.append(second)
    rest = await take(second, 9)
    everything = got + rest
    assert [m.incident.id for m in everything[:10]] == [e.incident.id for e in ids]
    assert [m.sequence for m in everything[10:]] == missed
    seqs = [m.sequence for m in everything]
    assert seqs == sorted(set(seqs))
    marker = await publish_incident(js, incident_event(title="marker"))
    [last] = await take(second, 1)
    assert last.sequence == marker


async def test_client_leaving_in_the_middle_of_a_storm_resumes_with_nothing_lost(js, feed, closing):
    """A storm of incident changes (and other events) is published while a client reads a few,
    disconnects, reconnects with its cursor, again and again: what it received, in order, is
    exactly every incident change, once."""
    total = 600
    published: list[int] = []

    async def storm() -> None:
        for i in range(total):
            published.append(await publish_incident(js, incident_event(title=f"storm {i}")))
            if i % 7 == 0:
                await publish_other(js)
            if i % 50 == 0:
                await asyncio.sleep(0.01)

    storming = asyncio.create_task(storm())
    received: list[noc_pb2.WatchIncidentsResponse] = []
    cursor = 0
    rng = random.Random(12)
    try:
        while len(received) < total:
            stream = feed.watch(Req(after_sequence=cursor), STAFF)
            try:
                want = min(rng.randint(1, 80), total - len(received))
                got = await take(stream, want, timeout=60)
            finally:
                await stream.aclose()  # the client goes away mid-storm
            received.extend(got)
            cursor = got[-1].sequence
        await storming
    finally:
        storming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await storming
    assert [m.sequence for m in received] == published
    assert [m.incident.title for m in received] == [f"storm {i}" for i in range(total)]
    await eventually(lambda: _no_consumers(js), timeout=15, what="every feed consumer removed")


async def _no_consumers(js) -> bool:
    return not await consumers(js)


async def test_tenant_viewer_sees_only_its_incidents_and_its_tenancies(js, feed, closing):
    a_only = await publish_incident(js, incident_event(tenants=["TEN-A"], title="a"))
    b_only = await publish_incident(js, incident_event(tenants=["TEN-B"], title="b"))
    shared = await publish_incident(js, incident_event(tenants=["TEN-A", "TEN-B", "TEN-C"], title="shared"))
    nobody = await publish_incident(js, incident_event(tenants=[], title="towerco only"))
    marker = await publish_incident(js, incident_event(tenants=["TEN-A"], title="marker"))

    a_feed = feed.watch(Req(), tenant_viewer("TEN-A"))
    closing.append(a_feed)
    got = await take(a_feed, 3)
    assert [m.sequence for m in got] == [a_only, shared, marker]
    for m in got:
        assert list(m.incident.tenant_ids) == ["TEN-A"]
        assert {i.tenant_id for i in m.incident.impacts} == {"TEN-A"}
    assert len(got[1].incident.impacts) == 1

    b_feed = feed.watch(Req(), tenant_viewer("TEN-B"))
    closing.append(b_feed)
    got_b = await take(b_feed, 2)
    assert [m.sequence for m in got_b] == [b_only, shared]
    assert [list(m.incident.tenant_ids) for m in got_b] == [["TEN-B"], ["TEN-B"]]

    staff = feed.watch(Req(), STAFF)
    closing.append(staff)
    got_s = await take(staff, 5)
    assert [m.sequence for m in got_s] == [a_only, b_only, shared, nobody, marker]
    assert len(got_s[2].incident.impacts) == 3 and list(got_s[2].incident.tenant_ids) == ["TEN-A", "TEN-B", "TEN-C"]

    # a tenant naming another tenant gets an empty feed (as a list filtered on it: an empty page)
    nosy = feed.watch(Req(tenant_id="TEN-B"), tenant_viewer("TEN-A"))
    closing.append(nosy)
    # a tenant resuming after a sequence it never received (filtered out) still gets the next one
    resumed = feed.watch(Req(after_sequence=b_only), tenant_viewer("TEN-A"))
    closing.append(resumed)
    assert [m.sequence for m in await take(resumed, 2)] == [shared, marker]
    live = await publish_incident(js, incident_event(tenants=["TEN-B"], title="b live"))
    [m] = await take(b_feed, 1)
    assert m.sequence == live
    await nothing_more(nosy)
    await nothing_more(a_feed, within=0.5)


async def test_filters(js, feed, closing):
    crit_north = await publish_incident(js, incident_event(severity=noc_pb2.INCIDENT_SEVERITY_CRITICAL,
                                                           region="north", site="TWR-0001"))
    minor_south = await publish_incident(js, incident_event(severity=noc_pb2.INCIDENT_SEVERITY_MINOR,
                                                            region="south", site="TWR-0002", tenants=["TEN-B"]))
    major_south_ack = await publish_incident(js, incident_event(
        severity=noc_pb2.INCIDENT_SEVERITY_MAJOR, region="south", site="TWR-0003",
        state=noc_pb2.INCIDENT_STATE_ACKNOWLEDGED, change=noc_pb2.INCIDENT_CHANGE_ACKNOWLEDGED,
        tenants=["TEN-A", "TEN-B"]))
    end = await publish_incident(js, incident_event(severity=noc_pb2.INCIDENT_SEVERITY_WARNING, region="east",
                                                    site="TWR-0004", tenants=["TEN-C"]))
    cases = [
        (Req(min_severity=noc_pb2.INCIDENT_SEVERITY_MAJOR), [crit_north, major_south_ack]),
        (Req(region="south"), [minor_south, major_south_ack]),
        (Req(site_id="TWR-0002"), [minor_south]),
        (Req(tenant_id="TEN-B"), [minor_south, major_south_ack]),
        (Req(state=noc_pb2.INCIDENT_STATE_ACKNOWLEDGED), [major_south_ack]),
        (Req(region="south", min_severity=noc_pb2.INCIDENT_SEVERITY_MAJOR), [major_south_ack]),
        (Req(region="east"), [end]),
    ]
    for request, expected in cases:
        stream = feed.watch(request, STAFF)
        try:
            got = await take(stream, len(expected))
            assert [m.sequence for m in got] == expected, request
            await nothing_more(stream, within=0.3)
        finally:
            await stream.aclose()
    # the tenant filter composes with a tenant viewer's own scope
    stream = feed.watch(Req(tenant_id="TEN-A", region="south"), tenant_viewer("TEN-A"))
    closing.append(stream)
    [m] = await take(stream, 1)
    assert m.sequence == major_south_ack and [i.tenant_id for i in m.incident.impacts] == ["TEN-A"]


async def test_live_only_starts_at_the_end(js, feed, closing):
    for _ in range(3):
        await publish_incident(js, incident_event(title="before"))
    stream = feed.watch(Req(live_only=True), STAFF)
    closing.append(stream)
    reader = asyncio.ensure_future(take(stream, 1))
    await asyncio.sleep(0)  # let the call open its consumer before publishing (not needed for
    # correctness: the start is fixed at the stream's end when the call began, so a change
    # published meanwhile is included)
    after = await publish_incident(js, incident_event(title="after"))
    [m] = await reader
    assert m.sequence == after and m.incident.title == "after"


@pytest.mark.parametrize("request_, field", [
    (Req(live_only=True, after_sequence=3), "live_only"),
    (Req(after_sequence=-1), "after_sequence"),
    (Req(min_severity=42), "min_severity"),
    (Req(state=9), "state"),
    (Req(region="x" * 65), "region"),
])
async def test_bad_arguments_are_invalid_argument_with_the_field(feed, request_, field):
    with pytest.raises(InvalidArgument) as err:
        feed.watch(request_, STAFF)
    assert field in [v.field for v in err.value.violations]


async def test_a_role_that_may_not_read_is_denied(feed):
    with pytest.raises(PermissionDenied):
        feed.watch(Req(), Identity("robot", "*", frozenset({"file_download"})))
    assert feed.watch(Req(), OPERATOR) is not None  # noc_operator implies viewer


async def test_cursor_beyond_the_stream_is_out_of_range(js, feed):
    last = await publish_incident(js, incident_event())
    stream = feed.watch(Req(after_sequence=last + 10), STAFF)
    with pytest.raises(OutOfRange) as err:
        await anext(stream)
    assert err.value.reason == CURSOR_AHEAD and "re-list" in err.value.details
    # the last sequence itself is a valid cursor: nothing yet, then the next change
    ok = feed.watch(Req(after_sequence=last), STAFF)
    try:
        nxt = await publish_incident(js, incident_event())
        [m] = await take(ok, 1)
        assert m.sequence == nxt
    finally:
        await ok.aclose()


async def test_cursor_older_than_retention_is_out_of_range_and_zero_replays_what_is_kept(js, feed, closing):
    seqs = [await publish_incident(js, incident_event(title=f"i{i}")) for i in range(10)]
    await js.purge_stream("EVENTS", seq=seqs[6])  # retention removed everything before seqs[6]
    stale = feed.watch(Req(after_sequence=seqs[2]), STAFF)
    with pytest.raises(OutOfRange) as err:
        await anext(stale)
    assert err.value.reason == CURSOR_EXPIRED and "re-list" in err.value.details
    # a cursor just before the first kept message loses nothing
    ok = feed.watch(Req(after_sequence=seqs[5]), STAFF)
    closing.append(ok)
    assert [m.sequence for m in await take(ok, 4)] == seqs[6:]
    everything = feed.watch(Req(), STAFF)
    closing.append(everything)
    assert [m.sequence for m in await take(everything, 4)] == seqs[6:]


async def test_retention_passing_the_cursor_while_reconnecting_is_out_of_range_not_a_gap(js, feed, closing):
    """The consumer is lost (here: deleted on the server) and, before it is recreated, retention
    removes changes the client never got: the call ends with CURSOR_EXPIRED instead of jumping."""
    seqs = [await publish_incident(js, incident_event(title=f"i{i}")) for i in range(3)]
    stream = feed.watch(Req(), STAFF)
    closing.append(stream)
    got = await take(stream, 3)
    assert [m.sequence for m in got] == seqs
    [name] = await consumers(js)
    await js.delete_consumer("EVENTS", name)  # lost before it could push the next ones
    unseen = [await publish_incident(js, incident_event(title=f"unseen {i}")) for i in range(3)]
    await js.purge_stream("EVENTS", seq=unseen[-1] + 1)  # the three unseen ones are gone
    await publish_incident(js, incident_event(title="kept"))
    with pytest.raises(OutOfRange) as err:
        extra = await asyncio.wait_for(anext(stream), 30)
        raise AssertionError(f"jumped to {extra.sequence} over {unseen}")
    assert err.value.reason == CURSOR_EXPIRED


async def test_cancelled_calls_leave_no_consumer(js, feed):
    await publish_incident(js, incident_event())
    streams = [feed.watch(Req(), STAFF) for _ in range(5)]
    for s in streams:
        await take(s, 1)
    assert len(await consumers(js)) == 5
    # a call waiting for the next message is cancelled (the gRPC client went away)
    waiting = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0.2)
    for w in waiting:
        w.cancel()
    for w in waiting:
        with contextlib.suppress(asyncio.CancelledError):
            await w
    for s in streams:
        await s.aclose()
    await eventually(lambda: _no_consumers(js), timeout=15, what="consumers removed after cancellation")


@pytest.mark.slow
async def test_a_connected_client_survives_a_nats_restart_with_nothing_lost(js, feed, restart_nats, closing):
    """NATS is killed and restarted while a client is connected: the feed recreates its consumer
    at the cursor and the client gets every change exactly once, before and after."""
    before = [await publish_incident(js, incident_event(title=f"before {i}")) for i in range(5)]
    stream = feed.watch(Req(), STAFF)
    closing.append(stream)
    got = await take(stream, 5)
    reader_out: list[noc_pb2.WatchIncidentsResponse] = []

    async def keep_reading() -> None:
        async for m in stream:
            reader_out.append(m)

    reader = asyncio.create_task(keep_reading())
    await restart_nats()

    async def publish_when_back() -> list[int]:
        out = []
        for i in range(5):
            while True:
                try:
                    out.append(await publish_incident(js, incident_event(title=f"after {i}")))
                    break
                except Exception:  # noqa: BLE001 - reconnecting
                    await asyncio.sleep(0.2)
        return out

    after = await asyncio.wait_for(publish_when_back(), 60)
    await eventually(lambda: _len_at_least(reader_out, 5), timeout=60, what="changes after the restart")
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert [m.sequence for m in got] == before
    assert [m.sequence for m in reader_out] == after


async def _len_at_least(items: list, n: int) -> bool:
    return len(items) >= n
