"""Process wiring of the aiops_engine: `python -m workers.aiops_engine.worker`
(or `towerco serve aiops_engine`).

Connects to PostgreSQL and NATS (DATABASE_URL / NATS_URL), waits for the aiops schema (`towerco
migrate`, or the AIOps service, which applies services/aiops/migrations: the service and this
worker are one domain with one migrations folder), then consumes its TELEMETRY partitions
(TOWERCO_AIOPS_PARTITIONS, all by default) and the register events until SIGTERM/SIGINT. The
register is fetched from the Sites service (TOWERCO_SITES_TARGET) with the aiops service token;
while Sites is unreachable the copy in the aiops schema is used. Prometheus metrics on
TOWERCO_AIOPS_ENGINE_METRICS_PORT (off when unset).
"""

from __future__ import annotations

import logging

from towerco.common.v1 import common_pb2
from towerco.sites.v1 import sites_pb2

from mesh import leases, lifecycle, subjects
from mesh.auth import service_token
from mesh.config import AiopsEngineSettings, LeaseSettings, load
from sdk import Client
from workers.aiops_engine.consumer import AiopsEngine, EngineConfig

log = logging.getLogger("towerco.aiops_engine")


def register_fetcher(target: str):
    """An async function returning every site, tenancy and window of the register (paged)."""

    async def fetch() -> dict:
        async with Client(target, token=lambda: service_token("aiops")) as c:
            out: dict[str, list] = {"sites": [], "tenancies": [], "windows": []}
            for key, call, req_cls, field in (
                ("sites", c.sites.ListSites, sites_pb2.ListSitesRequest, "sites"),
                ("tenancies", c.sites.ListTenancies, sites_pb2.ListTenanciesRequest, "tenancies"),
                ("windows", c.sites.ListWindows, sites_pb2.ListWindowsRequest, "windows"),
            ):
                token = ""
                while True:
                    resp = await call(req_cls(page=common_pb2.PageRequest(size=1000, token=token)), timeout=30)
                    out[key].extend(getattr(resp, field))
                    token = resp.page.next_token
                    if not token:
                        break
            return out

    return fetch


async def serve() -> None:
    extra = {}
    if subjects.is_leased(load(AiopsEngineSettings).partitions):  # a paused replica must not pin a lease
        extra["server_settings"] = leases.pool_settings(load(LeaseSettings).ttl_s)
    async with lifecycle.worker_runtime("aiops_engine", table="aiops.site_state", min_size=1, max_size=8, **extra) as rt:
        config = EngineConfig.from_env(rt.settings.partitions)
        engine = AiopsEngine(rt.pool, rt.js, config=config, partition_count=rt.settings.partitions,
                             fetch_register=register_fetcher(rt.settings.target("sites")),
                             database_url=rt.settings.database_url)
        if config.retrain_s > 0:
            from workers.aiops_engine.models import ModelLayer

            engine.models = ModelLayer(retrain_s=config.retrain_s, params=config.params)
        if config.leased:
            log.info("aiops_engine %s sharing %d partitions by leases", config.replica, rt.settings.partitions)
        else:
            log.info("aiops_engine consuming partitions %s", list(config.partitions))
        await lifecycle.run_until_signalled(engine)


def main() -> None:
    lifecycle.run(serve())


if __name__ == "__main__":
    main()
