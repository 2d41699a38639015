"""Wiring of the NOC service (port 7004): `python -m services.noc.server`.

Applies the noc schema (services/noc/migrations), then runs, in this process: the gRPC
NocService, the anomaly consumer (EVENTS towerco.aiops.anomaly.>, durable TOWERCO_NOC_DURABLE),
the periodic task (auto-resolve timers, calendar window ends, flapping calm; every
TOWERCO_NOC_TICK_S), the site facts cache (Sites over gRPC with the NOC's service token, kept
fresh by towerco.sites.> events) and the SLA cache (KPI service), the outbox relay that
publishes towerco.noc.incident.<change>, and the live feed those events feed (WatchIncidents,
services/noc/feed.py, one ephemeral JetStream consumer per call).

`build(rt)` returns the pieces so another module (the live feed, services/noc/feed.py) can be
added to the same process without changing them: setup() below is the only place they are wired.
"""

from __future__ import annotations

from dataclasses import dataclass

from towerco.events.v1 import events_pb2
from towerco.noc.v1 import noc_pb2_grpc
from towerco.sites.v1 import sites_pb2

from mesh import auth, config, outbox, subjects
from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.migrate import migrate
from sdk import Client
from services.noc import domain
from services.noc.consumer import AnomalyConsumer
from services.noc.correlator import SCHEMA, Correlator
from services.noc.facts import SiteFactsCache, SlaCache, kpi_fetcher
from services.noc.feed import IncidentFeed
from services.noc.servicer import NocServicer

SERVICE = "noc"
FULL_NAME = "towerco.noc.v1.NocService"


def params_from(env: config.NocSettings) -> domain.Params:
    return domain.Params(dedup_window_s=env.dedup_window_s, flap_window_s=env.flap_window_s,
                         flap_threshold=env.flap_threshold, regional_window_s=env.regional_window_s,
                         regional_min_sites=env.regional_min_sites, auto_resolve_hold_s=env.auto_resolve_hold_s,
                         reopen_window_s=env.reopen_window_s, link_window_s=env.link_window_s)


@dataclass
class Noc:
    settings: config.NocSettings
    correlator: Correlator
    servicer: NocServicer
    consumer: AnomalyConsumer
    facts: SiteFactsCache
    client: Client


def build(rt: Runtime) -> Noc:
    env = config.load(config.NocSettings)
    client = Client(rt.settings.target("sites"), token=lambda: auth.service_token(SERVICE))
    kpi = Client(rt.settings.target("kpi"), token=lambda: auth.service_token(SERVICE))
    facts = SiteFactsCache(client, refresh_s=env.facts_refresh_s)
    correlator = Correlator(rt.pool, facts=facts, sla=SlaCache(kpi_fetcher(kpi), ttl_s=env.sla_ttl_s),
                            params=params_from(env))
    consumer = AnomalyConsumer(rt.js, correlator, durable=env.durable, batch=env.batch, ack_wait_s=env.ack_wait_s,
                               lanes=env.lanes)

    async def close() -> None:
        await consumer.stop()
        await client.close()
        await kpi.close()

    rt.on_shutdown(close)
    return Noc(env, correlator, NocServicer(rt.pool, correlator, feed=IncidentFeed(rt.nc)), consumer, facts, client)


async def setup(rt: Runtime) -> list[ServiceSpec]:
    await migrate(rt.settings.database_url, components=[SERVICE])
    noc = build(rt)

    async def on_sites_event(msg) -> None:  # noqa: ANN001 - nats Msg
        env = events_pb2.Envelope.FromString(msg.data)
        change = sites_pb2.SitesChange()
        if env.payload.Unpack(change):
            noc.facts.invalidate(change)

    sub = await rt.nc.subscribe(subjects.SITES_EVENTS, cb=on_sites_event)

    async def unsubscribe() -> None:
        await sub.unsubscribe()

    rt.on_shutdown(unsubscribe)
    rt.spawn(noc.facts.keep_fresh(), name="noc-site-facts")

    async def warm_sla() -> None:  # the first alarm of each tenant must not wait for the KPI service
        await noc.facts.loaded.wait()
        await noc.correlator.sla.warm(noc.facts.facts.values())

    rt.spawn(warm_sla(), name="noc-sla-warm")
    rt.spawn(noc.consumer.run(), name="noc-anomaly-consumer")
    rt.spawn(noc.correlator.run_ticks(noc.settings.tick_s), name="noc-tick")
    relay = outbox.OutboxRelay(rt.pool, rt.js, schema=SCHEMA, database_url=rt.settings.database_url)
    rt.spawn(relay.run(), name="noc-outbox")
    return [ServiceSpec(FULL_NAME, noc.servicer, noc_pb2_grpc.add_NocServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup)
