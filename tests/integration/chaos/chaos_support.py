"""Helpers of the chaos suite: the platform's processes on a 3-node NATS cluster (each its own
`python -m ...` process, so they can be killed with SIGKILL or paused with SIGSTOP), a sender
with ground truth, a gateway prober, and the fault report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from towerco.telemetry.v1 import telemetry_pb2 as tpb
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh.embedded import free_port

ROOT = Path(__file__).resolve().parents[3]
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def service_port() -> int:
    """A free port whose metrics port (+2000) is free too."""
    while True:
        port = free_port()
        if port + 2000 < 65536 and _port_free(port + 2000):
            return port


class Proc:
    """One platform process (`python -m module`), restartable with the same environment."""

    def __init__(self, name: str, module: str, env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.p: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.p = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill9(self) -> None:
        assert self.p is not None
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.p is None or self.p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.p.pid, signal.SIGCONT)
            self.p.terminate()
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def pg_action(pg, action: str) -> None:
    """`EmbeddedPostgres(...).<action>` for the session's PostgreSQL, run in a fresh
    single-threaded Python process: pg_ctl forked straight from this busy multi-threaded test
    process (gRPC, NATS threads) has been seen to die before it ran."""
    code = ("from pathlib import Path; from mesh.embedded import EmbeddedPostgres; "
            f"EmbeddedPostgres(Path({str(pg.data_dir)!r}), port={pg.port}, fast={pg.fast!r}).{action}")
    for attempt in range(3):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and (action != "start()" or pg.running()):
            return
        if attempt == 2:
            raise RuntimeError(f"pg {action} failed: {done.stdout}{done.stderr}")


def sample_value(site_index: int, step: int, metric: str, dips: dict[tuple[int, int], bool]) -> float:
    """The value a site sends for a metric at a step (the ground truth). dc_bus_v dips to 40 V
    (below the 43 V band) on the (site, step) pairs of `dips`; otherwise it stays in the band."""
    if metric == "dc_bus_v":
        return 40.0 if (site_index, step) in dips else 50.0 + ((site_index + step) % 5) * 0.25
    if metric == "mains_present":
        return 1.0
    return 10.0 + ((site_index * 3 + step) % 7)  # load_a


METRICS = ("dc_bus_v", "mains_present", "load_a")


@dataclass
class Sender:
    """Sends one step of every site every `period_s` (sample time advances `step_s` per step, from
    `t0`), through the telemetry replicas in turn; a batch that fails with a retryable code is sent
    again, with the same batch id, to the next replica until acknowledged. Counts what was
    acknowledged (samples and the sum of their values)."""

    targets: list[str]
    token: str
    sites: list[str]
    t0: float
    dips: dict[tuple[int, int], bool]
    step_s: float = 15.0
    period_s: float = 0.2
    acked: int = 0
    total: float = 0.0
    steps: int = 0
    retries: int = 0
    last_ack: float = 0.0
    ack_times: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    batch_prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def request(self, step: int) -> tpb.IngestRequest:
        req = tpb.IngestRequest(batch_id=f"chaos-{self.batch_prefix}-{step}")
        t = self.t0 + step * self.step_s
        for i, sid in enumerate(self.sites):
            for metric in METRICS:
                s = req.samples.add(site_id=sid, metric=metric, value=sample_value(i, step, metric, self.dips))
                s.time.FromSeconds(int(t))
        return req

    async def run(self) -> None:
        channels = [grpc.aio.insecure_channel(t) for t in self.targets]
        stubs = [telemetry_pb2_grpc.TelemetryServiceStub(c) for c in channels]
        md = (("authorization", f"Bearer {self.token}"),)
        turn = 0
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                req = self.request(self.steps)
                while True:
                    stub = stubs[turn % len(stubs)]
                    turn += 1
                    try:
                        reply = await stub.Ingest(req, metadata=md, timeout=5)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise
                        self.retries += 1
                        self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1
                        await asyncio.sleep(0.1)
                assert reply.rejected == 0, reply
                self.acked += reply.accepted
                self.total += sum(s.value for s in req.samples)
                self.steps += 1
                self.last_ack = time.monotonic()
                self.ack_times.append(self.last_ack)
                await asyncio.sleep(max(0.0, self.period_s - (time.monotonic() - started)))
        finally:
            for c in channels:
                await c.close()

    def acks_after(self, t: float) -> float | None:
        """Seconds from `t` to the first acknowledgement after it."""
        for a in self.ack_times:
            if a > t:
                return a - t
        return None


@dataclass
class Probe:
    """A gateway request every `period_s` during the faults; records (time, status, seconds)."""

    url: str
    token: str
    period_s: float = 0.5
    results: list[tuple[float, int, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    r = await http.get(self.url, headers={"authorization": f"Bearer {self.token}"})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all (refused, timed out)
                self.results.append((t, status, time.monotonic() - t))
                await asyncio.sleep(self.period_s)

    def between(self, a: float, b: float) -> list[tuple[float, int, float]]:
        return [r for r in self.results if a <= r[0] < b]


@dataclass
class FaultRecord:
    fault: str
    at_s: float
    recovered_s: float | None
    note: str = ""
    gateway: str = ""


def report_table(rows: list[FaultRecord], sender: Sender, extra: list[tuple[str, str]]) -> str:
    head = f"{'fault':<46}{'at s':>7}{'recovered in s':>16}  {'gateway during (status x n)':<28} note"
    lines = ["", "chaos fault report", head, "-" * len(head)]
    for r in rows:
        rec = f"{r.recovered_s:.1f}" if r.recovered_s is not None else "-"
        lines.append(f"{r.fault:<46}{r.at_s:>7.1f}{rec:>16}  {r.gateway:<28} {r.note}")
    lines.append("-" * len(head))
    lines.append(f"sender: {sender.steps} batches, {sender.acked} samples acknowledged, {sender.retries} retries "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(sender.errors.items())) or 'none'})")
    lines += [f"{k}: {v}" for k, v in extra]
    return "\n".join(lines)


async def until(pred, *, within: float, every: float = 0.2, what: str = "condition"):
    """Poll `pred` (sync or async) until it returns a truthy value; that value, or AssertionError."""
    deadline = time.monotonic() + within
    last = ""
    while True:
        try:
            got = pred()
            if asyncio.iscoroutine(got):
                got = await got
        except Exception as exc:  # noqa: BLE001 - e.g. the database restarting: ask again
            got, last = None, f"{type(exc).__name__}: {exc}"
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within:.0f}s" + (f" (last error {last})" if last else ""))
        await asyncio.sleep(every)


@dataclass
class IncidentFeed:
    """The gateway's WebSocket incident feed (WatchIncidents), held open during the faults: on any
    close it reconnects with afterSequence = the last sequence received (the feed's resume), so
    what it received is every change once, across a NOC kill."""

    url: str
    token: str
    query: str = ""
    received: list[dict] = field(default_factory=list)
    connects: int = 0
    closes: list[int] = field(default_factory=list)
    cursor: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        import json

        import websockets

        delay = 0.2
        while not self.stop.is_set():
            q = f"afterSequence={self.cursor}" + (f"&{self.query}" if self.query else "")
            try:
                async with websockets.connect(f"{self.url}?{q}", open_timeout=10, additional_headers={
                        "Authorization": f"Bearer {self.token}"}) as ws:
                    self.connects += 1
                    delay = 0.2
                    async for raw in ws:
                        frame = json.loads(raw)
                        if "result" in frame:
                            self.received.append(frame["result"])
                            self.cursor = int(frame["result"]["sequence"])
                    self.closes.append(ws.close_code or 1000)
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                self.closes.append(code)
                if code in (4400, 4401, 4403):
                    raise AssertionError(f"the incident feed was refused ({code})") from exc
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                self.closes.append(-1)  # the gateway unreachable: try again
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def opened(self) -> dict[str, int]:
        """incident id -> how many times its opening arrived."""
        got: dict[str, int] = {}
        for m in self.received:
            if m.get("change") == "INCIDENT_CHANGE_OPENED":
                got[m["incident"]["id"]] = got.get(m["incident"]["id"], 0) + 1
        return got
