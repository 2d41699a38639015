"""Schema migrations: plain SQL files, applied once each, in order, under an advisory lock.

Layout (found by scanning the project tree; no service code is imported):

    services/<component>/migrations/NNNN_<name>.sql
    workers/<component>/migrations/NNNN_<name>.sql

The component is the folder name; each component creates and uses its own schema. Components are
applied in sorted name order and each one's files by version. Every file runs in its own
transaction together with its row in `public.towerco_migrations` (component, version, name,
checksum sha256, applied_at), so a failing file leaves nothing half-applied. A session-level
advisory lock makes concurrent runs (two `towerco migrate`, replicas starting together) queue up
instead of racing; the second one finds everything applied and does nothing. Editing a file that
was already applied is refused (its checksum changed): add a new file instead.

    python -m mesh.migrate            # uses DATABASE_URL
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh import db

log = logging.getLogger("towerco.migrate")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("services", "workers")
FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_\-]+)\.sql$")
LOCK_KEY = 0x746F776572636F  # "towerco"

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS public.towerco_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class MigrationError(RuntimeError):
    """A migration set that cannot be applied safely (bad name, duplicate version, edited file)."""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.component}/{self.path.name}"


def discover(root: Path | str | None = None, components: list[str] | tuple[str, ...] | None = None
             ) -> list[Migration]:
    """Every migration file under `root` (the project root by default), in apply order."""
    base = Path(root) if root is not None else PROJECT_ROOT
    found: dict[str, Path] = {}
    for kind in KINDS:
        for folder in sorted((base / kind).glob("*/migrations")):
            if not folder.is_dir():
                continue
            component = folder.parent.name
            if component in found:
                raise MigrationError(
                    f"component {component!r} has migrations in both {found[component]} and {folder}")
            found[component] = folder
    if components is not None:
        missing = sorted(set(components) - set(found))
        if missing:
            raise MigrationError(f"no migrations folder for component(s): {', '.join(missing)}")
        found = {c: f for c, f in found.items() if c in set(components)}
    out: list[Migration] = []
    for component in sorted(found):
        versions: dict[int, Path] = {}
        for path in sorted(found[component].glob("*.sql")):
            m = FILE_RE.match(path.name)
            if not m:
                raise MigrationError(f"{path}: migration files must be named NNNN_name.sql")
            version = int(m.group(1))
            if version in versions:
                raise MigrationError(f"{path}: version {version} already used by {versions[version].name}")
            versions[version] = path
        for version in sorted(versions):
            path = versions[version]
            out.append(Migration(component, version, path.stem, path, path.read_text(encoding="utf-8")))
    return out


async def applied(conn) -> dict[tuple[str, int], str]:
    """(component, version) -> checksum of everything recorded as applied."""
    exists = await conn.fetchval("SELECT to_regclass('public.towerco_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT component, version, checksum FROM public.towerco_migrations")
    return {(r["component"], r["version"]): r["checksum"] for r in rows}


async def migrate(url: str, *, root: Path | str | None = None,
                  components: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Apply every pending migration; return the labels ("<component>/<file>") applied, in order.

    Raises MigrationError (before applying anything) when an applied file was edited, and the
    database's own error when a file fails (that file's transaction is rolled back; files
    applied before it stay applied)."""
    plan = discover(root, components)
    conn = await db.connect(url, application_name="towerco:migrate")
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(TABLE_DDL)
            done = await applied(conn)
            for mig in plan:
                recorded = done.get((mig.component, mig.version))
                if recorded is not None and recorded != mig.checksum:
                    raise MigrationError(
                        f"{mig.path}: already applied with a different checksum; migrations are "
                        "immutable once applied, add a new file instead")
            ran: list[str] = []
            for mig in plan:
                if (mig.component, mig.version) in done:
                    continue
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO public.towerco_migrations (component, version, name, checksum) "
                        "VALUES ($1, $2, $3, $4)", mig.component, mig.version, mig.name, mig.checksum)
                log.info("applied migration %s", mig.label)
                ran.append(mig.label)
            return ran
        finally:
            with contextlib.suppress(Exception):  # a dead connection has released the lock anyway
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m mesh.migrate [component ...]`: apply pending migrations to DATABASE_URL."""
    from mesh.config import get_settings

    args = list(sys.argv[1:] if argv is None else argv)
    url = get_settings().database_url
    if not url:
        print("DATABASE_URL is not set (`towerco migrate` starts the embedded stack for you)",
              file=sys.stderr)
        return 2
    try:
        ran = asyncio.run(migrate(url, components=args or None))
    except MigrationError as exc:
        print(f"migration refused: {exc}", file=sys.stderr)
        return 1
    for label in ran:
        print(f"applied {label}")
    if not ran:
        print("database is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
