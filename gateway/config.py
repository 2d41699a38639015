"""Gateway settings from the environment (on top of mesh.config's Settings).

  TOWERCO_GATEWAY_SERVICES        comma list of services to expose (full or short names, e.g.
                                  "sites,telemetry"); default: every towerco service except the
                                  test-only towerco.testing ones
  TOWERCO_GATEWAY_TARGETS         extra upstreams, "short=host:port,..." (wins over settings)
  TOWERCO_GATEWAY_RATE_LIMIT      requests per second per principal (50; 0 turns limiting off)
  TOWERCO_GATEWAY_RATE_BURST      bucket size (100)
  TOWERCO_GATEWAY_MAX_BODY_BYTES  largest request body (1048576)
  TOWERCO_GATEWAY_TIMEOUT_S       default deadline when the client sends none (10)
  TOWERCO_GATEWAY_MAX_TIMEOUT_S   largest deadline a client may ask for (300)
  TOWERCO_GATEWAY_CORS_ORIGINS    comma list of allowed browser origins (none)
  TOWERCO_GATEWAY_UNKNOWN_FIELDS  "reject" (default: 400) or "ignore"
  TOWERCO_GATEWAY_READY_CACHE_S   how long /ready reuses an upstream health answer (2)
  TOWERCO_GATEWAY_STREAM_QUEUE    messages buffered per streaming client before it is cut (256)
  TOWERCO_GATEWAY_HEARTBEAT_S     SSE/WebSocket heartbeat interval (15)
  TOWERCO_GATEWAY_WORKERS         worker processes for `python -m gateway` (1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _list(name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


@dataclass(frozen=True)
class GatewayConfig:
    services: tuple[str, ...] | None = None
    targets: dict[str, str] = field(default_factory=dict)
    rate_per_s: float = 50.0
    rate_burst: float = 100.0
    max_body_bytes: int = 1024 * 1024
    default_timeout_s: float = 10.0
    max_timeout_s: float = 300.0
    cors_origins: tuple[str, ...] = ()
    ignore_unknown_fields: bool = False
    ready_cache_s: float = 2.0
    stream_queue: int = 256
    heartbeat_s: float = 15.0
    breaker: bool = True

    @classmethod
    def from_env(cls) -> GatewayConfig:
        targets = {}
        for item in _list("TOWERCO_GATEWAY_TARGETS"):
            name, _, target = item.partition("=")
            if not target:
                raise ValueError(f"TOWERCO_GATEWAY_TARGETS: expected short=host:port, got {item!r}")
            targets[name.strip()] = target.strip()
        unknown = os.environ.get("TOWERCO_GATEWAY_UNKNOWN_FIELDS", "reject").lower()
        if unknown not in ("reject", "ignore"):
            raise ValueError("TOWERCO_GATEWAY_UNKNOWN_FIELDS must be reject or ignore")
        return cls(
            services=_list("TOWERCO_GATEWAY_SERVICES") or None,
            targets=targets,
            rate_per_s=_float("TOWERCO_GATEWAY_RATE_LIMIT", 50.0),
            rate_burst=_float("TOWERCO_GATEWAY_RATE_BURST", 100.0),
            max_body_bytes=int(_float("TOWERCO_GATEWAY_MAX_BODY_BYTES", 1024 * 1024)),
            default_timeout_s=_float("TOWERCO_GATEWAY_TIMEOUT_S", 10.0),
            max_timeout_s=_float("TOWERCO_GATEWAY_MAX_TIMEOUT_S", 300.0),
            cors_origins=_list("TOWERCO_GATEWAY_CORS_ORIGINS"),
            ignore_unknown_fields=unknown == "ignore",
            ready_cache_s=_float("TOWERCO_GATEWAY_READY_CACHE_S", 2.0),
            stream_queue=int(_float("TOWERCO_GATEWAY_STREAM_QUEUE", 256)),
            heartbeat_s=_float("TOWERCO_GATEWAY_HEARTBEAT_S", 15.0),
        )
