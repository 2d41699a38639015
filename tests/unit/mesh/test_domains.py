"""mesh.domains: each schema has one domain (a service and its workers), one migrations folder and
one owner; the code of a domain names no other domain's schema in SQL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mesh import domains, migrate

ROOT = Path(__file__).resolve().parents[3]
CREATE_SCHEMA = re.compile(r"CREATE\s+SCHEMA\s+(?:IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)", re.I)
# a schema-qualified table after an SQL keyword (upper case, as the stores write SQL)
QUALIFIED = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|EXISTS|ON)\s+([a-z_][a-z0-9_]*)\.[a-z_][a-z0-9_]*\b")
SHARED = {"public", "pg_catalog", "information_schema"}


def _packages(kind: str) -> list[str]:
    return sorted(f"{kind}.{p.name}" for p in (ROOT / kind).iterdir() if (p / "__init__.py").exists())


def test_every_service_and_worker_belongs_to_exactly_one_domain():
    for package in _packages("services") + _packages("workers"):
        owners = [d.name for d in domains.DOMAINS if package in d.packages]
        assert len(owners) == 1, (package, owners)
    for d in domains.DOMAINS:
        assert d.service.startswith("services.") and all(w.startswith("workers.") for w in d.workers)


def test_names_and_schemas_are_unique():
    for attr in ("name", "schema", "service"):
        values = [getattr(d, attr) for d in domains.DOMAINS]
        assert len(values) == len(set(values)), attr
    former = [old for d in domains.DOMAINS for old in d.formerly]
    assert not set(former) & {d.name for d in domains.DOMAINS}


def test_one_folder_per_domain_and_it_creates_only_its_schema():
    plan = migrate.discover()  # refuses a migrations folder that belongs to no domain
    assert {m.component for m in plan} == {d.name for d in domains.DOMAINS}
    for d in domains.DOMAINS:
        created = {s.lower() for m in plan if m.component == d.name for s in CREATE_SCHEMA.findall(m.sql)}
        assert created == {d.schema}, (d.name, created)
        folder = ROOT / d.migrations
        assert folder.is_dir() and {m.path.parent for m in plan if m.component == d.name} == {folder}


@pytest.mark.parametrize("domain", domains.DOMAINS, ids=lambda d: d.name)
def test_a_domains_sql_names_only_its_own_schema(domain):
    others = {d.schema for d in domains.DOMAINS} - {domain.schema}
    bad = []
    for package in domain.packages:
        for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
            for schema in QUALIFIED.findall(path.read_text()):
                if schema in others:
                    bad.append((str(path.relative_to(ROOT)), schema))
    assert not bad, bad


def test_lookup_by_name_former_name_and_package():
    assert domains.by_name("kpi_calculator").name == "kpi"
    assert domains.owning("workers.ingestor").name == "telemetry"
    assert domains.owning("services.sites").schema == "sites"
    assert domains.owning("gateway") is None
    with pytest.raises(KeyError):
        domains.by_name("nope")


@pytest.mark.parametrize("path", sorted((ROOT / "services").glob("*/servicer.py")), ids=lambda p: p.parent.name)
def test_servicers_leave_database_errors_to_their_store(path):
    """SQL and its errors belong in store.py: a servicer sees the store's typed errors instead."""
    text = path.read_text()
    assert not re.search(r"asyncpg\.\w*(Error|Violation)\w*", text), path
