"""`towerco gateway [--workers N]` and `python -m gateway`: run the REST/WebSocket edge.

Every worker process builds the same routes from the descriptors and keeps its own upstream
channels, breakers and rate-limit buckets (the gateway is stateless).
"""

from __future__ import annotations

import argparse

from mesh import config as mesh_config

HELP = "run the REST/WebSocket gateway (uvicorn, N worker processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mesh.config import get_settings

    settings = get_settings()
    parser.add_argument("--host", default=settings.host, help="bind address (TOWERCO_HOST)")
    parser.add_argument("--port", type=int, default=settings.gateway_port, help="HTTP port (TOWERCO_GATEWAY_PORT, 8080)")
    parser.add_argument(
        "--workers",
        type=int,
        default=mesh_config.load(mesh_config.GatewaySettings).workers,
        help="worker processes (TOWERCO_GATEWAY_WORKERS, 1)",
    )
    parser.add_argument("--log-level", default=settings.log_level, help="uvicorn log level")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.config import GatewayConfig

    GatewayConfig.from_env()  # refuse a bad configuration before forking workers
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    common = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,  # query strings may carry access_token; the gateway logs what it needs
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "timeout_graceful_shutdown": 10,
        "server_header": False,
    }
    if args.workers == 1:
        create_app()  # fail fast on a broken descriptor pool or target map
        uvicorn.run("gateway.app:create_app", factory=True, **common)
    else:
        uvicorn.run("gateway.app:create_app", factory=True, workers=args.workers, **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
