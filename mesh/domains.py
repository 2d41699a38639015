"""The domains: the unit that owns a PostgreSQL schema.

A domain is one gRPC service and the workers that do its background work (they share its data
model). It has exactly one schema, one migrations folder (in the service's package) and one owner,
its service: `towerco migrate` and the service's start-up apply the folder, and only the
domain's own processes read or write the schema. Anything else asks the service over gRPC or
listens to its events (docs/ARCHITECTURE.md, "Domains and schemas").

Processes are named by module, as strings: the mesh imports no service or worker code.
A new service adds its Domain here; tests/unit/mesh/test_domains.py fails for a migrations folder
that belongs to no domain, a schema created outside its domain's folder, or SQL in a domain's
code that names another domain's schema.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    name: str                          # also the component recorded in public.towerco_migrations
    schema: str                        # the PostgreSQL schema the domain owns
    service: str                       # the owner: its package, e.g. "services.kpi"
    workers: tuple[str, ...] = ()      # worker packages that share the schema
    # components the ledger knew this domain's migrations by before they moved (renamed in
    # public.towerco_migrations on the next migrate; the files and their checksums are unchanged)
    formerly: tuple[str, ...] = ()

    @property
    def migrations(self) -> str:
        """The domain's one migrations folder, relative to the project root."""
        return self.service.replace(".", "/") + "/migrations"

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.service, *self.workers)


DOMAINS: tuple[Domain, ...] = (
    Domain("sites", schema="sites", service="services.sites"),
    Domain("telemetry", schema="telemetry", service="services.telemetry", workers=("workers.ingestor",)),
    Domain("kpi", schema="kpi", service="services.kpi", workers=("workers.kpi_calculator",),
           formerly=("kpi_calculator",)),
    Domain("aiops", schema="aiops", service="services.aiops", workers=("workers.aiops_engine",)),
    Domain("bi", schema="bi", service="services.bi", workers=("workers.bi_engine",)),
    Domain("files", schema="files", service="services.files"),
    Domain("noc", schema="noc", service="services.noc"),
)


def by_name(name: str, domains: tuple[Domain, ...] = DOMAINS) -> Domain:
    """The domain called `name`, or the one that was formerly called so; KeyError otherwise."""
    for d in domains:
        if name == d.name or name in d.formerly:
            return d
    raise KeyError(name)


def owning(package: str, domains: tuple[Domain, ...] = DOMAINS) -> Domain | None:
    """The domain a service or worker package (e.g. "workers.ingestor") belongs to."""
    for d in domains:
        if package in d.packages:
            return d
    return None
