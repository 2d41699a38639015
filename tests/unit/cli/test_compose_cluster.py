"""compose.cluster.yaml (the cluster profile, an override of compose.yaml): three NATS nodes
routed to each other as one JetStream cluster, every process given the whole server list and
replicas 3, two gateway replicas behind Traefik, two replicas of each worker, the stateful ones
sharing partitions by leases."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.processes import deployable
from mesh import events
from mesh.config import Settings

ROOT = Path(__file__).resolve().parents[3]
NODES = ("nats", "nats-2", "nats-3")


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: {"!reset": loader.construct_sequence(node)})


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.load((ROOT / "compose.cluster.yaml").read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_three_nats_nodes_form_one_jetstream_cluster(cluster: dict) -> None:
    services = cluster["services"]
    names, routes = set(), {}
    for node in NODES:
        cmd = services[node]["command"]
        assert "-js" in cmd and _flag(cmd, "--cluster_name") == "towerco"
        assert _flag(cmd, "--cluster") == "nats://0.0.0.0:6222"
        names.add(_flag(cmd, "-n"))
        routes[node] = set(_flag(cmd, "--routes").split(","))
        assert services[node]["image"].startswith("nats:2.10") and "healthcheck" in services[node]
        assert services[node]["volumes"][0].split(":")[1] == "/data"
    assert len(names) == 3 and len({services[n]["volumes"][0] for n in NODES}) == 3
    for node in NODES:  # routed to both others, never to itself
        assert routes[node] == {f"nats://{o}:6222" for o in NODES if o != node}


def test_every_process_gets_the_whole_server_list_and_replicas_3(cluster: dict) -> None:
    services = cluster["services"]
    for name in [p.name for p in deployable()] + ["migrate"]:
        env = services[name]["environment"]
        assert events.server_list(env["NATS_URL"]) == [f"nats://{n}:4222" for n in NODES], name
        assert Settings.from_env({k: str(v) for k, v in env.items()}).nats_replicas == 3


def test_gateway_replicas_behind_traefik_and_worker_replicas(cluster: dict) -> None:
    services = cluster["services"]
    gw = services["gateway"]
    assert gw["deploy"]["replicas"] >= 2
    assert gw["ports"] == {"!reset": []}  # only Traefik publishes 8080
    labels = gw["labels"]
    assert labels["traefik.enable"] == "true"
    assert labels["traefik.http.services.towerco.loadbalancer.server.port"] == "8080"
    assert labels["traefik.http.services.towerco.loadbalancer.healthcheck.path"] == "/ready"
    traefik = services["traefik"]
    assert traefik["image"].startswith("traefik:")
    assert "--providers.docker=true" in traefik["command"] and "127.0.0.1:8080:8080" in traefik["ports"]
    for proc in deployable():
        if proc.kind == "worker":
            assert services[proc.name]["deploy"]["replicas"] >= 2, proc.name
    assert services["kpi_calculator"]["environment"]["TOWERCO_KPI_PARTITIONS"] == "auto"
    assert services["aiops_engine"]["environment"]["TOWERCO_AIOPS_PARTITIONS"] == "auto"


def test_the_override_only_names_services_of_compose_yaml_or_its_own(cluster: dict) -> None:
    base = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    own = {"nats-2", "nats-3", "traefik"}
    assert set(cluster["services"]) - own <= set(base)
    assert set(cluster["volumes"]) == {"natsdata-2", "natsdata-3"}
