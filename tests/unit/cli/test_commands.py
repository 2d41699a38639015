"""The `towerco` command line: parsing, tokens, serve/health errors, and the launcher's floor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main as cli_main
from cli.main import build_parser, main
from cli.processes import BY_NAME, PROCESSES, module_exists
from cli.token import parse_ttl
from mesh.auth import AuthError, verify_token
from mesh.config import reset_settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("TOWERCO_HOME", str(tmp_path / "home"))
    reset_settings()
    yield
    reset_settings()


def test_token_defaults_to_an_admin_staff_token_that_verifies(capsys) -> None:
    assert main(["token"]) == 0
    identity = verify_token(capsys.readouterr().out.strip())
    assert identity.tenant == "*" and identity.roles == frozenset({"admin"}) and identity.is_staff


def test_token_for_a_tenant_viewer_with_subject_and_ttl(capsys) -> None:
    assert main(["token", "--tenant", "airtel", "--role", "tenant_viewer",
                 "--sub", "alice", "--ttl", "30m"]) == 0
    token = capsys.readouterr().out.strip()
    identity = verify_token(token)
    assert identity.subject == "alice" and identity.tenant == "airtel"
    assert identity.roles == frozenset({"tenant_viewer"})
    assert not identity.is_staff and identity.has_role("tenant_viewer")
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1800


def test_token_signed_with_another_secret_is_refused(capsys, monkeypatch) -> None:
    monkeypatch.setenv("TOWERCO_JWT_SECRET", "another-secret-that-is-long-enough-for-hs256")
    reset_settings()
    assert main(["token"]) == 0
    token = capsys.readouterr().out.strip()
    monkeypatch.delenv("TOWERCO_JWT_SECRET")
    reset_settings()
    with pytest.raises(AuthError):
        verify_token(token)


@pytest.mark.parametrize("argv", [
    ["token", "--role", "root"],
    ["token", "--tenant", "Not A Tenant"],
    ["token", "--ttl", "soon"],
    ["token", "--ttl", "0"],
    ["token", "--role", "tenant_viewer"],  # a tenant role for every tenant: the security hole of #9
    ["token", "--role", "tenant_viewer", "--tenant", "*"],
    ["token", "--role", "viewer", "--tenant", "airtel"],  # a staff role held for one tenant
    ["token", "--role", "tenant_viewer", "--role", "admin", "--tenant", "airtel"],
    ["serve", "no-such-process"],
    ["health", "no-such-process"],
    ["bogus"],
    [],
])
def test_bad_arguments_exit_2_with_a_message(argv, capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "towerco" in err and err.strip()


@pytest.mark.parametrize(("text", "seconds"), [("3600", 3600), ("90s", 90), ("30m", 1800), ("24h", 86400),
                                               ("7d", 604800), (" 2H ", 7200)])
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


def test_health_of_a_process_that_is_not_listening_fails(capsys) -> None:
    from mesh.embedded import free_port

    port = free_port()
    assert main(["health", "sites", "--target", f"127.0.0.1:{port}", "--timeout", "0.5"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_status_and_down_without_a_stack(capsys) -> None:
    assert main(["status"]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["down"]) == 0
    assert main(["down"]) == 0
    assert "nothing running" in capsys.readouterr().out


def test_migrate_without_a_database_says_how_to_get_one(capsys, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_settings()
    assert main(["migrate"]) == 1
    assert "DATABASE_URL" in capsys.readouterr().err


def test_serve_replaces_itself_with_the_module_of_a_process(tmp_path) -> None:
    """A real exec: a temporary registry entry runs the stdlib's `python -m json.tool <file>`."""
    data = tmp_path / "in.json"
    data.write_text('{"b":1,"a":[2]}')
    code = ("import sys, cli.processes as p; p.BY_NAME['pretty'] = p.Process('pretty', 'tool', 'json.tool'); "
            f"from cli.main import main; sys.exit(main(['serve', 'pretty', '--sort-keys', {str(data)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["{", '    "a": [']


def test_serve_refuses_a_process_that_is_not_in_this_build(capsys) -> None:
    import cli.processes as p

    p.BY_NAME["ghost"] = p.Process("ghost", "worker", "workers.ghost_that_does_not_exist.main")
    try:
        assert main(["serve", "ghost"]) == 1
    finally:
        del p.BY_NAME["ghost"]
    assert "not part of this build" in capsys.readouterr().err


def test_registry_names_are_unique_and_modules_are_dotted() -> None:
    assert len(BY_NAME) == len(PROCESSES)
    for proc in PROCESSES:
        assert proc.module.count(".") >= 1 and proc.kind in ("service", "worker", "gateway", "tool")
        assert (proc.health == "grpc") == (proc.kind == "service") or proc.kind == "gateway"


def test_optional_commands_appear_only_when_their_module_exists() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in cli_main.OPTIONAL_COMMANDS:
        assert (name in choices) == module_exists(cli_main.COMMANDS[name])
    assert {"up", "down", "status", "serve", "health", "token", "migrate", "seed"} <= set(choices)


def test_the_cli_imports_no_service_worker_or_gateway_code() -> None:
    bad = []
    for path in sorted((ROOT / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [(path.name, n) for n in names if n.split(".")[0] in {"services", "workers", "gateway"}]
    assert not bad, bad


def test_process_command_fills_placeholders() -> None:
    from cli.processes import Process

    sim = Process("sim", "tool", "cli.simulate", stage=1, compose=False, args=("--sites", "{sites}"))
    assert sim.command("/py", sites=42) == ["/py", "-m", "cli.simulate", "--sites", "42"]
    assert BY_NAME["sites"].command("/py", sites=1) == ["/py", "-m", "services.sites.server"]
