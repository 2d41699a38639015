"""Fault injection (slow): PostgreSQL down -> UNAVAILABLE, then recovery without a restart;
NATS down -> writes still commit, and their events arrive exactly once when NATS is back."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from sites_support import fails, new_site, start_sites
from towerco.events.v1 import events_pb2
from towerco.sites.v1 import sites_pb2 as pb

pytestmark = pytest.mark.slow


async def eventually(fn, within: float = 30.0, step: float = 0.2):
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        try:
            return await fn()
        except (grpc.aio.AioRpcError, AssertionError):
            if loop.time() > end:
                raise
            await asyncio.sleep(step)


async def test_database_down_answers_unavailable_then_recovers(stack, sites_db, uniq):
    stack.require_embedded()
    async with start_sites(stack) as sites:
        st, admin = sites.stub, sites.md("admin")
        sid = f"DBD-{uniq}"
        await st.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=admin)
        await asyncio.to_thread(stack.pg.stop)
        try:
            for call in (lambda: st.GetSite(pb.GetSiteRequest(site_id=sid), metadata=admin, timeout=15),
                         lambda: st.ListSites(pb.ListSitesRequest(), metadata=admin, timeout=15),
                         lambda: st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid, name="x")),
                                               metadata=admin, timeout=15)):
                await fails(call(), grpc.StatusCode.UNAVAILABLE)
        finally:
            await asyncio.to_thread(stack.pg.start)

        async def works():
            resp = await st.GetSite(pb.GetSiteRequest(site_id=sid), metadata=admin, timeout=5)
            assert resp.site.id == sid
            return resp

        await eventually(works)
        upd = await st.UpdateSite(pb.UpdateSiteRequest(site=pb.Site(id=sid, name="Back")), metadata=admin)
        assert upd.site.name == "Back"


async def test_nats_down_writes_commit_and_events_arrive_once_after(stack, sites_db, uniq, conn):
    stack.require_embedded()
    async with start_sites(stack) as sites:
        st, admin = sites.stub, sites.md("admin")
        ids = [f"NATS{i}-{uniq}" for i in range(3)]
        await asyncio.to_thread(stack.nats.stop)
        try:
            for sid in ids:
                created = await st.CreateSite(pb.CreateSiteRequest(site=new_site(sid)), metadata=admin, timeout=10)
                assert created.site.id == sid  # committed although NATS is away
            waiting = await conn.fetchval(
                "SELECT count(*) FROM sites.outbox WHERE published_at IS NULL AND subject = $1",
                "towerco.sites.site.created")
            assert waiting >= 3
        finally:
            await asyncio.to_thread(stack.nats.start)

        async def all_published():
            left = await conn.fetchval("SELECT count(*) FROM sites.outbox WHERE published_at IS NULL")
            assert left == 0

        await eventually(all_published, within=60)

        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe("towerco.sites.site.created", ordered_consumer=True,
                                     config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            counts = dict.fromkeys(ids, 0)
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                env = events_pb2.Envelope()
                env.ParseFromString(msg.data)
                change = pb.SitesChange()
                env.payload.Unpack(change)
                if change.site.id in counts:
                    counts[change.site.id] += 1
            assert counts == dict.fromkeys(ids, 1)
        finally:
            await nc.close()
