"""The registry of process types: what `towerco up` launches, `towerco serve` runs and
compose.yaml deploys. Each process is started as `python -m <module>`; the launcher never imports
service code, it only checks that the module file exists.

To add a process type, append a Process to PROCESSES (a gRPC service: port = its settings key,
health = "grpc"; the gateway: port = "gateway", health = "http"; a worker: port = None unless it
serves something, health = "metrics" when it serves Prometheus on its settings.worker_metrics_port,
whose event-loop heartbeat is its health). `stage` orders start-up: stage 0 runs before the demo fleet is seeded,
stage 1 after it (the telemetry simulator needs sites to exist). `compose=False` keeps a
developer-only process (the simulator) out of the container deployment.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mesh.config import Settings

Kind = Literal["service", "worker", "gateway", "tool"]
Health = Literal["grpc", "http", "metrics"]


@dataclass(frozen=True)
class Process:
    name: str
    kind: Kind
    module: str
    port: str | None = None  # settings key: a DEFAULT_PORTS name, or "gateway"
    health: Health | None = None
    stage: int = 0
    compose: bool = True
    args: tuple[str, ...] = ()

    def listen_port(self, settings: Settings) -> int | None:
        if self.port is None:
            return None
        if self.port == "gateway":
            return settings.gateway_port
        return settings.port(self.port)

    def metrics_port(self, settings: Settings) -> int | None:
        """gRPC processes serve Prometheus on their port + 2000, workers on their own port."""
        if self.health == "grpc" and self.port and self.port != "gateway":
            return settings.metrics_port(self.port)
        if self.health == "metrics":
            return settings.worker_metrics_port(self.name)
        return None

    def endpoint(self, settings: Settings) -> str | None:
        if self.health == "metrics":
            port = self.metrics_port(settings)
            return None if port is None else f"http://{settings.host}:{port}/metrics"
        port = self.listen_port(settings)
        if port is None:
            return None
        if self.health == "http":
            return f"http://{settings.host}:{port}"
        if self.port and self.port != "gateway":
            return settings.target(self.port)
        return f"{settings.host}:{port}"

    def exists(self) -> bool:
        """Whether the module's file is in the tree (found without importing it)."""
        return module_exists(self.module)

    def command(self, python: str, **values: object) -> list[str]:
        """`python -m <module> <args>`, with "{name}" placeholders in args filled from values."""
        return [python, "-m", self.module, *(a.format(**values) if values else a for a in self.args)]


PROCESSES: tuple[Process, ...] = (
    Process("sites", "service", "services.sites.server", port="sites", health="grpc"),
    Process("gateway", "gateway", "gateway.server", port="gateway", health="http"),
    Process("telemetry", "service", "services.telemetry.server", port="telemetry", health="grpc"),
    Process("ingestor", "worker", "workers.ingestor.worker", health="metrics"),
    Process("kpi", "service", "services.kpi.server", port="kpi", health="grpc"),
    Process("kpi_calculator", "worker", "workers.kpi_calculator.worker", health="metrics"),
    Process("aiops", "service", "services.aiops.server", port="aiops", health="grpc"),
    Process("aiops_engine", "worker", "workers.aiops_engine.worker", health="metrics"),
    Process("files", "service", "services.files.server", port="files", health="grpc"),
    Process("noc", "service", "services.noc.server", port="noc", health="grpc"),
    Process("bi", "service", "services.bi.server", port="bi", health="grpc"),
    Process("bi_engine", "worker", "workers.bi_engine.worker", health="metrics"),
    Process("notifications", "service", "services.notifications.server", port="notifications", health="grpc"),
    Process("notifier", "worker", "workers.notifier.worker", health="metrics"),
    # Developer-only: the local SMTP sink and webhook receiver (workers/notifier/sink.py) the seeded
    # demo channels deliver to; `towerco notifications tail` prints what arrives.
    Process("notify_sink", "tool", "workers.notifier.sink", compose=False),
    # Developer-only: the telemetry simulator. `towerco up` starts it after the seed when
    # cli/simulate.py exists (`towerco up --no-simulate` skips it); it is run as
    # `python -m cli.simulate <args>` with the stack's environment and must run until SIGTERM.
    # In args, "{sites}" becomes the demo fleet size (`towerco up --sites N`, default 300), e.g.
    # args=("--sites", "{sites}"). `cli.main.standalone(module)` gives the module a __main__.
    Process("simulator", "tool", "cli.simulate", stage=1, compose=False,
            # demo fault rates (x4 the defaults): across the 300 demo sites a fault starts about
            # every minute or two, so a new user sees incidents arrive within minutes
            args=("--sites", "{sites}", "--interval", "15", "--faults", "x4", "--quiet")),
)

BY_NAME: dict[str, Process] = {p.name: p for p in PROCESSES}


def module_exists(module: str) -> bool:
    """Find `a.b.c` as a file under the top-level package's folder, importing nothing but the
    top-level package itself (whose __init__ is empty by convention)."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return spec is not None and not rest
    for base in spec.submodule_search_locations:
        path = Path(base, *rest.split(".")) if rest else Path(base)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or (path / "__main__.py").is_file():
            return True
    return False


def available(*, include_tools: bool = True) -> list[Process]:
    """Every registered process whose module exists today, in registry order."""
    return [p for p in PROCESSES if p.exists() and (include_tools or p.kind != "tool")]


def deployable() -> list[Process]:
    """Process types that compose.yaml must run (one container each)."""
    return [p for p in PROCESSES if p.compose]
