"""Files of the embedded stack under the home folder (TOWERCO_HOME, default .towerco/):

  pg/ nats/            PostgreSQL and JetStream data
  pg.log nats.log      their server logs
  logs/<process>.log   stdout/stderr of every child process, and logs/supervisor.log for `up -d`
  ports.json           the free ports picked for PostgreSQL and NATS the first time (reused later)
  supervisor.pid       pid of the running supervisor
  stack.json           endpoints, pids, restarts and dev tokens of the running stack
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import psutil

from mesh.config import Settings, get_settings


def home(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).home.resolve()


def stack_path(root: Path) -> Path:
    return root / "stack.json"


def pid_path(root: Path) -> Path:
    return root / "supervisor.pid"


def logs_dir(root: Path) -> Path:
    return root / "logs"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_stack(root: Path) -> dict[str, Any] | None:
    return read_json(stack_path(root))


def proc_stamp(pid: int) -> float | None:
    """The start time of a live process (to tell it apart from a later process given the same pid)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def alive(pid: int | None, stamp: float | None = None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return stamp is None or abs(proc.create_time() - stamp) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def supervisor_pid(root: Path) -> int | None:
    """The pid of a live supervisor of this home, or None."""
    try:
        pid_text, _, stamp_text = pid_path(root).read_text().strip().partition(" ")
        pid = int(pid_text)
        stamp = float(stamp_text) if stamp_text else None
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid, stamp) else None


def write_pid(root: Path, pid: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pid_path(root).write_text(f"{pid} {proc_stamp(pid) or ''}\n")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"
