"""compose.yaml runs every process type the CLI knows, with commands the CLI accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.main import build_parser
from cli.processes import PROCESSES, deployable

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _towerco_args(command: list[str]) -> list[str]:
    assert command[0] == "towerco", command
    return command[1:]


def test_every_deployable_process_has_a_container_running_towerco_serve(compose: dict) -> None:
    services = compose["services"]
    parser = build_parser()
    missing = [p.name for p in deployable() if p.name not in services]
    assert not missing, f"add a service to compose.yaml for: {missing}"
    for proc in deployable():
        command = services[proc.name]["command"]
        assert command == ["towerco", "serve", proc.name]
        args = parser.parse_args(_towerco_args(command))
        assert args.command == "serve" and args.process == proc.name


def test_health_checks_use_commands_the_cli_accepts(compose: dict) -> None:
    parser = build_parser()
    for proc in deployable():
        service = compose["services"][proc.name]
        if proc.health is None:
            continue
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        args = parser.parse_args(_towerco_args(test[1:]))
        assert args.command == "health" and args.process == proc.name
        settings = _container_settings()
        assert str(proc.listen_port(settings) or proc.metrics_port(settings)) in args.target
        if proc.health == "metrics":  # the worker is told to serve where its check looks
            assert service["environment"][f"TOWERCO_{proc.name.upper()}_METRICS_PORT"] == str(
                proc.metrics_port(settings))


def test_infrastructure_and_one_shot_migration(compose: dict) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["nats"]["image"].startswith("nats:2.10")
    assert "-js" in services["nats"]["command"]
    assert {"postgres", "nats"} <= {name for name, s in services.items() if "healthcheck" in s}
    migrate = services["migrate"]
    assert build_parser().parse_args(_towerco_args(migrate["command"])).command == "migrate"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for proc in deployable():
        deps = services[proc.name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        env = services[proc.name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and env["NATS_URL"].startswith("nats://")
        assert services[proc.name]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_every_container_finds_every_service_by_target(compose: dict) -> None:
    env = compose["services"]["migrate"]["environment"]
    for proc in PROCESSES:
        if proc.kind == "service":
            assert env[f"TOWERCO_{proc.port.upper()}_TARGET"] == f"{proc.name}:{proc.listen_port(_container_settings())}"


def test_dockerfile_is_one_non_root_image_with_the_cli() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "pip install ." in text
    assert "\nUSER towerco" in text


def _container_settings():
    from mesh.config import Settings

    return Settings()
