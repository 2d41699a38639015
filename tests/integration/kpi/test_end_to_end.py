"""End to end with real processes: the Sites, telemetry and KPI services (mesh.bootstrap on free
ports), the kpi_calculator as its own process (`python -m workers.kpi_calculator.worker`) and the
fleet simulator (`python -m cli.simulate`) backfilling two hours with injected grid outages and
tenant link losses. The KPI figures must match the simulator's ground truth to the minute."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
from kpi_support import eventually, serve_asgi
from towerco.common.v1 import common_pb2
from towerco.kpi.v1 import kpi_pb2, kpi_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc

from mesh import bootstrap, db, events, subjects
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings

ROOT = Path(__file__).resolve().parents[3]


def minutes_of(start: float, end: float) -> set[int]:
    """The minutes a fault [start, end) touches: the first and last partly affected ones included."""
    return set(range(math.floor(start / 60), math.ceil(end / 60)))


def iso(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


async def test_simulator_ground_truth_matches_kpis_to_the_minute(stack, tmp_path):
    from services.kpi.server import setup as kpi_setup
    from services.sites.server import setup as sites_setup
    from services.telemetry.server import setup as telemetry_setup

    u = uuid.uuid4().hex[:5].upper()
    prefix = f"E2E{u}"
    tenant = f"e2e-{u.lower()}"
    sites = [f"{prefix}-{i}" for i in range(3)]
    reset_settings()
    base = Settings.from_env()
    running = []
    procs: list[asyncio.subprocess.Process] = []
    try:
        sites_srv = await bootstrap.start("sites", sites_setup, port=0, metrics_port=-1, settings=base)
        running.append(sites_srv)
        targets = dict(base.targets, sites=f"127.0.0.1:{sites_srv.port}")
        settings = dataclasses.replace(base, targets=targets)
        tel_srv = await bootstrap.start("telemetry", telemetry_setup, port=0, metrics_port=-1, settings=settings)
        running.append(tel_srv)
        kpi_srv = await bootstrap.start("kpi", kpi_setup, port=0, metrics_port=-1, settings=settings)
        running.append(kpi_srv)
        admin = (("authorization", "Bearer " + mint_token(subject="e2e", tenant="*", roles=["admin"],
                                                          settings=settings)),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sites_srv.port}") as ch:
            st = sites_pb2_grpc.SitesServiceStub(ch)
            await st.CreateTenant(sites_pb2.CreateTenantRequest(tenant=sites_pb2.Tenant(id=tenant, name=tenant)),
                                  metadata=admin)
            for sid in sites:
                await st.CreateSite(sites_pb2.CreateSiteRequest(site=sites_pb2.Site(
                    id=sid, name=sid, region=f"r-{u.lower()}", location={"latitude": -1.0, "longitude": 36.0},
                    power=sites_pb2.PowerConfig(dg_capacity_kva=15.0, dg_start_delay_s=60.0, battery_bank_ah=200.0,
                                                fuel_tank_l=500.0, battery_voltage_v=48.0))), metadata=admin)
                await st.CreateTenancy(sites_pb2.CreateTenancyRequest(tenancy=sites_pb2.Tenancy(
                    site_id=sid, tenant_id=tenant, dc_voltage_min_v=43.0, dc_voltage_max_v=60.0,
                    sla_availability_target=0.99)), metadata=admin)

        env = stack.env()
        env.update(TOWERCO_SITES_TARGET=f"127.0.0.1:{sites_srv.port}",
                   TOWERCO_TELEMETRY_TARGET=f"127.0.0.1:{tel_srv.port}",
                   TOWERCO_KPI_PARTITIONS=",".join(str(subjects.partition_of(s, settings.partitions)) for s in sites),
                   TOWERCO_KPI_DURABLE_PREFIX=f"kpi-e2e-{u.lower()}", TOWERCO_KPI_PUBLISH_INTERVAL_S="0.5",
                   TOWERCO_KPI_RECOMPUTE_INTERVAL_S="0.2", TOWERCO_KPI_SETTLE_S="0.3",
                   TOWERCO_LOG_LEVEL="warning")
        with (tmp_path / "calc.log").open("wb") as log:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers.kpi_calculator.worker", env=env, cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT))
        truth = tmp_path / "truth.jsonl"
        now = datetime.now().timestamp()
        start = (math.floor(now / 3600) - 3) * 3600  # three whole hours ago, on the hour
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.simulate", "--sites", str(len(sites)), "--site-prefix", prefix,
            "--interval", "15", "--duration", "7200", "--speed", "0", "--seed", "11",
            "--start", datetime.fromtimestamp(start).astimezone().isoformat(),
            "--faults", "none,grid_outage=12,tenant_link_down=48", "--truth", str(truth),
            "--target", f"127.0.0.1:{tel_srv.port}", "--sites-target", f"127.0.0.1:{sites_srv.port}", "--quiet",
            env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(sim.communicate(), 120)
        assert sim.returncode == 0, out.decode()[-2000:]
        faults = [json.loads(line) for line in truth.read_text().splitlines() if line.strip()]
        lo, hi = start // 60, start // 60 + 120

        # expected, per site: tenant outage minutes = link down (this tenant) or battery LVD;
        # mains-lost minutes = grid outages
        want_out: dict[str, set[int]] = {s: set() for s in sites}
        want_grid: dict[str, set[int]] = {s: set() for s in sites}
        for f in faults:
            if f["site_id"] not in want_out:
                continue
            end = iso(f["end"]) if f.get("end") else hi * 60
            mins = {m for m in minutes_of(iso(f["start"]), end) if lo <= m < hi}
            if f["type"] == "tenant_link_down" and (f.get("detail") or {}).get("tenant_id", tenant) == tenant:
                want_out[f["site_id"]] |= mins
            elif f["type"] == "battery_lvd":
                want_out[f["site_id"]] |= mins
            elif f["type"] in ("grid_outage", "regional_outage"):
                want_grid[f["site_id"]] |= mins
        assert sum(len(v) for v in want_out.values()) > 0, "the simulator injected no tenant outage"

        pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            async def hours():
                async with pool.acquire() as conn:
                    return await conn.fetchval(
                        "SELECT count(*) FROM kpi.tenancy_hour WHERE site_id = ANY($1::text[]) AND hour >= "
                        "to_timestamp($2) AND hour < to_timestamp($3)", sites, start, start + 7200)
            await eventually(hours, lambda n: n == 2 * len(sites), within=60)
            # and nothing left in the calculator's consumers (no redelivery still to come)
            nc = await events.connect(settings.nats_url, name="kpi-e2e")
            try:
                async def pending():
                    total = 0
                    for p in {subjects.partition_of(s, settings.partitions) for s in sites}:
                        info = await nc.jetstream().consumer_info("TELEMETRY", f"kpi-e2e-{u.lower()}-{p}")
                        total += info.num_pending + info.num_ack_pending
                    return total
                await eventually(pending, lambda n: n == 0, within=60)
            finally:
                await nc.close()
        finally:
            await pool.close()

        viewer = (("authorization", "Bearer " + mint_token(subject="e2e", tenant="*", roles=["viewer"],
                                                           settings=settings)),)
        rng = common_pb2.TimeRange()
        rng.start_time.FromSeconds(lo * 60)
        rng.end_time.FromSeconds(hi * 60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{kpi_srv.port}") as ch:
            kpi = kpi_pb2_grpc.KpiServiceStub(ch)

            async def report():
                return await kpi.GetTenantAvailability(
                    kpi_pb2.GetTenantAvailabilityRequest(tenant_id=tenant, range=rng), metadata=viewer)

            expected_total = sum(len(v) for v in want_out.values())
            rep = await eventually(report, lambda r: r.availability.outage.total == expected_total
                                   and r.availability.unknown_minutes == 0, within=30)
            for t in rep.tenancies:
                got = set()
                for iv in t.outages:
                    got |= set(range(iv.start_time.seconds // 60, iv.end_time.seconds // 60))
                assert got == want_out[t.site_id], t.site_id
                assert t.availability.unknown_minutes == 0
            for sid in sites:
                k = (await kpi.GetSiteKpis(kpi_pb2.GetSiteKpisRequest(site_id=sid, range=rng), metadata=viewer)).kpis
                assert k.grid_known_minutes - k.grid_present_minutes == len(want_grid[sid]), sid

        # the same figures over REST through the gateway, and a bad request as a 400 with field violations
        from gateway.app import create_app
        from gateway.config import GatewayConfig

        app = create_app(GatewayConfig(services=("kpi",), targets={"kpi": f"127.0.0.1:{kpi_srv.port}"},
                                       rate_per_s=0), settings)
        async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            headers = {"authorization": viewer[0][1]}
            params = {"range.start_time": _rfc3339(lo * 60), "range.end_time": _rfc3339(hi * 60)}
            r = await http.get(f"/api/v1/tenants/{tenant}/availability", params=params, headers=headers)
            assert r.status_code == 200, r.text
            body = r.json()
            assert int(body["availability"]["outage"]["total"]) == expected_total
            assert body["availability"]["unknownPolicy"] == "UNKNOWN_POLICY_EXCLUDED"
            bad = await http.get(f"/api/v1/tenants/{tenant}/availability",
                                 params={**params, "range.end_time": _rfc3339(lo * 60)}, headers=headers)
            assert bad.status_code == 400
            assert "range" in bad.text and bad.json()["code"] == 3
    finally:
        for p in procs:
            p.terminate()
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()
        for r in reversed(running):
            await r.stop(grace=1.0, drain_s=0)


def _rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
