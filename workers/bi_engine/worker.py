"""Process wiring of the bi_engine: `python -m workers.bi_engine.worker` (or `towerco serve
bi_engine`). Waits for the bi schema, then runs every TOWERCO_BI_ENGINE_INTERVAL_S (3600 s),
calling Sites, KPI, Telemetry and BI over gRPC with the bi service token (recommendations, then
the last complete month's exports, filed once: TOWERCO_BI_ENGINE_EXPORTS) (settings:
mesh.config.BiEngineSettings). Prometheus metrics on its metrics port (off when unset)."""

from __future__ import annotations

from towerco.bi.v1 import bi_pb2_grpc
from towerco.kpi.v1 import kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh import lifecycle
from mesh.auth import service_token
from sdk import Client
from workers.bi_engine.consumer import Engine, EngineConfig, Stubs


async def serve() -> None:
    async with lifecycle.worker_runtime("bi_engine", table="bi.recommendation", min_size=1, max_size=2) as rt:
        s = rt.settings
        clients = [Client(s.target(name), token=lambda: service_token("bi"))
                   for name in ("sites", "kpi", "telemetry", "bi")]
        try:
            stubs = Stubs(sites=clients[0].stub(sites_pb2_grpc.SitesServiceStub), kpi=clients[1].stub(kpi_pb2_grpc.KpiServiceStub),
                          telemetry=clients[2].stub(telemetry_pb2_grpc.TelemetryServiceStub),
                          bi=clients[3].stub(bi_pb2_grpc.BiServiceStub))
            await lifecycle.run_until_signalled(Engine(rt.pool, stubs, EngineConfig.from_env()))
        finally:
            for c in clients:
                await c.close()


def main() -> None:
    lifecycle.run(serve())


if __name__ == "__main__":
    main()
