"""`towerco migrate`: apply every domain's SQL migrations (mesh/domains.py) once, in order."""

from __future__ import annotations

import argparse

HELP = "apply database migrations (DATABASE_URL, or the running embedded stack's database)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default="", help="default: DATABASE_URL, else the running `towerco up` stack")


def database_url(explicit: str = "") -> str:
    """The explicit URL, DATABASE_URL, or the database of the stack recorded in stack.json."""
    from cli import state
    from cli.errors import CliError
    from mesh.config import get_settings

    settings = get_settings()
    url = explicit or settings.database_url
    if not url:
        recorded = state.read_stack(state.home(settings)) or {}
        url = recorded.get("database_url", "") if recorded.get("state") in ("starting", "ready") else ""
    if not url:
        raise CliError("no database: set DATABASE_URL or start the embedded stack with `towerco up -d`")
    return url


def run(args: argparse.Namespace) -> int:
    import asyncio

    from mesh.migrate import migrate

    applied = asyncio.run(migrate(database_url(args.database_url)))
    for name in applied:
        print(f"applied {name}")
    print(f"{len(applied)} migration(s) applied")
    return 0
