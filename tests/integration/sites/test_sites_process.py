"""`python -m services.sites.server` as its own process: it migrates, serves (health SERVING,
a real call), and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sites_support import new_site
from towerco.sites.v1 import sites_pb2 as pb
from towerco.sites.v1 import sites_pb2_grpc

from mesh.auth import mint_token
from mesh.config import Settings
from mesh.embedded import free_port


async def test_process_serves_and_stops_on_sigterm(stack, sites_db, uniq):
    port = free_port()
    env = {**stack.env(), "TOWERCO_SITES_PORT": str(port), "TOWERCO_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.sites.server", env=env, cwd=os.getcwd(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            while True:
                try:
                    resp = await health.Check(health_pb2.HealthCheckRequest(service="towerco.sites.v1.SitesService"),
                                              timeout=2)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert proc.returncode is None, "the process died at start-up"
                assert loop.time() < end, "not serving after 60 s"
                await asyncio.sleep(0.2)
            token = mint_token(subject="t", tenant="*", roles=["admin"], settings=Settings.from_env())
            stub = sites_pb2_grpc.SitesServiceStub(channel)
            md = (("authorization", f"Bearer {token}"),)
            created = await stub.CreateSite(pb.CreateSiteRequest(site=new_site(f"PROC-{uniq}")), metadata=md)
            got = await stub.GetSite(pb.GetSiteRequest(site_id=created.site.id), metadata=md)
            assert got.site == created.site
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        assert code == 0, (await proc.stderr.read()).decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
