"""mesh.config: every TOWERCO_* variable declared once, read there only, and documented from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mesh import config
from mesh.config import (
    GatewaySettings,
    IngestorSettings,
    KpiCalculatorSettings,
    OutboxSettings,
    Settings,
    TelemetrySettings,
    load,
)

ROOT = Path(__file__).resolve().parents[3]
CODE = ("mesh", "services", "workers", "gateway", "cli", "sdk", "bench")
NAME = re.compile(r"\bTOWERCO_[A-Z][A-Z0-9_]*[A-Z0-9]\b")
READS = re.compile(r"os\.environ\.get\(|os\.environ\[|os\.getenv\(|environ\.get\(\s*f?[\"']TOWERCO_")
NOT_YET: set[str] = set()  # files allowed to parse the environment by hand: none


def _code() -> list[Path]:
    return [p for folder in CODE for p in sorted((ROOT / folder).rglob("*.py"))]


def test_docs_table_is_generated_from_the_declarations():
    text = (ROOT / "docs/operations.md").read_text()
    begin = text.index("<!-- env-table:begin")
    start = text.index("\n", begin) + 1
    end = text.index("<!-- env-table:end -->")
    assert text[start:end] == config.markdown_table(), "regenerate with: python -m mesh.config"


def test_every_name_the_code_or_deployment_spells_is_declared():
    known = set(config.declared_names()) | set(config.dynamic_names())
    files = [*_code(), ROOT / "compose.yaml", ROOT / "compose.cluster.yaml", ROOT / "deploy/Dockerfile"]
    unknown = sorted({(str(p.relative_to(ROOT)), m) for p in files for m in NAME.findall(p.read_text())
                      if m not in known})
    assert not unknown, unknown


def test_names_are_declared_once():
    names = config.declared_names()
    assert len(names) == len(set(names))
    assert not set(names) & set(config.dynamic_names())


def test_only_mesh_config_reads_the_environment():
    # bench/ is left out: benchmarks read their own knobs (BENCH_*), not the platform's.
    bad = [str(p.relative_to(ROOT)) for p in _code() if p.parts[len(ROOT.parts)] != "bench"
           and READS.search(p.read_text())]
    assert sorted(set(bad) - {"mesh/config.py"} - NOT_YET) == []


def test_sections_parse_types_and_keep_defaults():
    env = {"TOWERCO_KPI_BATCH": "250", "TOWERCO_KPI_SETTLE_S": "0.25", "TOWERCO_KPI_PARTITIONS": "0-3",
           "TOWERCO_TELEMETRY_RETENTION_DAYS": "7", "TOWERCO_GATEWAY_CORS_ORIGINS": "a, b,,",
           "TOWERCO_GATEWAY_UNKNOWN_FIELDS": "IGNORE", "TOWERCO_INGESTOR_BATCH": " "}
    kpi = load(KpiCalculatorSettings, env)
    assert (kpi.batch, kpi.settle_s, kpi.partitions, kpi.recompute_days) == (250, 0.25, "0-3", 35.0)
    assert load(TelemetrySettings, env).retention_days == 7
    assert load(TelemetrySettings, {}).stream_max_age_s == 7 * 86400.0
    gw = load(GatewaySettings, env)
    assert gw.cors_origins == ("a", "b") and gw.unknown_fields == "ignore"
    assert load(IngestorSettings, env).batch == 200  # blank is unset
    assert load(OutboxSettings, {}).retention_s == 7 * 86400.0


@pytest.mark.parametrize(("section", "name", "raw", "message"), [
    (KpiCalculatorSettings, "TOWERCO_KPI_BATCH", "many", "must be an integer"),
    (OutboxSettings, "TOWERCO_OUTBOX_RETENTION_S", "soon", "must be a number"),
    (OutboxSettings, "TOWERCO_OUTBOX_RETENTION_S", "-1", "must be positive"),
    (TelemetrySettings, "TOWERCO_TELEMETRY_RETENTION_DAYS", "0", "must be at least 1"),
    (GatewaySettings, "TOWERCO_GATEWAY_UNKNOWN_FIELDS", "maybe", "must be reject or ignore"),
])
def test_bad_values_name_the_variable(section, name, raw, message):
    with pytest.raises(ValueError, match=f"{name} {message}"):
        load(section, {name: raw})


def test_settings_from_env_and_what_was_set():
    s = Settings.from_env({"TOWERCO_HOST": "0.0.0.0", "TOWERCO_SITES_PORT": "17001",
                           "TOWERCO_KPI_TARGET": "kpi:7003", "TOWERCO_JWT_ALGORITHMS": "HS256, RS256",
                           "TOWERCO_LOG_LEVEL": "DEBUG", "TOWERCO_INGESTOR_METRICS_PORT": "0"})
    assert s.host == "0.0.0.0" and s.port("sites") == 17001 and s.port("telemetry") == 7002
    assert s.target("sites") == "0.0.0.0:17001" and s.target("kpi") == "kpi:7003"
    assert s.jwt_algorithms == ("HS256", "RS256") and s.log_level == "debug"
    assert s.worker_metrics_ports["ingestor"] == 0 and s.worker_metrics_port("ingestor") is None
    assert s.is_set("TOWERCO_SITES_PORT") and s.is_set("TOWERCO_INGESTOR_METRICS_PORT")
    assert not s.is_set("TOWERCO_TELEMETRY_PORT") and not s.is_set("TOWERCO_JWT_SECRET")
    plain = Settings.from_env({})
    assert plain == Settings(targets={n: plain.target(n) for n in plain.ports})
    assert all(plain.target(n) == Settings().target(n) for n in plain.ports)
    with pytest.raises(ValueError, match="TOWERCO_SITES_PORT must be an integer"):
        Settings.from_env({"TOWERCO_SITES_PORT": "x"})


def test_gateway_declarations_agree_with_the_gateway_config(monkeypatch):
    """GatewayConfig.from_env reads GatewaySettings: its defaults are the declared ones, and a
    variable set in the environment arrives."""
    from gateway.config import GatewayConfig

    for name in config.declared_names():
        if name.startswith("TOWERCO_GATEWAY_"):
            monkeypatch.delenv(name, raising=False)
    got, declared = GatewayConfig.from_env(), load(GatewaySettings, {})
    assert (got.rate_per_s, got.rate_burst, got.max_body_bytes, got.default_timeout_s, got.max_timeout_s,
            got.cors_origins, got.ignore_unknown_fields, got.ready_cache_s, got.stream_queue, got.heartbeat_s,
            got.services, got.targets) == (
        declared.rate_limit, declared.rate_burst, declared.max_body_bytes, declared.timeout_s, declared.max_timeout_s,
        declared.cors_origins, declared.unknown_fields == "ignore", declared.ready_cache_s, declared.stream_queue,
        declared.heartbeat_s, declared.services or None, dict(t.split("=", 1) for t in declared.targets))
    monkeypatch.setenv("TOWERCO_GATEWAY_RATE_LIMIT", "7")
    monkeypatch.setenv("TOWERCO_GATEWAY_TARGETS", "sites=10.0.0.1:7001")
    monkeypatch.setenv("TOWERCO_GATEWAY_UNKNOWN_FIELDS", "IGNORE")
    got = GatewayConfig.from_env()
    assert got.rate_per_s == 7.0 and got.targets == {"sites": "10.0.0.1:7001"} and got.ignore_unknown_fields
