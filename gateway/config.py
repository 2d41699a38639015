"""The gateway's settings: the TOWERCO_GATEWAY_* variables declared in mesh.config.GatewaySettings
(listed in docs/operations.md), as the GatewayConfig the app is built from; tests build one
directly with keyword overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh import config as mesh_config


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
    stream_resume_s: float = 30.0
    breaker: bool = True

    @classmethod
    def from_env(cls) -> GatewayConfig:
        """From mesh.config.GatewaySettings, where every TOWERCO_GATEWAY_* variable is declared."""
        env = mesh_config.load(mesh_config.GatewaySettings)
        targets = {}
        for item in env.targets:
            name, _, target = item.partition("=")
            if not target:
                raise ValueError(f"TOWERCO_GATEWAY_TARGETS: expected short=host:port, got {item!r}")
            targets[name.strip()] = target.strip()
        return cls(
            services=env.services or None,
            targets=targets,
            rate_per_s=env.rate_limit,
            rate_burst=env.rate_burst,
            max_body_bytes=env.max_body_bytes,
            default_timeout_s=env.timeout_s,
            max_timeout_s=env.max_timeout_s,
            cors_origins=env.cors_origins,
            ignore_unknown_fields=env.unknown_fields == "ignore",
            ready_cache_s=env.ready_cache_s,
            stream_queue=env.stream_queue,
            heartbeat_s=env.heartbeat_s,
            stream_resume_s=env.stream_resume_s,
        )
