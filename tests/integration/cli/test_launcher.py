"""The supervisor in-process, with a real child that crashes: start-up fails with a clear message."""

from __future__ import annotations

import json

from cli import launcher, state
from cli.launcher import Options, Supervisor
from cli.processes import Process
from mesh.config import Settings


async def test_a_child_that_keeps_crashing_fails_the_start_up_and_names_its_log(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "BACKOFF_S", (0.05,))
    settings = Settings(database_url=stack.database_url, nats_url=stack.nats_url, home=tmp_path / "home")
    # `python -m json.tool` reading an empty stdin exits 1 with "Expecting value": a real crash.
    crasher = Process("crasher", "worker", "json.tool")
    lines: list[str] = []
    supervisor = Supervisor(settings, Options(seed=False, startup_timeout=30), out=lines.append,
                            processes=[crasher])
    assert await supervisor.run() == 1
    text = "\n".join(lines)
    assert "crasher: pid" in text and "exited with code 1" in text and "restart #1" in text
    assert "start-up failed: crasher keeps exiting during start-up" in text
    assert "Expecting value" in text  # the tail of logs/crasher.log
    assert str(tmp_path / "home" / "logs" / "crasher.log") in text
    recorded = json.loads((tmp_path / "home" / "stack.json").read_text())
    assert recorded["state"] == "stopped" and recorded["processes"]["crasher"]["restarts"] >= 3
    assert state.supervisor_pid(tmp_path / "home") is None


async def test_a_worker_without_health_check_is_ready_once_it_stays_up(stack, tmp_path):
    settings = Settings(database_url=stack.database_url, nats_url=stack.nats_url, home=tmp_path / "home")
    # `python -m http.server` on a free port runs until SIGTERM: a long-lived child with no health.
    from mesh.embedded import free_port

    sleeper = Process("sleeper", "worker", "http.server", args=(str(free_port()), "--bind", "127.0.0.1"))
    lines: list[str] = []
    ready: list[dict] = []

    def on_ready(snapshot: dict) -> None:
        ready.append(snapshot)
        supervisor.stopping.set()

    supervisor = Supervisor(settings, Options(seed=False, startup_timeout=30), out=lines.append,
                            on_ready=on_ready, processes=[sleeper])
    assert await supervisor.run() == 0, lines
    assert ready and ready[0]["state"] == "ready" and ready[0]["processes"]["sleeper"]["status"] == "running"
    pid = ready[0]["processes"]["sleeper"]["pid"]
    assert not state.alive(pid)
    assert any("sleeper: stopped" in line for line in lines)
