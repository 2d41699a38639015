"""`towerco up`: the whole platform on this machine.

Foreground (default): runs the supervisor in this process and prints the endpoints, dev tokens
and example commands; Ctrl-C stops everything. `-d`: starts the supervisor in the background
(a new session that outlives this command, pid in <home>/supervisor.pid, output in
<home>/logs/supervisor.log), waits until every health check passes, prints the same summary and
returns; <home>/stack.json then describes the running stack.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HELP = "start the embedded stack (PostgreSQL, NATS, every process), migrate and seed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--detach", action="store_true", help="run in the background; return once healthy")
    parser.add_argument("--no-seed", action="store_true", help="do not create the demo fleet")
    parser.add_argument("--sites", type=int, default=300, help="demo fleet size (default 300)")
    parser.add_argument("--no-simulate", action="store_true", help="do not start the telemetry simulator")
    parser.add_argument("--cluster", action="store_true",
                        help="a 3-node NATS JetStream cluster (streams at replicas 3) and two replicas of "
                             "each worker (partitions shared by leases)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for health checks (default 120)")
    parser.add_argument("--only", type=_names, default=(), metavar="A,B",
                        help="start only these processes (comma list of registry names)")
    parser.add_argument("--skip", type=_names, default=(), metavar="A,B", help="do not start these processes")
    parser.add_argument("--foreground-supervisor", action="store_true", help=argparse.SUPPRESS)


def _names(text: str) -> tuple[str, ...]:
    from cli.processes import BY_NAME

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown process {', '.join(unknown) or '(none)'}; choose from {', '.join(sorted(BY_NAME))}")
    return names


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--sites", str(args.sites), "--timeout", str(args.timeout)]
    if args.no_seed:
        out.append("--no-seed")
    if args.no_simulate:
        out.append("--no-simulate")
    if args.cluster:
        out.append("--cluster")
    if args.only:
        out += ["--only", ",".join(args.only)]
    if args.skip:
        out += ["--skip", ",".join(args.skip)]
    return out


def run(args: argparse.Namespace) -> int:
    from cli import state
    from cli.errors import CliError
    from mesh.config import get_settings

    settings = get_settings()
    root = state.home(settings)
    running = state.supervisor_pid(root)
    if running and not (args.foreground_supervisor and running == os.getpid()):
        raise CliError(f"already running (supervisor pid {running}, home {root}); "
                       "see `towerco status`, stop with `towerco down`")
    if args.sites < 0:
        raise CliError("--sites must be >= 0", code=2)
    if args.detach:
        return _detach(args, root)
    return _foreground(args, settings, banner=not args.foreground_supervisor)


def _foreground(args: argparse.Namespace, settings: Any, *, banner: bool) -> int:
    import asyncio

    from cli.launcher import Options, Supervisor

    options = Options(seed=not args.no_seed, sites=args.sites, simulate=not args.no_simulate,
                      startup_timeout=args.timeout, only=tuple(args.only), skip=tuple(args.skip),
                      cluster=args.cluster)

    def announce(recorded: dict[str, Any]) -> None:
        if banner:
            print(render_summary(recorded, foreground=True), flush=True)

    return asyncio.run(Supervisor(settings, options, on_ready=announce).run())


def _detach(args: argparse.Namespace, root: Path) -> int:
    from cli import state
    from cli.errors import CliError

    logs = state.logs_dir(root)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "supervisor.log"
    cmd = [sys.executable, "-m", "cli.main", "up", "--foreground-supervisor", *_forwarded(args)]
    with open(log_path, "ab") as log:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=os.getcwd())
    deadline = time.monotonic() + args.timeout + 60  # infrastructure + migrations + seed on top
    try:
        return _await_ready(child, root, log_path, deadline)
    except KeyboardInterrupt:
        _stop_child(child)
        raise CliError("interrupted: the background stack was stopped", code=130) from None


def _stop_child(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(10)


def _await_ready(child: subprocess.Popen, root: Path, log_path: Path, deadline: float) -> int:
    from cli import state
    from cli.errors import CliError

    while True:
        code = child.poll()
        recorded = state.read_stack(root)
        if (code is None and recorded and recorded.get("supervisor_pid") == child.pid
                and recorded.get("state") == "ready"):
            print(render_summary(recorded, foreground=False))
            return 0
        if code is not None:
            raise CliError(f"the stack did not start (supervisor exit {code}); see {log_path}:\n"
                           + state.tail(log_path))
        if time.monotonic() > deadline:
            _stop_child(child)
            raise CliError(f"the stack was not ready in time; see {log_path}:\n" + state.tail(log_path))
        time.sleep(0.2)


def render_summary(recorded: dict[str, Any], *, foreground: bool) -> str:
    """Endpoints, dev tokens and example commands of a running stack (from stack.json)."""
    lines = [f"Towerco AIOps is up  (home {recorded.get('home')})", ""]
    lines.append(f"  {'PostgreSQL':<16}{recorded.get('database_url')}")
    nats_urls = (recorded.get("nats_url") or "").split(",")
    lines.append(f"  {'NATS':<16}{nats_urls[0]}")
    for more in nats_urls[1:]:
        lines.append(f"  {'':<16}{more}")
    if len(nats_urls) > 1:
        lines.append(f"  {'':<16}(a {len(nats_urls)}-node JetStream cluster; streams at replicas {len(nats_urls)})")
    grpc_target = None
    for name, info in (recorded.get("processes") or {}).items():
        endpoint = info.get("endpoint") or "-"
        extra = f"   metrics http://{endpoint.rsplit(':', 1)[0]}:{info['metrics_port']}/metrics" \
            if info.get("metrics_port") and info.get("health") == "grpc" else ""
        kind = info.get("health") or info.get("kind")
        lines.append(f"  {name:<18}{kind:<8}{endpoint}{extra}")
        if name == "sites":
            grpc_target = endpoint
    tokens = recorded.get("tokens") or {}
    lines += ["", "Dev tokens (valid 7 days; `towerco token --help` mints others):"]
    for role, token in tokens.items():
        lines.append(f"  {role} ({_tenant_of(token)}): {token}")
    lines += ["", "Try:", "  export TOKEN=$(towerco token)    # the admin token above"]
    if grpc_target:
        lines.append(f"  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {grpc_target} list")
        lines.append(f"  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"site_id\": \"NBO-0001\"}}' "
                     f"{grpc_target} towerco.sites.v1.SitesService/GetSite")
    gateway = recorded.get("gateway_url")
    if gateway:
        lines.append(f"  curl -H \"Authorization: Bearer $TOKEN\" {gateway}/api/v1/sites/NBO-0001")
        lines.append(f"  open {gateway}/   # the NOC web console: sign in with a token above")
        lines.append(f"  open {gateway}/api/v1/docs   # Swagger UI: Authorize with the admin token")
    seed = recorded.get("seed")
    if seed and not seed.get("ok"):
        lines.append(f"  (demo seed failed: {seed.get('error')}; re-run `towerco seed`)")
    lines.append("")
    lines.append("Ctrl-C stops everything." if foreground else
                 "`towerco status` shows health; `towerco down` stops everything.")
    return "\n".join(lines)


def _tenant_of(token: str) -> str:
    import jwt

    try:
        tenant = jwt.decode(token, options={"verify_signature": False}).get("tenant", "?")
    except jwt.PyJWTError:
        return "?"
    return "all tenants" if tenant == "*" else f"tenant {tenant}"
