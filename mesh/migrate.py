"""Schema migrations: plain SQL files, applied once each, in order, under an advisory lock.

Layout: one folder per domain (mesh/domains.py: a service, its workers, one schema, one owner),
in the owning service's package; no service code is imported:

    services/<service>/migrations/NNNN_<name>.sql

The component recorded for a file is its domain's name. A migrations folder that belongs to no
domain is refused. Components are applied in sorted name order and each one's files by version.
When a domain's migrations moved from another folder (`Domain.formerly`), the ledger rows of the
old component are renamed to the domain on the next run: the files are the same, so are their
checksums, and nothing is applied twice.

(With an explicit `root`, as the tests do, every `services/*/migrations` and `workers/*/migrations`
folder of that tree is a component named after its folder.) Every file runs in its own
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
from typing import Any

from mesh import db
from mesh.domains import DOMAINS, Domain

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


def _scan(base: Path) -> dict[str, Path]:
    """Every migrations folder of the tree, by its parent folder's name."""
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
    return found


def _domain_folders(base: Path, domains: tuple[Domain, ...] | list[Domain]) -> dict[str, Path]:
    """The domains' folders; a migrations folder in the tree that no domain owns is an error."""
    found = {d.name: base / d.migrations for d in domains}
    owned = {f.resolve() for f in found.values()}
    stray = [str(f.relative_to(base)) for f in _scan(base).values() if f.resolve() not in owned]
    if stray:
        raise MigrationError(f"migrations folder(s) {', '.join(stray)} belong to no domain "
                             "(declare the domain in mesh/domains.py; one folder per domain)")
    return {name: folder for name, folder in found.items() if folder.is_dir()}


def _selected(found: dict[str, Path], components: list[str] | tuple[str, ...],
              domains: tuple[Domain, ...] | list[Domain]) -> dict[str, Path]:
    aliases = {old: d.name for d in domains for old in d.formerly}
    wanted = {aliases.get(c, c) for c in components}
    missing = sorted(wanted - set(found))
    if missing:
        raise MigrationError(f"no migrations folder for component(s): {', '.join(missing)}")
    return {c: f for c, f in found.items() if c in wanted}


def discover(root: Path | str | None = None, components: list[str] | tuple[str, ...] | None = None,
             *, domains: tuple[Domain, ...] | list[Domain] | None = None) -> list[Migration]:
    """Every migration file, in apply order: of `domains` (mesh.domains.DOMAINS when neither
    `root` nor `domains` is given) under `root` (the project root by default), or of every
    migrations folder of an explicit `root`. `components` picks some (a domain's former name
    selects the domain)."""
    base = Path(root) if root is not None else PROJECT_ROOT
    if domains is None and root is None:
        domains = DOMAINS
    found = _domain_folders(base, domains) if domains is not None else _scan(base)
    if components is not None:
        found = _selected(found, components, domains or ())
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


async def applied(conn: Any) -> dict[tuple[str, int], str]:
    """(component, version) -> checksum of everything recorded as applied."""
    exists = await conn.fetchval("SELECT to_regclass('public.towerco_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT component, version, checksum FROM public.towerco_migrations")
    return {(r["component"], r["version"]): r["checksum"] for r in rows}


async def rename_former(conn: Any, domains: tuple[Domain, ...] | list[Domain]) -> list[str]:
    """Re-label ledger rows recorded under a domain's former component name (its migrations
    moved folder); returns "old -> new" for each rename done. A version recorded under both names
    is refused rather than guessed."""
    done = []
    for d in domains:
        for old in d.formerly:
            async with conn.transaction():
                clash = await conn.fetchval(
                    "SELECT count(*) FROM public.towerco_migrations o JOIN public.towerco_migrations n "
                    "USING (version) WHERE o.component = $1 AND n.component = $2", old, d.name)
                if clash:
                    raise MigrationError(f"versions recorded under both {old!r} and {d.name!r} in "
                                         "public.towerco_migrations; resolve by hand")
                moved = await conn.execute(
                    "UPDATE public.towerco_migrations SET component = $2 WHERE component = $1", old, d.name)
            if moved != "UPDATE 0":
                log.info("migration ledger: %s renamed to %s (%s)", old, d.name, moved)
                done.append(f"{old} -> {d.name}")
    return done


async def migrate(url: str, *, root: Path | str | None = None,
                  components: list[str] | tuple[str, ...] | None = None,
                  domains: tuple[Domain, ...] | list[Domain] | None = None) -> list[str]:
    """Apply every pending migration; return the labels ("<component>/<file>") applied, in order.

    Raises MigrationError (before applying anything) when an applied file was edited, and the
    database's own error when a file fails (that file's transaction is rolled back; files
    applied before it stay applied)."""
    plan = discover(root, components, domains=domains)
    if domains is None and root is None:
        domains = DOMAINS
    conn = await db.connect(url, application_name="towerco:migrate")
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(TABLE_DDL)
            await rename_former(conn, domains or ())
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
