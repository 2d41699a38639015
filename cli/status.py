"""`towerco status`: a health table of the running stack (from <home>/stack.json).

Exit code: 0 when everything is healthy, 1 when something is not, 3 when no stack is running.
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

HELP = "health table of the running stack (exit 1 when something is unhealthy)"
NOT_RUNNING = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def _tcp(url: str) -> tuple[bool, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1.0):
            return True, "accepting connections"
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__


def rows(recorded: dict[str, Any]) -> list[dict[str, Any]]:
    from cli import state
    from cli.health import check

    out: list[dict[str, Any]] = []
    embedded = recorded.get("embedded") or {}
    nats_urls = [u for u in (recorded.get("nats_url") or "").split(",") if u]
    nodes = embedded.get("nats_cluster") or []
    infra: list[tuple[str, str | None, dict[str, Any]]] = [
        ("postgres", recorded.get("database_url"), embedded.get("postgres") or {})]
    if len(nats_urls) > 1:  # a cluster: one row per node
        infra += [(f"nats-{i + 1}", url, nodes[i] if i < len(nodes) else {}) for i, url in enumerate(nats_urls)]
    else:
        infra.append(("nats", nats_urls[0] if nats_urls else None, embedded.get("nats") or {}))
    for name, url, info in infra:
        ok, status = _tcp(url) if url else (False, "no url")
        out.append({"process": name, "endpoint": url.split("@")[-1] if url else "-", "healthy": ok,
                    "status": status, "pid": info.get("pid"), "restarts": None})
    for name, info in (recorded.get("processes") or {}).items():
        pid = info.get("pid")
        running = state.alive(pid, info.get("pid_stamp"))
        if running:
            ok, status = check(info.get("health"), info.get("endpoint"), 2.0)
        else:
            ok, status = False, info.get("status") if info.get("status") == "restarting" else "not running"
        out.append({"process": name, "endpoint": info.get("endpoint") or "-", "healthy": ok, "status": status,
                    "pid": pid, "restarts": info.get("restarts", 0)})
    return out


def run(args: argparse.Namespace) -> int:
    from cli import state
    from mesh.config import get_settings

    root = state.home(get_settings())
    recorded = state.read_stack(root)
    supervisor = state.supervisor_pid(root)
    if not recorded or not supervisor or recorded.get("state") == "stopped":
        orphaned = bool(recorded) and recorded.get("state") != "stopped"
        hint = ("its supervisor is gone; `towerco down` stops what it left running" if orphaned
                else "start it with `towerco up -d`")
        print(json.dumps({"state": "not running", "home": str(root), "orphaned": orphaned}) if args.json
              else f"not running (home {root}); {hint}")
        return NOT_RUNNING
    table = rows(recorded)
    if args.json:
        print(json.dumps({"state": recorded.get("state"), "supervisor_pid": supervisor, "processes": table}))
    else:
        print(f"stack {recorded.get('state')} (supervisor pid {supervisor}, home {root})")
        header = f"{'PROCESS':<18}{'ENDPOINT':<34}{'HEALTH':<10}{'PID':<9}{'RESTARTS':<9}STATUS"
        print(header)
        for row in table:
            print(f"{row['process']:<18}{row['endpoint']:<34}{'ok' if row['healthy'] else 'FAIL':<10}"
                  f"{row['pid'] or '-'!s:<9}{'' if row['restarts'] is None else row['restarts']!s:<9}{row['status']}")
    healthy = recorded.get("state") == "ready" and all(r["healthy"] for r in table)
    return 0 if healthy else 1
