"""Wiring of the AIOps service (port 7008): `python -m services.aiops.server`.

The aiops schema (services/aiops/migrations) is one domain's: this service and its
aiops_engine worker. The service applies it at start (idempotent, advisory-locked), so either
process may start first; the worker waits for it.
"""

from __future__ import annotations

from towerco.aiops.v1 import aiops_pb2_grpc

from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.migrate import migrate
from services.aiops.servicer import AiopsServicer

SERVICE = "aiops"
FULL_NAME = "towerco.aiops.v1.AiopsService"


async def setup(rt: Runtime) -> list[ServiceSpec]:
    await migrate(rt.settings.database_url, components=["aiops"])
    servicer = AiopsServicer(rt.pool)
    rt.spawn(servicer.listen(rt.settings.database_url), name="aiops-watch-listen")
    return [ServiceSpec(FULL_NAME, servicer, aiops_pb2_grpc.add_AiopsServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup)
