"""Typed settings from the environment: one object per process, every default laptop-friendly.

Environment variables (all optional):
  TOWERCO_HOST                 bind/connect host for every process (127.0.0.1)
  TOWERCO_<SERVICE>_PORT       gRPC port of a service (SITES 7001, TELEMETRY 7002, KPI 7003, NOC 7004,
                               BI 7005, NOTIFICATIONS 7006, FILES 7007); metrics on port + 2000
  TOWERCO_<SERVICE>_TARGET     where clients reach a service (default host:port)
  TOWERCO_GATEWAY_PORT         gateway HTTP port (8080)
  DATABASE_URL / NATS_URL      external PostgreSQL / NATS; unset means the embedded stack
  TOWERCO_HOME                 state folder of the embedded stack (.towerco)
  TOWERCO_JWT_SECRET           HS256 secret (a dev secret by default)
  TOWERCO_JWT_ALGORITHMS       comma list of accepted algorithms (HS256)
  TOWERCO_JWKS_URL             RS256 key set URL for production
  TOWERCO_JWT_ISSUER / TOWERCO_JWT_AUDIENCE
  TOWERCO_LOG_LEVEL            debug, info, warning, error (info)
  TOWERCO_OTEL_EXPORTER        none, console or otlp (none)
  TOWERCO_MAX_MESSAGE_BYTES    largest gRPC message accepted (4 MiB)
  TOWERCO_PARTITIONS           telemetry partition count (16)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORTS: dict[str, int] = {
    "sites": 7001,
    "telemetry": 7002,
    "kpi": 7003,
    "noc": 7004,
    "bi": 7005,
    "notifications": 7006,
    "files": 7007,
}
METRICS_PORT_OFFSET = 2000
# Prometheus ports of the workers (no gRPC port to offset from); TOWERCO_<NAME>_METRICS_PORT moves
# one, a value <= 0 turns it off (`towerco status` then has nothing to check).
WORKER_METRICS_PORTS: dict[str, int] = {"ingestor": 9101, "kpi_calculator": 9102, "bi_engine": 9103}
DEV_JWT_SECRET = "towerco-dev-secret-not-for-production"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value else default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    database_url: str = ""
    nats_url: str = ""
    home: Path = Path(".towerco")
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwks_url: str = ""
    jwt_issuer: str = "towerco"
    jwt_audience: str = "towerco"
    log_level: str = "info"
    otel_exporter: str = "none"
    max_message_bytes: int = 4 * 1024 * 1024
    partitions: int = 16
    gateway_port: int = 8080
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    worker_metrics_ports: dict[str, int] = field(default_factory=lambda: dict(WORKER_METRICS_PORTS))
    targets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        ports = {name: _int(f"TOWERCO_{name.upper()}_PORT", port) for name, port in DEFAULT_PORTS.items()}
        host = _env("TOWERCO_HOST", "127.0.0.1")
        targets = {name: _env(f"TOWERCO_{name.upper()}_TARGET", f"{host}:{port}") for name, port in ports.items()}
        algorithms = tuple(a.strip() for a in _env("TOWERCO_JWT_ALGORITHMS", "HS256").split(",") if a.strip())
        return cls(
            host=host,
            database_url=os.environ.get("DATABASE_URL", ""),
            nats_url=os.environ.get("NATS_URL", ""),
            home=Path(_env("TOWERCO_HOME", ".towerco")),
            jwt_secret=_env("TOWERCO_JWT_SECRET", DEV_JWT_SECRET),
            jwt_algorithms=algorithms,
            jwks_url=_env("TOWERCO_JWKS_URL", ""),
            jwt_issuer=_env("TOWERCO_JWT_ISSUER", "towerco"),
            jwt_audience=_env("TOWERCO_JWT_AUDIENCE", "towerco"),
            log_level=_env("TOWERCO_LOG_LEVEL", "info").lower(),
            otel_exporter=_env("TOWERCO_OTEL_EXPORTER", "none").lower(),
            max_message_bytes=_int("TOWERCO_MAX_MESSAGE_BYTES", 4 * 1024 * 1024),
            partitions=_int("TOWERCO_PARTITIONS", 16),
            gateway_port=_int("TOWERCO_GATEWAY_PORT", 8080),
            ports=ports,
            worker_metrics_ports={name: _int(f"TOWERCO_{name.upper()}_METRICS_PORT", port)
                                  for name, port in WORKER_METRICS_PORTS.items()},
            targets=targets,
        )

    def port(self, service: str) -> int:
        return self.ports[service]

    def metrics_port(self, service: str) -> int:
        return self.ports[service] + METRICS_PORT_OFFSET

    def worker_metrics_port(self, worker: str) -> int | None:
        """The worker's Prometheus port, None when it has none or it is turned off."""
        port = self.worker_metrics_ports.get(worker, 0)
        return port if port > 0 else None

    def target(self, service: str) -> str:
        return self.targets.get(service) or f"{self.host}:{self.ports[service]}"


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    global _settings
    _settings = None
