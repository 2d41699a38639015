"""Process wiring of the kpi_calculator: `python -m workers.kpi_calculator.worker`
(or `towerco serve kpi_calculator`).

Connects to PostgreSQL and NATS (DATABASE_URL / NATS_URL), waits for the kpi schema
(`towerco migrate`), then consumes its TELEMETRY partitions (TOWERCO_KPI_PARTITIONS, all by
default) and the register events until SIGTERM/SIGINT. The register is fetched from the Sites
service (TOWERCO_SITES_TARGET) with the kpi service token; while Sites is unreachable the copy in
the kpi schema is used. Prometheus metrics on TOWERCO_KPI_CALCULATOR_METRICS_PORT (off when unset).
"""

from __future__ import annotations

import logging

from towerco.sites.v1 import sites_pb2

from mesh import leases, lifecycle, subjects
from mesh.auth import service_token
from mesh.config import KpiCalculatorSettings, LeaseSettings, load
from sdk import Client
from workers.kpi_calculator.consumer import Calculator, CalculatorConfig

log = logging.getLogger("towerco.kpi_calculator")


def register_fetcher(target: str):
    """An async function returning every site, tenancy and window of the register (paged)."""

    async def fetch() -> dict:
        async with Client(target, token=lambda: service_token("kpi")) as c:
            return {
                "sites": [s async for s in c.sites.list_all(sites_pb2.ListSitesRequest(), page_size=1000, timeout=30)],
                "tenancies": [t async for t in c.sites.list_all(sites_pb2.ListTenanciesRequest(), page_size=1000,
                                                                timeout=30)],
                "windows": [w async for w in c.sites.list_all(sites_pb2.ListWindowsRequest(), page_size=1000,
                                                              timeout=30)],
            }

    return fetch


async def serve() -> None:
    extra = {}
    if subjects.is_leased(load(KpiCalculatorSettings).partitions):  # a paused replica must not pin a lease
        extra["server_settings"] = leases.pool_settings(load(LeaseSettings).ttl_s)
    async with lifecycle.worker_runtime("kpi_calculator", table="kpi.tenancy_hour", min_size=1, max_size=8, **extra) as rt:
        config = CalculatorConfig.from_env(rt.settings.partitions)
        calc = Calculator(rt.pool, rt.js, config=config, partition_count=rt.settings.partitions,
                          fetch_register=register_fetcher(rt.settings.target("sites")),
                          database_url=rt.settings.database_url)
        if config.leased:
            log.info("kpi_calculator %s sharing %d partitions by leases", config.replica, rt.settings.partitions)
        else:
            log.info("kpi_calculator consuming partitions %s", list(config.partitions))
        await lifecycle.run_until_signalled(calc)


def main() -> None:
    lifecycle.run(serve())


if __name__ == "__main__":
    main()
