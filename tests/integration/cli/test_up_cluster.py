"""`towerco up --cluster`: three embedded NATS nodes as one JetStream cluster, streams at
replicas 3, two replicas of each worker sharing the stateful workers' partitions by leases;
`status` shows each node and `down` stops them all."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from cli import state
from mesh import events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_up_cluster_status_down(towerco_embedded) -> None:
    t = towerco_embedded
    up = t.run("up", "-d", "--cluster", "--sites", "8", "--no-simulate", "--timeout", "150",
               "--only", "sites,telemetry,ingestor,kpi,kpi_calculator", timeout=280)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "3-node JetStream cluster" in up.stdout
    recorded = json.loads((t.home / "stack.json").read_text())
    nodes = recorded["embedded"]["nats_cluster"]
    assert [n["name"] for n in nodes] == ["n1", "n2", "n3"]
    urls = recorded["nats_url"].split(",")
    assert len(urls) == 3 and all(f":{n['port']}" in u for n, u in zip(nodes, urls, strict=True))
    assert {"ingestor-1", "ingestor-2", "kpi_calculator-1", "kpi_calculator-2"} <= set(recorded["processes"])

    nc = await events.connect(recorded["nats_url"], name="up-cluster-test")
    try:
        info = await nc.jetstream().stream_info(events.TELEMETRY_STREAM)
        assert info.config.num_replicas == 3 and info.cluster is not None and len(info.cluster.replicas) == 2
    finally:
        await nc.close()

    conn = await asyncpg.connect(recorded["database_url"])
    try:
        async def members():
            return {r["member"]: r["n"] for r in await conn.fetch(
                "SELECT member, count(*) AS n FROM kpi.partition_lease WHERE owner IS NOT NULL GROUP BY 1")}
        deadline = asyncio.get_running_loop().time() + 60
        while (got := await members()) != {"r1": 8, "r2": 8}:
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.5)
    finally:
        await conn.close()

    status = t.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("nats-1", "nats-2", "nats-3", "kpi_calculator-2"):
        assert name in status.stdout

    down = t.run("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(state.alive(n["pid"], n["pid_stamp"]) for n in nodes)
