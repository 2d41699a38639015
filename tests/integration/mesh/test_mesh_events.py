"""mesh.events against the session's real NATS JetStream: streams, publish dedup, PullConsumer
ack / nak-with-backoff / poison / max_deliver -> DLQ, and surviving a NATS restart."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.js import api

from mesh import events


async def wait_for(predicate, within: float = 10.0, step: float = 0.05):
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


def start(consumer: events.PullConsumer) -> asyncio.Task:
    return asyncio.create_task(consumer.run())


async def test_streams_exist_and_ensure_is_idempotent(js):
    await events.ensure_streams(js)
    await events.ensure_streams(js)
    for name, subject in (("TELEMETRY", "telemetry.samples.*"), ("EVENTS", "towerco.>"), ("DLQ", "dlq.>")):
        info = await js.stream_info(name)
        assert info.config.subjects == [subject]
        assert info.config.storage == api.StorageType.FILE
        assert info.config.duplicate_window == 120


async def test_publish_dedups_by_msg_id(js, topic, stream_messages):
    subject = f"{topic}.said"
    first = await events.publish(js, subject, b"one", msg_id="m-1")
    again = await events.publish(js, subject, b"one", msg_id="m-1")
    other = await events.publish(js, subject, b"two", msg_id="m-2")
    assert first.stream == "EVENTS" and not first.duplicate
    assert again.duplicate and again.seq == first.seq
    assert other.seq > first.seq
    stored = await stream_messages(js, "EVENTS", subject, expect=2)
    assert [m.data for m in stored] == [b"one", b"two"]
    assert stored[0].headers["Nats-Msg-Id"] == "m-1"
    with pytest.raises(ValueError):
        await events.publish(js, subject, b"x", msg_id="")


async def test_consumer_acks_in_order_and_resumes_from_durable_position(js, topic):
    subject = f"{topic}.n"
    for i in range(25):
        await events.publish(js, subject, str(i).encode(), msg_id=f"{topic}-{i}")
    seen: list[int] = []
    batches: list[int] = []

    async def handler(msgs):
        batches.append(len(msgs))
        seen.extend(int(m.data) for m in msgs)

    durable = f"d{uuid.uuid4().hex[:10]}"
    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=f"{topic}.>",
                            handler=handler, batch=10, fetch_timeout=0.5)
    task = start(c)
    await wait_for(lambda: len(seen) == 25)
    await c.stop()
    assert task.done()
    assert seen == list(range(25))
    assert max(batches) <= 10
    assert c.stats["acked"] == 25

    # a new consumer object on the same durable continues after the acked position
    for i in range(25, 30):
        await events.publish(js, subject, str(i).encode(), msg_id=f"{topic}-{i}")
    c2 = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=f"{topic}.>",
                             handler=handler, fetch_timeout=0.5)
    start(c2)
    await wait_for(lambda: len(seen) == 30)
    await c2.stop()
    assert seen == list(range(30))
    info = await js.consumer_info("EVENTS", durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.parametrize("ordered", [True, False])
async def test_ordered_consumer_takes_a_dead_holders_batch_back_before_anything_newer(js, topic, ordered):
    """A process fetched 2 of a 5-slot consumer's messages and died. An ordered consumer gets
    those 2 again before the newer 8; an unordered one is given the newer ones first (the free
    slots), which is what the aiops_engine's in-order detectors cannot take."""
    subject = f"{topic}.o"
    for i in range(10):
        await events.publish(js, subject, str(i).encode(), msg_id=f"{topic}-o{i}")
    durable = f"d{uuid.uuid4().hex[:10]}"
    await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=subject, ack_wait=1.0,
                                 max_ack_pending=5)
    raw = await js.pull_subscribe_bind(durable=durable, stream="EVENTS")
    held = await raw.fetch(2, timeout=3)  # the dead holder: fetched, never acked
    assert [int(m.data) for m in held] == [0, 1]
    await raw.unsubscribe()
    seen: list[int] = []

    async def handler(msgs):
        seen.extend(int(m.data) for m in msgs)

    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=subject, handler=handler,
                            batch=5, ack_wait=1.0, fetch_timeout=0.5, max_ack_pending=5, ordered=ordered)
    start(c)
    await wait_for(lambda: len(seen) >= 10)
    await c.stop()
    if ordered:
        assert seen == list(range(10))
    else:
        assert seen[:3] == [2, 3, 4] and sorted(seen) == list(range(10))


async def test_nak_with_backoff_then_success(js, topic):
    subject = f"{topic}.flaky"
    await events.publish(js, subject, b"x", msg_id=f"{topic}-x")
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(msgs):
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise ValueError("not yet")

    c = events.PullConsumer(js, stream="EVENTS", durable=f"d{uuid.uuid4().hex[:10]}",
                            filter_subject=subject, handler=handler, max_deliver=5,
                            backoff=(0.3, 0.6), fetch_timeout=0.5)
    start(c)
    await wait_for(lambda: c.stats["acked"] == 1)
    await c.stop()
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.25  # nak delay of the 1st delivery
    assert attempts[2] - attempts[1] >= 0.55  # nak delay of the 2nd delivery
    assert c.stats["naked"] == 2 and c.stats["dead_lettered"] == 0


async def test_poison_goes_to_dlq_and_neighbours_are_handled(js, topic, stream_messages):
    subject = f"{topic}.p"
    for i in range(5):
        await events.publish(js, subject, str(i).encode(), msg_id=f"{topic}-{i}",
                             headers={"Towerco-Correlation-Id": f"c{i}"})
    handled: list[int] = []

    async def handler(msgs):
        bad = [m for m in msgs if m.data == b"2"]
        if bad:
            raise events.Poison("value 2 is cursed", msgs=bad)
        handled.extend(int(m.data) for m in msgs)

    durable = f"d{uuid.uuid4().hex[:10]}"
    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=subject, handler=handler,
                            batch=5, fetch_timeout=0.5)
    start(c)
    await wait_for(lambda: c.stats["acked"] == 4 and c.stats["dead_lettered"] == 1)
    await c.stop()
    assert sorted(handled) == [0, 1, 3, 4]
    dead = await stream_messages(js, "DLQ", f"dlq.EVENTS.{durable}", expect=1)
    assert len(dead) == 1
    d = dead[0]
    assert d.data == b"2"
    assert d.headers["Towerco-Dlq-Reason"] == "poison: value 2 is cursed"
    assert d.headers["Towerco-Dlq-Stream"] == "EVENTS"
    assert d.headers["Towerco-Dlq-Subject"] == subject
    assert d.headers["Towerco-Dlq-Deliveries"] == "1"
    assert d.headers["Towerco-Dlq-Msg-Id"] == f"{topic}-2"
    assert d.headers["Towerco-Correlation-Id"] == "c2"  # original headers travel along
    info = await js.consumer_info("EVENTS", durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # terminated, not stuck


async def test_batch_failure_isolates_the_bad_message_then_max_deliver_dlq(js, topic, stream_messages):
    subject = f"{topic}.m"
    for i in range(4):
        await events.publish(js, subject, str(i).encode(), msg_id=f"{topic}-{i}")
    handled: list[int] = []
    calls_for_bad = 0

    async def handler(msgs):
        nonlocal calls_for_bad
        if any(m.data == b"1" for m in msgs):
            if len(msgs) == 1:
                calls_for_bad += 1
            raise RuntimeError("cannot handle 1")
        handled.extend(int(m.data) for m in msgs)

    durable = f"d{uuid.uuid4().hex[:10]}"
    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=subject, handler=handler,
                            batch=4, max_deliver=3, backoff=(0.1,), fetch_timeout=0.3)
    start(c)
    await wait_for(lambda: c.stats["dead_lettered"] == 1)
    await c.stop()
    assert sorted(handled) == [0, 2, 3]  # the others were not held back
    assert calls_for_bad == 3
    dead = await stream_messages(js, "DLQ", f"dlq.EVENTS.{durable}", expect=1)
    assert [m.data for m in dead] == [b"1"]
    assert dead[0].headers["Towerco-Dlq-Deliveries"] == "3"
    assert "RuntimeError: cannot handle 1" in dead[0].headers["Towerco-Dlq-Reason"]


async def test_transient_failure_is_waited_out_without_redelivery(js, topic):
    subject = f"{topic}.t"
    await events.publish(js, subject, b"x", msg_id=f"{topic}-x")
    deliveries: list[int] = []

    async def handler(msgs):
        deliveries.append(msgs[0].metadata.num_delivered)
        if len(deliveries) < 4:
            raise ConnectionRefusedError("database is restarting")

    c = events.PullConsumer(js, stream="EVENTS", durable=f"d{uuid.uuid4().hex[:10]}", filter_subject=subject,
                            handler=handler, max_deliver=2, backoff=(0.05, 0.1), fetch_timeout=0.3)
    start(c)
    await wait_for(lambda: c.stats["acked"] == 1)
    await c.stop()
    assert deliveries == [1, 1, 1, 1]  # retried in-process: not dead-lettered despite max_deliver=2
    assert c.stats["dead_lettered"] == 0


async def test_ensure_consumer_is_idempotent_and_updates(js, topic):
    durable = f"d{uuid.uuid4().hex[:10]}"
    a = await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=f"{topic}.>",
                                     ack_wait=10, max_deliver=4, backoff=(1, 2))
    b = await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=f"{topic}.>",
                                     ack_wait=10, max_deliver=4, backoff=(1, 2))
    assert a.config.max_deliver == b.config.max_deliver == 4
    assert b.config.backoff == [1, 2]
    c = await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=f"{topic}.>",
                                     ack_wait=20, max_deliver=6)
    assert c.config.ack_wait == 20 and c.config.max_deliver == 6


async def test_consumer_with_several_filter_subjects_gets_only_those(js, topic):
    """A durable first made on a wildcard is narrowed to two subjects (the kpi_calculator's
    register consumer was once on towerco.> and received every hour event it then ignored)."""
    durable = f"d{uuid.uuid4().hex[:10]}"
    await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=f"{topic}.>")
    for i, leaf in enumerate(["a.x", "noise", "b", "a.y", "noise"]):
        await events.publish(js, f"{topic}.{leaf}", leaf.encode(), msg_id=f"{topic}-f{i}")
    seen: list[str] = []

    async def handler(msgs):
        seen.extend(m.subject for m in msgs)

    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=[f"{topic}.a.>", f"{topic}.b"],
                            handler=handler, batch=10, fetch_timeout=0.5)
    start(c)
    await wait_for(lambda: len(seen) == 3)
    await asyncio.sleep(0.3)  # nothing more arrives
    await c.stop()
    assert seen == [f"{topic}.a.x", f"{topic}.b", f"{topic}.a.y"]
    info = await js.consumer_info("EVENTS", durable)
    assert info.config.filter_subjects == [f"{topic}.a.>", f"{topic}.b"] and not info.config.filter_subject
    assert info.num_pending == 0 and info.num_ack_pending == 0
    with pytest.raises(ValueError, match="filter subject"):
        await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=[])


@pytest.mark.slow
async def test_consumer_survives_nats_restart(private_js, topic, nats_down):
    js = private_js
    subject = f"{topic}.r"
    seen: list[bytes] = []

    async def handler(msgs):
        seen.extend(m.data for m in msgs)

    c = events.PullConsumer(js, stream="EVENTS", durable=f"d{uuid.uuid4().hex[:10]}", filter_subject=subject,
                            handler=handler, fetch_timeout=0.5)
    task = start(c)
    await events.publish(js, subject, b"before", msg_id=f"{topic}-1")
    await wait_for(lambda: seen == [b"before"])
    async with nats_down():
        await asyncio.sleep(1.5)  # the consumer keeps trying, without spinning
        assert not task.done()
    assert c.stats["fetch_errors"] < 40
    published = False
    for _ in range(100):  # the client reconnects within ~0.5 s of the server being back
        try:
            await events.publish(js, subject, b"after", msg_id=f"{topic}-2", timeout=1)
            published = True
            break
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.2)
    assert published
    await wait_for(lambda: seen == [b"before", b"after"], within=20)
    await c.stop()


async def test_message_never_acked_is_dead_lettered_after_max_deliver(js, topic, stream_messages):
    """A handler that kills its process never acks; the server redelivers after ack_wait, and the
    delivery past max_deliver is dead-lettered instead of crashing the worker forever."""
    subject = f"{topic}.crash"
    await events.publish(js, subject, b"boom", msg_id=f"{topic}-boom")
    durable = f"d{uuid.uuid4().hex[:10]}"
    await events.ensure_consumer(js, stream="EVENTS", durable=durable, filter_subject=subject, ack_wait=0.3)
    raw = await js.pull_subscribe_bind(durable=durable, stream="EVENTS")
    for n in (1, 2):  # two "crashed" deliveries: fetched, never acked
        got = await raw.fetch(1, timeout=3)
        assert got[0].metadata.num_delivered == n
    await raw.unsubscribe()
    await asyncio.sleep(0.4)  # let the second ack_wait expire

    async def handler(msgs):
        raise AssertionError("must not be called for an exhausted message")

    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=subject, handler=handler,
                            ack_wait=0.3, max_deliver=2, fetch_timeout=0.5)
    start(c)
    await wait_for(lambda: c.stats["dead_lettered"] >= 1)
    await c.stop()
    dead = await stream_messages(js, "DLQ", f"dlq.EVENTS.{durable}", expect=1)
    assert dead[0].data == b"boom"
    assert dead[0].headers["Towerco-Dlq-Reason"] == "not acknowledged after 2 deliveries"
    assert dead[0].headers["Towerco-Dlq-Deliveries"] == "3"


async def test_connect_bounds_the_first_attempt_then_reconnects_forever(nc):
    import time

    import nats.errors

    from mesh.embedded import free_port

    assert nc.is_connected and nc.options["max_reconnect_attempts"] == -1
    started = time.monotonic()
    with pytest.raises(nats.errors.NoServersError):
        await events.connect(f"nats://127.0.0.1:{free_port()}", name="nobody", connect_timeout_s=1.0)
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError):
        await events.connect("", name="x")


async def test_consumer_recreates_its_durable_when_deleted(js, topic):
    subject = f"{topic}.del"
    seen: list[bytes] = []

    async def handler(msgs):
        seen.extend(m.data for m in msgs)

    durable = f"d{uuid.uuid4().hex[:10]}"
    c = events.PullConsumer(js, stream="EVENTS", durable=durable, filter_subject=subject, handler=handler,
                            fetch_timeout=0.3)
    start(c)
    await events.publish(js, subject, b"1", msg_id=f"{topic}-1")
    await wait_for(lambda: seen == [b"1"])
    await js.delete_consumer("EVENTS", durable)  # an operator mistake
    await events.publish(js, subject, b"2", msg_id=f"{topic}-2")
    # re-created with deliver-all: "1" comes again (handlers are idempotent), then "2"
    await wait_for(lambda: b"2" in seen, within=15)
    await c.stop()
    assert seen[-1] == b"2"
