"""`python -m gateway --workers N` as a real process tree: serves, then stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import psutil
from gwfake import fake_server, free_port

from mesh.auth import mint_token


async def test_gateway_runs_with_several_workers() -> None:
    async with fake_server() as (target, servicer, _):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERCO_")}
        env.update({"TOWERCO_GATEWAY_SERVICES": "testing", "TOWERCO_GATEWAY_TARGETS": f"testing={target}"})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--port", str(port), "--workers", "2", "--log-level", "warning",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            token = mint_token(subject="p", tenant="*", roles=["viewer"])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for _ in range(300):
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                r = await client.get("/v1/books/b1", params={"view": "x"}, headers={"authorization": f"Bearer {token}"})
                assert r.status_code == 200 and r.json() == {"name": "b1", "view": "x"}
            children = psutil.Process(proc.pid).children(recursive=True)
            workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
            assert len(workers) == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            err = await asyncio.wait_for(proc.stderr.read(), 30)
            code = await asyncio.wait_for(proc.wait(), 30)
        assert code == 0, err.decode()[-2000:]
