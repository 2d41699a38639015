"""The `towerco` command.

Subcommands live in their own modules, registered by name in COMMANDS. A command module has
  HELP: str                                       one line for `towerco --help`
  add_arguments(parser: argparse.ArgumentParser)  its options
  run(args: argparse.Namespace) -> int            the exit code
and keeps heavy imports inside run(), so `towerco --help` stays fast. A module listed in
OPTIONAL_COMMANDS is offered only when its file exists (e.g. cli/simulate.py, owned by the
telemetry work). A command module can also run on its own: `standalone(module)` builds a parser
from its add_arguments and exits with run()'s code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import NoReturn

from cli.errors import CliError

COMMANDS: dict[str, str] = {
    "up": "cli.up",
    "down": "cli.down",
    "status": "cli.status",
    "serve": "cli.serve",
    "health": "cli.health",
    "token": "cli.token",
    "migrate": "cli.migrate",
    "seed": "cli.seed",
    "simulate": "cli.simulate",
    "gateway": "gateway.cli",
    "aiops": "workers.aiops_engine.cli",
    "notifications": "workers.notifier.cli",
}
OPTIONAL_COMMANDS: frozenset[str] = frozenset({"simulate"})


def _commands() -> dict[str, ModuleType]:
    from cli.processes import module_exists

    found: dict[str, ModuleType] = {}
    for name, module in COMMANDS.items():
        if name in OPTIONAL_COMMANDS and not module_exists(module):
            continue
        found[name] = importlib.import_module(module)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towerco",
        description="Towerco AIOps: run the embedded stack, serve one process, mint dev tokens, seed demo data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, module in _commands().items():
        help_text = getattr(module, "HELP", "")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"towerco {args.command}: {exc}", file=sys.stderr)
        return exc.code


def standalone(module: ModuleType, argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog=f"python -m {module.__spec__.name if module.__spec__ else module.__name__}",
                                     description=getattr(module, "HELP", ""))
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        code = int(module.run(args) or 0)
    except KeyboardInterrupt:
        code = 130
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        code = exc.code
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
