"""`towerco up -d` / `status` / `seed` / `down` end to end, with real child processes, real
embedded PostgreSQL and NATS, and a real Sites service."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from towerco.sites.v1 import sites_pb2

import sdk
from cli import state
from mesh.auth import verify_token

pytestmark = pytest.mark.timeout(240)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _list_sites(target: str, token: str) -> list[sites_pb2.Site]:
    out: list[sites_pb2.Site] = []
    async with sdk.Client(target, token=token, breaker=False) as client:
        request = sites_pb2.ListSitesRequest()
        request.page.size = 1000
        while True:
            reply = await client.sites.ListSites(request, timeout=10)
            out.extend(reply.sites)
            if not reply.page.next_token:
                return out
            request.page.token = reply.page.next_token


async def test_up_detached_status_seed_down_on_the_embedded_stack(towerco_embedded) -> None:
    t = towerco_embedded
    up = t.run("up", "-d", "--sites", "12", "--no-simulate", "--timeout", "90")
    assert up.returncode == 0, up.stdout + up.stderr
    sites_target = f"127.0.0.1:{t.port('sites')}"
    assert sites_target in up.stdout and "grpcurl" in up.stdout and "admin (all tenants): ey" in up.stdout

    recorded = json.loads((t.home / "stack.json").read_text())
    assert recorded["state"] == "ready"
    assert recorded["processes"]["sites"]["endpoint"] == sites_target
    assert recorded["processes"]["sites"]["metrics_port"] == t.port("sites") + 2000
    pg_port = recorded["embedded"]["postgres"]["port"]
    nats_port = recorded["embedded"]["nats"]["port"]
    assert pg_port not in (5432, 4222) and nats_port not in (5432, 4222)
    assert recorded["database_url"].endswith(f":{pg_port}/postgres")
    assert (t.home / "pg" / "PG_VERSION").exists() and (t.home / "logs" / "sites.log").exists()
    assert recorded["seed"]["ok"] and recorded["seed"]["sites_created"] == 12
    assert verify_token(recorded["tokens"]["admin"]).is_staff
    assert verify_token(recorded["tokens"]["tenant_viewer"]).tenant == "safaricom"

    status = t.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[2:]}
    assert set(lines) >= {"postgres", "nats", "sites"}
    assert " ok " in lines["sites"] and "SERVING" in lines["sites"]
    assert " ok " in lines["noc"] and "SERVING" in lines["noc"], lines.get("noc")
    as_json = json.loads(t.run("status", "--json").stdout)
    assert all(row["healthy"] for row in as_json["processes"])
    # workers are checked too: their Prometheus endpoint and event-loop heartbeat
    for worker in ("ingestor", "kpi_calculator", "aiops_engine"):
        port = int(t.env[f"TOWERCO_{worker.upper()}_METRICS_PORT"])
        assert recorded["processes"][worker]["endpoint"] == f"http://127.0.0.1:{port}/metrics"
        assert " ok " in lines[worker] and "heartbeat ok" in lines[worker], lines[worker]
    assert t.run("health", "kpi_calculator").returncode == 0

    # The fleet is in the Sites service, and the tenant viewer sees only its tenant's sites.
    sites = await _list_sites(sites_target, recorded["tokens"]["admin"])
    assert len(sites) == 12 and {s.region for s in sites} >= {"nairobi", "mombasa"}
    visible = await _list_sites(sites_target, recorded["tokens"]["tenant_viewer"])
    assert visible and len(visible) < 12 and all("safaricom" in s.tenant_ids for s in visible)

    # With the gateway in the build, the printed curl works too.
    if "gateway" in recorded["processes"]:
        import httpx

        gateway = f"http://127.0.0.1:{t.port('gateway')}"
        assert recorded["gateway_url"] == gateway and "curl -H" in up.stdout
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{gateway}/api/v1/sites/{sites[0].id}",
                                   headers={"Authorization": f"Bearer {recorded['tokens']['admin']}"})
        assert reply.status_code == 200 and reply.json()["id"] == sites[0].id
        # the AIOps service is up behind the gateway, with every detector
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"{gateway}/api/v1/aiops/status",
                                   headers={"Authorization": f"Bearer {recorded['tokens']['admin']}"})
        assert reply.status_code == 200, reply.text
        assert {"rule.mains_lost", "stat.telemetry_gap"} <= {d["name"] for d in reply.json()["detectors"]}
        # the NOC is up behind the gateway and knows the seeded register (PostAlarm on a seeded site)
        async with httpx.AsyncClient(timeout=10) as http:
            admin = {"Authorization": f"Bearer {recorded['tokens']['admin']}"}
            reply = await http.post(f"{gateway}/api/v1/alarms", headers=admin, json={
                "source": "stack-test", "sourceAlarmId": "1", "siteId": sites[0].id,
                "alarmType": "ALARM_TYPE_EQUIPMENT", "probableCause": "site_down",
                "perceivedSeverity": "PERCEIVED_SEVERITY_CRITICAL"})
            assert reply.status_code == 200, reply.text
            incident = reply.json()["incidentId"]
            reply = await http.get(f"{gateway}/api/v1/incidents/{incident}", headers=admin)
        assert reply.status_code == 200 and reply.json()["kind"] == "INCIDENT_KIND_POWER", reply.text

    # Seeding again creates nothing new (and, with no port in the environment, finds the running
    # stack's Sites endpoint in stack.json).
    again = t.run("seed", "--sites", "12", without=("TOWERCO_SITES_PORT",))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sites 0 new / 12 existing" in again.stdout and "tenants 0 new / 3 existing" in again.stdout
    assert "tenancies 0 new /" in again.stdout and "windows 0 new /" in again.stdout
    assert len(await _list_sites(sites_target, recorded["tokens"]["admin"])) == 12

    # A second `up` for the same home is refused while the first runs.
    second = t.run("up", "-d", "--no-seed")
    assert second.returncode == 1 and "already running" in second.stderr

    supervisor = state.supervisor_pid(t.home)
    child = recorded["processes"]["sites"]["pid"]
    down = t.run("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not state.alive(supervisor) and not state.alive(child)
    assert not _listening(pg_port) and not _listening(nats_port) and not _listening(t.port("sites"))
    assert t.run("status").returncode == 3

    # Up again: the same embedded ports and the same data.
    restart = t.run("up", "-d", "--no-seed", "--only", "sites", "--timeout", "90")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    recorded = json.loads((t.home / "stack.json").read_text())
    assert recorded["embedded"]["postgres"]["port"] == pg_port
    assert len(await _list_sites(sites_target, recorded["tokens"]["admin"])) == 12
    if os.geteuid() == 0:
        # As root PostgreSQL runs as an unprivileged user; when it can no longer reach its data
        # folder, pg_ctl stop fails and the postmaster is signalled by pid instead.
        t.home.chmod(0o700)
        t.home.parent.chmod(0o700)
    assert t.run("down").returncode == 0
    assert not _listening(pg_port)
    again_down = t.run("down")
    assert again_down.returncode == 0 and "nothing running" in again_down.stdout


def test_up_refuses_a_busy_port_and_leaves_nothing_running(towerco_external) -> None:
    t = towerco_external
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", t.port("sites")))
        busy.listen()
        up = t.run("up", "-d", "--no-seed", "--timeout", "30")
    assert up.returncode == 1
    assert f"127.0.0.1:{t.port('sites')}" in up.stderr and "TOWERCO_<NAME>_PORT" in up.stderr
    assert state.supervisor_pid(t.home) is None
    assert t.run("status").returncode == 3


def test_migrate_and_bad_seed_target_errors(towerco_external) -> None:
    t = towerco_external
    migrate = t.run("migrate")
    assert migrate.returncode == 0 and "migration(s) applied" in migrate.stdout, migrate.stderr
    seed = t.run("seed", "--sites", "3", "--target", f"127.0.0.1:{t.port('files')}", timeout=120)
    assert seed.returncode == 1 and "UNAVAILABLE" in seed.stderr and "Traceback" not in seed.stderr


@pytest.mark.slow
def test_supervisor_restarts_a_killed_child_and_ctrl_c_stops_everything(towerco_external) -> None:
    t = towerco_external
    fg = t.popen("up", "--no-seed", "--only", "sites", "--timeout", "90")
    t.wait_for(lambda: (state.read_stack(t.home) or {}).get("state") == "ready", 120, "the stack to be ready")
    first = state.read_stack(t.home)["processes"]["sites"]["pid"]

    os.kill(first, signal.SIGKILL)
    restarted = t.wait_for(
        lambda: (p := state.read_stack(t.home)["processes"]["sites"])["restarts"] == 1
        and p["status"] == "running" and p, 30, "the restart")
    assert restarted["pid"] != first and state.alive(restarted["pid"])
    t.wait_for(lambda: t.run("status").returncode == 0, 60, "sites to be healthy again")

    fg.send_signal(signal.SIGINT)
    out, _ = fg.communicate(timeout=60)
    assert fg.returncode == 0, out
    assert "restart #1" in out and "SIGINT received" in out and "stopped" in out
    assert "Towerco AIOps is up" in out and "Ctrl-C stops everything" in out
    assert not state.alive(restarted["pid"]) and not _listening(t.port("sites"))
    assert state.read_stack(t.home)["state"] == "stopped"


@pytest.mark.slow
def test_down_cleans_up_after_a_killed_supervisor(towerco_external) -> None:
    t = towerco_external
    up = t.run("up", "-d", "--no-seed", "--only", "sites", "--timeout", "90")
    assert up.returncode == 0, up.stdout + up.stderr
    recorded = state.read_stack(t.home)
    assert set(recorded["processes"]) == {"sites"}
    supervisor, child = recorded["supervisor_pid"], recorded["processes"]["sites"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    t.wait_for(lambda: not state.alive(supervisor), 10, "the supervisor to die")
    assert state.alive(child)  # children live in their own sessions
    status = t.run("status")
    assert status.returncode == 3 and "`towerco down` stops what it left running" in status.stdout
    down = t.run("down")
    assert down.returncode == 0 and "leftover" in down.stdout and "sites" in down.stdout
    assert not state.alive(child) and not _listening(t.port("sites"))
