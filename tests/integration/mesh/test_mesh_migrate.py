"""mesh.migrate against a real, fresh PostgreSQL database with a temporary tree of migrations."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from mesh import migrate
from mesh.domains import Domain
from mesh.migrate import MigrationError


def write(root: Path, kind: str, component: str, name: str, sql: str) -> Path:
    folder = root / kind / component / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(sql)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path, "services", "alpha", "0001_init.sql",
          "CREATE SCHEMA alpha; CREATE TABLE alpha.items (id int PRIMARY KEY, name text);")
    write(tmp_path, "services", "alpha", "0002_more.sql", "ALTER TABLE alpha.items ADD COLUMN size int;")
    write(tmp_path, "workers", "beta", "0001_init.sql",
          "CREATE SCHEMA beta; CREATE TABLE beta.state (k text PRIMARY KEY, v bigint);")
    (tmp_path / "services" / "alpha" / "migrations" / "README.md").write_text("not a migration")
    (tmp_path / "services" / "nomig").mkdir()  # a component without migrations is fine
    return tmp_path


async def test_applies_in_order_once_and_records(fresh_db, tree):
    ran = await migrate.migrate(fresh_db, root=tree)
    assert ran == ["alpha/0001_init.sql", "alpha/0002_more.sql", "beta/0001_init.sql"]

    conn = await asyncpg.connect(fresh_db)
    try:
        cols = await conn.fetch("SELECT column_name FROM information_schema.columns "
                                "WHERE table_schema='alpha' AND table_name='items' ORDER BY ordinal_position")
        assert [c["column_name"] for c in cols] == ["id", "name", "size"]
        rows = await conn.fetch("SELECT component, version, name, checksum, applied_at "
                                "FROM public.towerco_migrations ORDER BY component, version")
        assert [(r["component"], r["version"], r["name"]) for r in rows] == [
            ("alpha", 1, "0001_init"), ("alpha", 2, "0002_more"), ("beta", 1, "0001_init")]
        sql = (tree / "services/alpha/migrations/0001_init.sql").read_text()
        assert rows[0]["checksum"] == hashlib.sha256(sql.encode()).hexdigest()
        assert all(r["applied_at"] is not None for r in rows)
    finally:
        await conn.close()

    assert await migrate.migrate(fresh_db, root=tree) == []

    write(tree, "services", "alpha", "0003_index.sql", "CREATE INDEX items_name ON alpha.items (name);")
    assert await migrate.migrate(fresh_db, root=tree) == ["alpha/0003_index.sql"]


async def test_changed_checksum_is_refused_naming_the_file(fresh_db, tree):
    await migrate.migrate(fresh_db, root=tree)
    edited = write(tree, "services", "alpha", "0002_more.sql", "ALTER TABLE alpha.items ADD COLUMN sz int;")
    write(tree, "services", "alpha", "0003_new.sql", "CREATE TABLE alpha.other (id int);")
    with pytest.raises(MigrationError) as info:
        await migrate.migrate(fresh_db, root=tree)
    assert str(edited) in str(info.value)
    conn = await asyncpg.connect(fresh_db)
    try:  # nothing else ran: the check happens before applying anything
        assert await conn.fetchval("SELECT to_regclass('alpha.other')") is None
    finally:
        await conn.close()


async def test_failing_file_rolls_back_alone(fresh_db, tree):
    write(tree, "services", "alpha", "0003_broken.sql",
          "CREATE TABLE alpha.half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate.migrate(fresh_db, root=tree)
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('alpha.half')") is None
        versions = await conn.fetch("SELECT component, version FROM public.towerco_migrations")
        assert {(r["component"], r["version"]) for r in versions} == {("alpha", 1), ("alpha", 2)}
    finally:
        await conn.close()
    # fix the file, and the run continues where it stopped (beta comes after alpha)
    write(tree, "services", "alpha", "0003_broken.sql", "CREATE TABLE alpha.half (id int);")
    assert await migrate.migrate(fresh_db, root=tree) == ["alpha/0003_broken.sql", "beta/0001_init.sql"]


async def test_concurrent_runs_do_not_double_apply(fresh_db, tree):
    # pg_sleep makes the first run hold the lock while the others queue on it; a double apply
    # would fail on CREATE SCHEMA or the primary key of towerco_migrations.
    write(tree, "services", "alpha", "0003_slow.sql", "SELECT pg_sleep(0.3); CREATE TABLE alpha.slow (id int);")
    results = await asyncio.gather(*(migrate.migrate(fresh_db, root=tree) for _ in range(4)))
    applied = [label for r in results for label in r]
    assert sorted(applied) == sorted(["alpha/0001_init.sql", "alpha/0002_more.sql", "alpha/0003_slow.sql",
                                      "beta/0001_init.sql"])
    assert sum(1 for r in results if r) == 1


async def test_components_filter(fresh_db, tree):
    assert await migrate.migrate(fresh_db, root=tree, components=["beta"]) == ["beta/0001_init.sql"]
    with pytest.raises(MigrationError, match="gamma"):
        await migrate.migrate(fresh_db, root=tree, components=["gamma"])


def test_bad_layouts_are_refused(tmp_path):
    write(tmp_path, "services", "alpha", "1_init.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        migrate.discover(tmp_path)

    other = tmp_path / "dup"
    write(other, "services", "alpha", "0001_a.sql", "SELECT 1;")
    write(other, "services", "alpha", "0001_b.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="version 1 already used"):
        migrate.discover(other)

    clash = tmp_path / "clash"
    write(clash, "services", "alpha", "0001_a.sql", "SELECT 1;")
    write(clash, "workers", "alpha", "0001_a.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="both"):
        migrate.discover(clash)


def test_project_migrations_are_well_formed():
    """The real tree's files follow the naming rules (whatever components exist today)."""
    for mig in migrate.discover():
        assert mig.sql.strip(), f"{mig.path} is empty"


def test_module_entry_point(stack, fresh_db, tmp_path):
    env = stack.env()
    env["DATABASE_URL"] = fresh_db
    proc = subprocess.run([sys.executable, "-m", "mesh.migrate", "no_such_component"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(migrate.__file__).parent.parent)
    assert proc.returncode == 1
    assert "no_such_component" in proc.stderr
    env.pop("DATABASE_URL")
    proc = subprocess.run([sys.executable, "-m", "mesh.migrate"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(migrate.__file__).parent.parent)
    assert proc.returncode == 2
    assert "DATABASE_URL" in proc.stderr


async def test_moved_domain_folder_renames_the_ledger_and_applies_nothing_twice(fresh_db, tree):
    # A database migrated when beta's files lived in workers/beta (component "beta")...
    assert "beta/0001_init.sql" in await migrate.migrate(fresh_db, root=tree)
    # ...then the files move to their domain's service (same content, same checksums).
    moved = tree / "services" / "gamma" / "migrations"
    moved.parent.mkdir(parents=True)
    (tree / "workers" / "beta" / "migrations").rename(moved)
    domains = (Domain("alpha", schema="alpha", service="services.alpha"),
               Domain("gamma", schema="beta", service="services.gamma", workers=("workers.beta",),
                      formerly=("beta",)))
    write(tree, "services", "gamma", "0002_more.sql", "ALTER TABLE beta.state ADD COLUMN at int;")
    assert await migrate.migrate(fresh_db, root=tree, domains=domains) == ["gamma/0002_more.sql"]
    conn = await asyncpg.connect(fresh_db)
    try:
        rows = await conn.fetch("SELECT component, version FROM public.towerco_migrations ORDER BY 1, 2")
        assert [(r["component"], r["version"]) for r in rows] == [
            ("alpha", 1), ("alpha", 2), ("gamma", 1), ("gamma", 2)]
    finally:
        await conn.close()
    assert await migrate.migrate(fresh_db, root=tree, domains=domains) == []
    # the former name still selects the domain
    assert await migrate.migrate(fresh_db, root=tree, domains=domains, components=["beta"]) == []


async def test_a_version_recorded_under_both_names_is_refused(fresh_db, tree):
    await migrate.migrate(fresh_db, root=tree)
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute("INSERT INTO public.towerco_migrations (component, version, name, checksum) "
                           "VALUES ('gamma', 1, '0001_init', 'x')")
    finally:
        await conn.close()
    domains = (Domain("alpha", schema="alpha", service="services.alpha"),
               Domain("gamma", schema="beta", service="workers.beta", formerly=("beta",)))
    with pytest.raises(MigrationError, match="both 'beta' and 'gamma'"):
        await migrate.migrate(fresh_db, root=tree, domains=domains)


def test_a_migrations_folder_no_domain_owns_is_refused(tree):
    domains = (Domain("alpha", schema="alpha", service="services.alpha"),)
    with pytest.raises(MigrationError, match="workers/beta/migrations belong to no domain"):
        migrate.discover(tree, domains=domains)
    labels = [m.label for m in migrate.discover(tree, domains=(
        *domains, Domain("beta", schema="beta", service="workers.beta")))]
    assert labels == ["alpha/0001_init.sql", "alpha/0002_more.sql", "beta/0001_init.sql"]


async def test_a_database_migrated_before_the_kpi_move_applies_nothing_twice(fresh_db):
    """The project's own files, recorded as the old layout did (kpi's under `kpi_calculator`):
    the next migrate renames the ledger rows and applies nothing."""
    plan = migrate.discover()
    assert {"kpi", "sites", "telemetry"} <= {m.component for m in plan}  # and the domains added since
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute(migrate.TABLE_DDL)
        for m in plan:
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO public.towerco_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                    "kpi_calculator" if m.component == "kpi" else m.component, m.version, m.name, m.checksum)
        assert await migrate.migrate(fresh_db) == []
        rows = await conn.fetch("SELECT component, count(*) AS n FROM public.towerco_migrations GROUP BY 1 ORDER BY 1")
        want = sorted(Counter(m.component for m in plan).items())  # kpi_calculator's rows are kpi's now
        assert [(r["component"], r["n"]) for r in rows] == want
    finally:
        await conn.close()
