"""`towerco down`: stop the stack of this home (idempotent).

Signals the supervisor, which stops every child, NATS and PostgreSQL; waits for it. When the
supervisor is gone but left processes behind (it was killed), stops what stack.json recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time

HELP = "stop the stack started by `towerco up` (safe to run twice)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")


def run(args: argparse.Namespace) -> int:
    from cli import state
    from cli.launcher import stop_postmaster, stop_recorded
    from mesh.config import get_settings

    root = state.home(get_settings())
    pid = state.supervisor_pid(root)
    if pid:
        print(f"stopping supervisor pid {pid} ...", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and state.alive(pid):
            time.sleep(0.1)
        if state.alive(pid):
            print(f"supervisor did not stop in {args.timeout:.0f}s; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    recorded = state.read_stack(root)
    leftovers: list[str] = []
    if recorded and recorded.get("state") != "stopped":
        leftovers = stop_recorded(recorded)
        recorded["state"] = "stopped"
        state.write_json(state.stack_path(root), recorded)
    if stop_postmaster(root / "pg"):  # an embedded PostgreSQL that outlived its supervisor
        leftovers.append("postgres")
    with contextlib.suppress(FileNotFoundError):
        state.pid_path(root).unlink()
    if leftovers:
        print(f"stopped leftover process(es): {', '.join(leftovers)}")
    print("stopped" if pid or leftovers else f"nothing running (home {root})")
    return 0
