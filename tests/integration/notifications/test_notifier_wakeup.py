"""The notifier's loops hand work on in-process: with a poll tick far longer than the test (60 s)
and no LISTEN/NOTIFY, an event on a group-wait-0 route still reaches a real HTTP receiver (the
consumer wakes the scheduler, the scheduler the sender), and a failed attempt is retried at its
backoff (the sender wakes itself for it), not at the next tick. A broken hand-off would leave the
notification waiting for the tick and the waits below would run out."""

from __future__ import annotations

import uuid

from notify_support import eventually, fast_config, incident, publish, running_notifier
from towerco.notifications.v1 import notifications_pb2 as pb

from mesh import db, events
from mesh.migrate import migrate
from workers.notifier.sink import WebhookReceiver

SECRET = "wakeup-signing-secret-0123456789"
TICK_S = 60.0
WITHIN_S = 20.0  # generous under load, and still a third of the tick


async def test_event_to_webhook_and_retry_do_not_wait_for_the_poll(stack):
    await migrate(stack.database_url, components=["notifications"])
    pool = await db.create_pool(stack.database_url, min_size=1, max_size=8)
    nc = await events.connect(stack.nats_url, name="notifier-wakeup-test")
    js = nc.jetstream()
    await events.ensure_streams(js)
    calls: dict[str, int] = {}

    def respond(path: str, n: int) -> int:
        calls[path] = n
        return 500 if path.startswith("/flaky") and n == 1 else 200

    web = await WebhookReceiver(secret=SECRET, respond=respond).start()
    reg = f"wake-{uuid.uuid4().hex[:8]}"
    try:
        async with pool.acquire() as conn:
            for path, region in (("/steady", reg), ("/flaky", f"{reg}-flaky")):
                cid = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO notifications.channel (id, name, kind, webhook_url, signing_secret, tenant_id)"
                    " VALUES ($1, $2, 1, $3, $4, '')", cid, f"hook {path} {reg}", web.url + path, SECRET)
                body = pb.Route(name=f"route {region}", match=pb.IncidentMatcher(regions=[region]),
                                channel_ids=[str(cid)]).SerializeToString()
                await conn.execute("INSERT INTO notifications.route (id, name, position, body) VALUES ($1, $2, 0, $3)",
                                   uuid.uuid4(), f"route {region}", body)
        cfg = fast_config(tick_s=TICK_S, lease_s=TICK_S, retry_base_s=0.2, retry_max_s=0.5)
        async with running_notifier(pool, js, cfg) as notifier:  # no database_url: no LISTEN either
            await eventually(lambda: notifier.consumer._sub is not None, bool, within=WITHIN_S)
            steady, flaky = incident(region=reg), incident(region=f"{reg}-flaky")
            await publish(js, steady)
            await publish(js, flaky)
            got = await eventually(lambda: web.accepted("/steady"), lambda xs: len(xs) == 1, within=WITHIN_S)
            assert got[0].signature_ok and [i["id"] for i in got[0].json()["incidents"]] == [steady.id]
            retried = await eventually(lambda: web.accepted("/flaky"), lambda xs: len(xs) == 1, within=WITHIN_S)
            assert [i["id"] for i in retried[0].json()["incidents"]] == [flaky.id]
            assert calls["/flaky"] == 2  # refused once with a 500, accepted on the retry
            attempts = [r for r in web.received if r.path == "/flaky"]
            assert attempts[0].idempotency_key == attempts[1].idempotency_key  # the same notification
    finally:
        await web.stop()
        await nc.close()
        await pool.close()
