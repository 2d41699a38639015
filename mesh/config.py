"""Typed settings from the environment: the one place a `TOWERCO_*` variable is read.

Every variable is declared here once, with its type, default and meaning, in one of these sections:

  Settings               what every process reads (host, ports, targets, database, NATS, auth, logs)
  TelemetrySettings      the telemetry domain (its service and the ingestor)
  OutboxSettings         the transactional outbox of every service
  IngestorSettings       the ingestor worker
  KpiCalculatorSettings  the kpi_calculator worker
  BiSettings             the BI domain's tariffs and emission factors (BI service, bi_engine)
  BiEngineSettings       the bi_engine worker
  FilesSettings          the Files service
  LeaseSettings          partition leases of the stateful workers' replicas
  NocSettings            the NOC service (correlation windows, consumer, caches)
  NotifierSettings       the notifier worker (delivery, retries, SMTP)
  SinkSettings           the local SMTP and webhook sink of the embedded stack
  GatewaySettings        the REST/WebSocket gateway

`get_settings()` is the process-wide `Settings` (read once); a section is read with
`load(TelemetrySettings)`. A malformed value fails with the variable's name. The table in
docs/operations.md is `python -m mesh.config` (tests/unit/mesh/test_config.py keeps them in step,
and fails when code spells a `TOWERCO_*` name that is not declared here).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_PORTS: dict[str, int] = {
    "sites": 7001,
    "telemetry": 7002,
    "kpi": 7003,
    "noc": 7004,
    "bi": 7005,
    "notifications": 7006,
    "files": 7007,
    "aiops": 7008,
}
METRICS_PORT_OFFSET = 2000
# Prometheus ports of the workers (no gRPC port to offset from); TOWERCO_<NAME>_METRICS_PORT moves
# one, a value <= 0 turns it off (`towerco status` then has nothing to check).
WORKER_METRICS_PORTS: dict[str, int] = {"ingestor": 9101, "kpi_calculator": 9102, "aiops_engine": 9103,
                                         "bi_engine": 9104, "notifier": 9105}
DEV_JWT_SECRET = "towerco-dev-secret-not-for-production"
DAY_S = 86400.0

T = TypeVar("T")


# --------------------------------------------------------------------------- declaring a variable


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, what it means, an optional check of the parsed value
    (`check` returns False -> "<NAME> <requirement>"), and how the default reads in the docs."""

    name: str
    doc: str
    check: Callable[[Any], bool] | None = None
    requirement: str = ""
    shown_default: str | None = None
    lower: bool = False


def env(name: str, default: Any, doc: str, *, check: Callable[[Any], bool] | None = None,
        requirement: str = "", shown: str | None = None, lower: bool = False) -> Any:
    """A dataclass field read from the variable `name`."""
    var = Var(name, doc, check, requirement, shown, lower)
    if isinstance(default, dict | list | set):
        raise TypeError("mutable defaults are not environment variables")
    return field(default=default, metadata={"env": var})


def _positive(v: float) -> bool:
    return v > 0


def _parse(name: str, kind: Any, raw: str) -> Any:
    if kind is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if kind is float:
        try:
            return float(raw)
        except ValueError as exc:
            raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if kind is Path:
        return Path(raw)
    if typing.get_origin(kind) is tuple:
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    return raw


def _declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Var, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        var = f.metadata.get("env")
        if isinstance(var, Var):
            yield f, var, hints[f.name]


def _read(cls: type, environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f, var, kind in _declared(cls):
        raw = environ.get(var.name, "").strip()
        if not raw:
            continue
        value = _parse(var.name, kind, raw)
        if var.lower and isinstance(value, str):
            value = value.lower()
        if var.check is not None and not var.check(value):
            raise ValueError(f"{var.name} {var.requirement or 'is out of range'}, got {raw!r}")
        values[f.name] = value
    return values


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """A settings section read from the environment (`os.environ` unless given); unset or empty
    variables keep their defaults."""
    return cls(**_read(cls, os.environ if environ is None else environ))


# --------------------------------------------------------------------------- every process


def _ports(environ: Mapping[str, str], names: Mapping[str, int], suffix: str) -> dict[str, int]:
    out = {}
    for name, default in names.items():
        var = f"TOWERCO_{name.upper()}_{suffix}"
        raw = environ.get(var, "").strip()
        out[name] = _parse(var, int, raw) if raw else default
    return out


@dataclass(frozen=True)
class Settings:
    host: str = env("TOWERCO_HOST", "127.0.0.1", "bind/connect host of every process (0.0.0.0 in containers)")
    database_url: str = env("DATABASE_URL", "", "external PostgreSQL; unset: the embedded one", shown="unset")
    nats_url: str = env("NATS_URL", "", "external NATS JetStream, one URL or a comma list of a cluster's "
                        "servers; unset: the embedded one", shown="unset")
    nats_replicas: int = env("TOWERCO_NATS_REPLICAS", 1, "replicas of every JetStream stream (1 embedded, "
                             "3 on a cluster: `towerco up --cluster`, compose's cluster profile)",
                             check=lambda v: v in (1, 3, 5), requirement="must be 1, 3 or 5")
    home: Path = env("TOWERCO_HOME", Path(".towerco"), "state folder of the embedded stack")
    jwt_secret: str = env("TOWERCO_JWT_SECRET", DEV_JWT_SECRET,
                          "HS256 secret shared by `towerco token` and every service", shown="dev secret")
    jwt_algorithms: tuple[str, ...] = env("TOWERCO_JWT_ALGORITHMS", ("HS256",),
                                          "comma list of accepted JWT algorithms (`none` never is)")
    jwks_url: str = env("TOWERCO_JWKS_URL", "", "key set URL for RS256 (asymmetric) tokens", shown="unset")
    jwt_issuer: str = env("TOWERCO_JWT_ISSUER", "towerco", "required `iss` claim")
    jwt_audience: str = env("TOWERCO_JWT_AUDIENCE", "towerco", "required `aud` claim")
    log_level: str = env("TOWERCO_LOG_LEVEL", "info", "debug, info, warning, error", lower=True)
    otel_exporter: str = env("TOWERCO_OTEL_EXPORTER", "none", "tracing: none, console or otlp", lower=True)
    max_message_bytes: int = env("TOWERCO_MAX_MESSAGE_BYTES", 4 * 1024 * 1024,
                                 "largest gRPC message accepted (RESOURCE_EXHAUSTED beyond)")
    partitions: int = env("TOWERCO_PARTITIONS", 16, "telemetry partitions (site -> partition, mesh.subjects)",
                          check=_positive, requirement="must be positive")
    gateway_port: int = env("TOWERCO_GATEWAY_PORT", 8080, "gateway HTTP port")
    # TOWERCO_<SERVICE>_PORT, TOWERCO_<SERVICE>_TARGET, TOWERCO_<WORKER>_METRICS_PORT (see DYNAMIC)
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    worker_metrics_ports: dict[str, int] = field(default_factory=lambda: dict(WORKER_METRICS_PORTS))
    targets: dict[str, str] = field(default_factory=dict)
    # the declared variables that were set (non-empty) in the environment this was read from
    explicit: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = _read(cls, environ)
        host = values.get("host", "127.0.0.1")
        ports = _ports(environ, DEFAULT_PORTS, "PORT")
        targets = {name: environ.get(f"TOWERCO_{name.upper()}_TARGET", "").strip() or f"{host}:{port}"
                   for name, port in ports.items()}
        explicit = frozenset(name for name in (*declared_names(), *dynamic_names()) if environ.get(name, "").strip())
        return cls(**values, ports=ports, worker_metrics_ports=_ports(environ, WORKER_METRICS_PORTS, "METRICS_PORT"),
                   targets=targets, explicit=explicit)

    def is_set(self, name: str) -> bool:
        """Whether the environment named this variable (rather than the default applying)."""
        return name in self.explicit

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


# The variables whose names are built from a registry (one per service or worker).
DYNAMIC: tuple[tuple[str, str, str], ...] = (
    ("TOWERCO_<SERVICE>_PORT", " · ".join(f"{k} {v}" for k, v in DEFAULT_PORTS.items()),
     "gRPC port of a service; Prometheus metrics on port + 2000"),
    ("TOWERCO_<SERVICE>_TARGET", "host:port", "where clients reach a service (`sites:7001` in compose)"),
    ("TOWERCO_<WORKER>_METRICS_PORT", " · ".join(f"{k} {v}" for k, v in WORKER_METRICS_PORTS.items()),
     "a worker's Prometheus port; the worker serves metrics only when it is set (`towerco up` and "
     "compose set it); <= 0 turns it off, 0 in the worker itself takes a free port"),
)


# --------------------------------------------------------------------------- domain sections


@dataclass(frozen=True)
class TelemetrySettings:
    """The telemetry domain: read by the telemetry service and the ingestor alike."""

    retention_days: int = env("TOWERCO_TELEMETRY_RETENTION_DAYS", 90,
                              "days of raw samples kept (older partitions dropped; older samples refused)",
                              check=lambda v: v >= 1, requirement="must be at least 1")
    stream_max_age_s: float = env("TOWERCO_TELEMETRY_STREAM_MAX_AGE_S", 7 * DAY_S,
                                  "how long the TELEMETRY stream keeps a batch (7 days)",
                                  check=_positive, requirement="must be positive")


@dataclass(frozen=True)
class OutboxSettings:
    retention_s: float = env("TOWERCO_OUTBOX_RETENTION_S", 7 * DAY_S,
                             "published outbox rows are deleted after this long (7 days)",
                             check=_positive, requirement="must be positive")


@dataclass(frozen=True)
class IngestorSettings:
    partitions_ahead_days: int = env("TOWERCO_INGESTOR_PARTITIONS_AHEAD_DAYS", 3,
                                     "daily sample partitions created ahead of time")
    batch: int = env("TOWERCO_INGESTOR_BATCH", 200, "messages per fetch")
    upkeep_s: float = env("TOWERCO_INGESTOR_UPKEEP_S", 3600.0, "seconds between partition upkeep rounds")
    ack_wait_s: float = env("TOWERCO_INGESTOR_ACK_WAIT_S", 30.0,
                            "how soon the messages a killed replica held are redelivered to another")
    concurrency: int = env("TOWERCO_INGESTOR_CONCURRENCY", 2,
                           "fetch-and-write loops per process (1..16)")


@dataclass(frozen=True)
class KpiCalculatorSettings:
    partitions: str = env("TOWERCO_KPI_PARTITIONS", "", "partitions this replica owns, e.g. `0-7` or `1,3,5`; "
                          "`auto`: shared with the other replicas by leases (mesh/leases.py)", shown="all")
    allowed_lateness_s: float = env("TOWERCO_KPI_ALLOWED_LATENESS_S", 7 * DAY_S,
                                    "samples older than this are not folded in (7 days)")
    recompute_days: float = env("TOWERCO_KPI_RECOMPUTE_DAYS", 35.0,
                                "how far back a register change is re-evaluated")
    publish_grace_s: float = env("TOWERCO_KPI_PUBLISH_GRACE_S", 60.0, "an hour is announced this long after it ends")
    publish_interval_s: float = env("TOWERCO_KPI_PUBLISH_INTERVAL_S", 5.0, "how often closed hours are looked for")
    minute_retention_days: float = env("TOWERCO_KPI_MINUTE_RETENTION_DAYS", 35.0, "minute aggregates kept")
    replica: str = env("TOWERCO_KPI_REPLICA", "", "name of this replica (its register-event consumer, its "
                       "lease member name)", shown="from the partitions; host name with auto")
    durable_prefix: str = env("TOWERCO_KPI_DURABLE_PREFIX", "kpi-calculator", "prefix of the consumer names")
    ack_wait_s: float = env("TOWERCO_KPI_ACK_WAIT_S", 60.0, "redelivery delay of a batch a dead replica held")
    batch: int = env("TOWERCO_KPI_BATCH", 100, "TELEMETRY messages folded in one transaction, at most")
    recompute_interval_s: float = env("TOWERCO_KPI_RECOMPUTE_INTERVAL_S", 0.1,
                                      "least pause between re-evaluation rounds")
    settle_s: float = env("TOWERCO_KPI_SETTLE_S", 0.5, "a site's marked hours are re-evaluated once no "
                          "telemetry touched it for this long")
    recompute_max_delay_s: float = env("TOWERCO_KPI_RECOMPUTE_MAX_DELAY_S", 10.0,
                                       "... but a site that never goes quiet at least this often")
    recompute_concurrency: int = env("TOWERCO_KPI_RECOMPUTE_CONCURRENCY", 3,
                                     "sites re-evaluated at once, each in its own transaction")


def _non_negative(v: float) -> bool:
    return v >= 0 and v == v and v != float("inf")


@dataclass(frozen=True)
class BiSettings:
    """The BI domain's tariffs and emission factors: read by the BI service and the bi_engine."""

    grid_price_minor_per_kwh: float = env("TOWERCO_BI_GRID_PRICE_MINOR_PER_KWH", 20.0,
                                          "grid energy price, minor currency units per kWh",
                                          check=_non_negative, requirement="must be a finite number >= 0")
    fuel_price_minor_per_l: float = env("TOWERCO_BI_FUEL_PRICE_MINOR_PER_L", 180.0,
                                        "diesel price, minor currency units per litre",
                                        check=_non_negative, requirement="must be a finite number >= 0")
    currency: str = env("TOWERCO_BI_CURRENCY", "USD", "currency of those prices (ISO 4217)")
    grid_kg_co2e_per_kwh: float = env("TOWERCO_BI_GRID_KG_CO2E_PER_KWH", 0.45,
                                      "grid emission factor, kg CO2e per kWh (set your market's)",
                                      check=_non_negative, requirement="must be a finite number >= 0")
    diesel_kg_co2e_per_l: float = env("TOWERCO_BI_DIESEL_KG_CO2E_PER_L", 2.68,
                                      "diesel combustion factor, kg CO2e per litre",
                                      check=_non_negative, requirement="must be a finite number >= 0")


@dataclass(frozen=True)
class BiEngineSettings:
    interval_s: float = env("TOWERCO_BI_ENGINE_INTERVAL_S", 3600.0, "seconds between recommendation runs",
                            check=_positive, requirement="must be positive")
    window_days: int = env("TOWERCO_BI_ENGINE_WINDOW_DAYS", 7, "whole days of figures a run looks back on",
                           check=lambda v: 1 <= v <= 90, requirement="must be between 1 and 90")
    concurrency: int = env("TOWERCO_BI_ENGINE_CONCURRENCY", 8, "sites asked about at once",
                           check=lambda v: 1 <= v <= 64, requirement="must be between 1 and 64")
    exports: bool = env("TOWERCO_BI_ENGINE_EXPORTS", True, "file each tenant's statement and the fleet energy "
                        "report of the last complete month as CSV, XLSX and PDF in the Files service, once")


@dataclass(frozen=True)
class FilesSettings:
    store_url: str = env("TOWERCO_FILES_STORE_URL", "",
                         "object store of the file bytes, an obstore URL (s3://bucket/prefix, gs://, az://, "
                         "file:///path)", shown="<TOWERCO_HOME>/files")
    max_bytes: int = env("TOWERCO_FILES_MAX_BYTES", 3 * 1024 * 1024, "largest upload accepted, bytes",
                         check=lambda v: v >= 1, requirement="must be at least 1")


@dataclass(frozen=True)
class AiopsEngineSettings:
    partitions: str = env("TOWERCO_AIOPS_PARTITIONS", "", "partitions this replica owns, e.g. `0-7` or `1,3,5`; "
                          "`auto`: shared with the other replicas by leases (mesh/leases.py)", shown="all")
    replica: str = env("TOWERCO_AIOPS_REPLICA", "", "name of this replica (its register-event consumer, its "
                       "lease member name)", shown="from the partitions; host name with auto")
    durable_prefix: str = env("TOWERCO_AIOPS_DURABLE_PREFIX", "aiops-engine", "prefix of the consumer names")
    batch: int = env("TOWERCO_AIOPS_BATCH", 100, "TELEMETRY messages handled in one transaction, at most")
    ack_wait_s: float = env("TOWERCO_AIOPS_ACK_WAIT_S", 30.0, "redelivery delay of a batch a dead replica held")
    tick_s: float = env("TOWERCO_AIOPS_TICK_S", 5.0, "how often silent sites are judged (telemetry gap)")
    live_lag_s: float = env("TOWERCO_AIOPS_LIVE_LAG_S", 120.0, "a partition whose newest sample is at most "
                            "this old is live: its clock runs on with the wall clock")
    adjust_s: float = env("TOWERCO_AIOPS_ADJUST_S", 5.0, "how often feedback adjustments are re-read")
    retrain_s: float = env("TOWERCO_AIOPS_RETRAIN_S", 3600.0, "how often the multivariate models are retrained "
                           "(0: never)")


@dataclass(frozen=True)
class LeaseSettings:
    """Partition leases of the stateful workers' replicas (TOWERCO_KPI_PARTITIONS or TOWERCO_AIOPS_PARTITIONS set to auto)."""

    ttl_s: float = env("TOWERCO_LEASE_TTL_S", 10.0, "a replica that stopped heartbeating loses its partitions "
                       "after this long", check=_positive, requirement="must be positive")
    heartbeat_s: float = env("TOWERCO_LEASE_HEARTBEAT_S", 2.0, "how often a replica renews its leases and "
                             "rebalances (shorter than the ttl)", check=_positive, requirement="must be positive")


@dataclass(frozen=True)
class NotifierSettings:
    durable: str = env("TOWERCO_NOTIFIER_DURABLE", "notifier", "name of its consumer of the incident events")
    smtp_host: str = env("TOWERCO_NOTIFIER_SMTP_HOST", "127.0.0.1", "SMTP server email channels are sent through")
    smtp_port: int = env("TOWERCO_NOTIFIER_SMTP_PORT", 2525, "its port (the embedded stack's sink listens on 2525)")
    smtp_username: str = env("TOWERCO_NOTIFIER_SMTP_USERNAME", "", "SMTP login (none when unset)", shown="unset")
    smtp_password: str = env("TOWERCO_NOTIFIER_SMTP_PASSWORD", "", "SMTP password", shown="unset")
    smtp_starttls: bool = env("TOWERCO_NOTIFIER_SMTP_STARTTLS", False, "upgrade the SMTP connection with STARTTLS")
    mail_from: str = env("TOWERCO_NOTIFIER_MAIL_FROM", "towerco-noc@localhost", "From address of notification emails")
    tick_s: float = env("TOWERCO_NOTIFIER_TICK_S", 0.5, "longest sleep between looks at due timers and deliveries",
                        check=_positive, requirement="must be positive")
    max_attempts: int = env("TOWERCO_NOTIFIER_MAX_ATTEMPTS", 8, "delivery attempts before a notification is dead",
                            check=lambda v: 1 <= v <= 100, requirement="must be between 1 and 100")
    retry_base_s: float = env("TOWERCO_NOTIFIER_RETRY_BASE_S", 2.0, "first retry delay (doubles, with jitter)",
                              check=_positive, requirement="must be positive")
    retry_max_s: float = env("TOWERCO_NOTIFIER_RETRY_MAX_S", 600.0, "longest retry delay",
                             check=_positive, requirement="must be positive")
    timeout_s: float = env("TOWERCO_NOTIFIER_TIMEOUT_S", 10.0, "deadline of one delivery attempt",
                           check=_positive, requirement="must be positive")
    lease_s: float = env("TOWERCO_NOTIFIER_LEASE_S", 60.0, "an attempt claimed this long ago and not finished "
                         "(its process died) is retried", check=_positive, requirement="must be positive")
    concurrency: int = env("TOWERCO_NOTIFIER_CONCURRENCY", 32, "deliveries in flight at once",
                           check=lambda v: 1 <= v <= 1000, requirement="must be between 1 and 1000")


@dataclass(frozen=True)
class SinkSettings:
    smtp_port: int = env("TOWERCO_SINK_SMTP_PORT", 2525, "port of the embedded stack's local SMTP sink")
    http_port: int = env("TOWERCO_SINK_HTTP_PORT", 8025, "port of its local webhook receiver")
    secret: str = env("TOWERCO_SINK_SECRET", "towerco-dev-webhook-secret", "signing secret of the demo webhook "
                      "channel (the sink verifies it)", shown="dev secret")


@dataclass(frozen=True)
class NocSettings:
    """The NOC service: correlation windows (services/noc/domain.Params, docs/noc.md), the anomaly
    consumer, the periodic task and the caches of site facts and SLA exposure."""

    dedup_window_s: float = env("TOWERCO_NOC_DEDUP_WINDOW_S", 300.0, "a cleared alarm raised again within "
                                "this is the same alarm (count grows)", check=lambda v: v >= 0,
                                requirement="must be >= 0")
    flap_window_s: float = env("TOWERCO_NOC_FLAP_WINDOW_S", 600.0, "transitions counted for flapping over this; "
                               "flapping stops after this long without one", check=_positive,
                               requirement="must be > 0")
    flap_threshold: int = env("TOWERCO_NOC_FLAP_THRESHOLD", 4, "transitions within the flapping window that "
                              "make an incident flapping", check=lambda v: v >= 2, requirement="must be >= 2")
    regional_window_s: float = env("TOWERCO_NOC_REGIONAL_WINDOW_S", 300.0, "mains failures of one region "
                                   "within this are one regional outage", check=_positive, requirement="must be > 0")
    regional_min_sites: int = env("TOWERCO_NOC_REGIONAL_MIN_SITES", 3, "sites of a region losing mains together "
                                  "that make a regional outage", check=lambda v: v >= 2, requirement="must be >= 2")
    auto_resolve_hold_s: float = env("TOWERCO_NOC_AUTO_RESOLVE_HOLD_S", 300.0, "an incident whose alarms all "
                                     "stayed clear this long is resolved automatically", check=lambda v: v >= 0,
                                     requirement="must be >= 0")
    reopen_window_s: float = env("TOWERCO_NOC_REOPEN_WINDOW_S", 3600.0, "a recurrence this soon after resolution "
                                 "reopens the incident (later ones open a linked incident)",
                                 check=lambda v: v >= 0, requirement="must be >= 0")
    link_window_s: float = env("TOWERCO_NOC_LINK_WINDOW_S", DAY_S, "how far back a new incident looks for the "
                               "earlier one it recurs (recurrence_of)", check=lambda v: v >= 0,
                               requirement="must be >= 0")
    tick_s: float = env("TOWERCO_NOC_TICK_S", 5.0, "how often auto-resolve timers, window ends and flapping are "
                        "checked", check=_positive, requirement="must be > 0")
    batch: int = env("TOWERCO_NOC_BATCH", 500, "anomaly events correlated in one transaction, at most",
                     check=lambda v: v >= 1, requirement="must be at least 1")
    lanes: int = env("TOWERCO_NOC_LANES", 2, "concurrent correlation transactions per batch (its regions split "
                     "between them)", check=lambda v: v >= 1, requirement="must be at least 1")
    ack_wait_s: float = env("TOWERCO_NOC_ACK_WAIT_S", 60.0, "redelivery delay of an unacknowledged batch")
    durable: str = env("TOWERCO_NOC_DURABLE", "noc-anomalies", "the anomaly consumer's durable name")
    facts_refresh_s: float = env("TOWERCO_NOC_FACTS_REFRESH_S", 600.0, "the whole register is re-listed this "
                                 "often (events keep it fresh in between)", check=_positive,
                                 requirement="must be > 0")
    sla_ttl_s: float = env("TOWERCO_NOC_SLA_TTL_S", 300.0, "a tenant's month-to-date availability (SLA "
                           "exposure) is cached this long", check=lambda v: v >= 0, requirement="must be >= 0")


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's variables (gateway/config.py's GatewayConfig.from_env reads this section)."""

    services: tuple[str, ...] = env("TOWERCO_GATEWAY_SERVICES", (), "comma list of services to expose "
                                    "(full or short names)", shown="every towerco service")
    targets: tuple[str, ...] = env("TOWERCO_GATEWAY_TARGETS", (), "extra upstreams, `short=host:port,...`",
                                   shown="none")
    rate_limit: float = env("TOWERCO_GATEWAY_RATE_LIMIT", 50.0, "requests per second per principal (0: off)")
    rate_burst: float = env("TOWERCO_GATEWAY_RATE_BURST", 100.0, "rate-limit bucket size")
    max_body_bytes: int = env("TOWERCO_GATEWAY_MAX_BODY_BYTES", 1024 * 1024, "largest request body")
    timeout_s: float = env("TOWERCO_GATEWAY_TIMEOUT_S", 10.0, "deadline when the client sends none")
    max_timeout_s: float = env("TOWERCO_GATEWAY_MAX_TIMEOUT_S", 300.0, "largest deadline a client may ask for")
    cors_origins: tuple[str, ...] = env("TOWERCO_GATEWAY_CORS_ORIGINS", (), "comma list of allowed browser "
                                        "origins", shown="none")
    unknown_fields: str = env("TOWERCO_GATEWAY_UNKNOWN_FIELDS", "reject", "`reject` (400) or `ignore`",
                              lower=True, check=lambda v: v in ("reject", "ignore"),
                              requirement="must be reject or ignore")
    ready_cache_s: float = env("TOWERCO_GATEWAY_READY_CACHE_S", 2.0,
                               "how long /ready reuses an upstream health answer")
    stream_queue: int = env("TOWERCO_GATEWAY_STREAM_QUEUE", 256,
                            "messages buffered per streaming client before it is cut")
    heartbeat_s: float = env("TOWERCO_GATEWAY_HEARTBEAT_S", 15.0, "SSE/WebSocket heartbeat interval")
    stream_resume_s: float = env("TOWERCO_GATEWAY_STREAM_RESUME_S", 30.0, "how long a resumable SSE/WebSocket "
                                 "stream keeps re-opening its upstream after the service became unavailable, "
                                 "from the last sequence sent, before it closes (0: close at once)",
                                 check=lambda v: v >= 0, requirement="must be >= 0")
    workers: int = env("TOWERCO_GATEWAY_WORKERS", 1, "worker processes of `python -m gateway`")


# Each section and the processes that read it (the docs' "read by" column).
SECTIONS: dict[type, str] = {
    Settings: "every process",
    TelemetrySettings: "telemetry, ingestor",
    OutboxSettings: "outbox relays (sites, kpi)",
    IngestorSettings: "ingestor",
    KpiCalculatorSettings: "kpi_calculator",
    AiopsEngineSettings: "aiops_engine",
    LeaseSettings: "kpi_calculator, aiops_engine",
    BiSettings: "bi, bi_engine",
    BiEngineSettings: "bi_engine",
    FilesSettings: "files",
    NocSettings: "noc",
    NotifierSettings: "notifier",
    SinkSettings: "notification sink, seed",
    GatewaySettings: "gateway",
}


def declared() -> Iterator[tuple[type, Var, Any]]:
    """(section, variable, default) of every declared variable, in declaration order."""
    for cls in SECTIONS:
        for f, var, _kind in _declared(cls):
            yield cls, var, f.default


def declared_names() -> list[str]:
    return [var.name for cls in SECTIONS for _f, var, _k in _declared(cls)]


def dynamic_names() -> list[str]:
    """The concrete names of the DYNAMIC variables (TOWERCO_SITES_PORT, ...)."""
    return [*(f"TOWERCO_{s.upper()}_{what}" for s in DEFAULT_PORTS for what in ("PORT", "TARGET")),
            *(f"TOWERCO_{w.upper()}_METRICS_PORT" for w in WORKER_METRICS_PORTS)]


def _shown(var: Var, default: Any) -> str:
    if var.shown_default is not None:
        return var.shown_default
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default) if default != "" else "unset"


def markdown_table() -> str:
    """The environment table of docs/operations.md."""
    rows = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    for name, default, doc in DYNAMIC:
        who = "workers" if "<WORKER>" in name else "every process"
        rows.append(f"| `{name}` | {default} | {who} | {doc} |")
    for cls, var, default in declared():
        rows.append(f"| `{var.name}` | {_shown(var, default)} | {SECTIONS[cls]} | {var.doc} |")
    return "\n".join(rows) + "\n"


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


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
