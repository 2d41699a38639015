"""The NATS subjects and the site partitioning: the one home of every name that crosses a process
boundary on JetStream. Pure (no I/O, no third-party imports), so domain modules and unit tests use
it without the server runtime.

    telemetry.samples.<partition>      raw sample batches (stream TELEMETRY); the token is
                                       partition_of(site_id, TOWERCO_PARTITIONS)
    towerco.<domain>.<entity>.<what>   domain events in an Envelope (stream EVENTS)
    dlq.<stream>.<durable>             messages a consumer gave up on (stream DLQ)

Who publishes and who listens: docs/events.md.
"""

from __future__ import annotations

import zlib

# --------------------------------------------------------------------------- streams' subjects

TELEMETRY_PREFIX = "telemetry.samples"
TELEMETRY_SUBJECTS = f"{TELEMETRY_PREFIX}.*"
EVENTS_PREFIX = "towerco"
EVENTS_SUBJECTS = f"{EVENTS_PREFIX}.>"
DLQ_PREFIX = "dlq"
DLQ_SUBJECTS = f"{DLQ_PREFIX}.>"

# --------------------------------------------------------------------------- domain events

SITES_EVENTS = "towerco.sites.>"                   # every change to the site register
SITES_EVENTS_PREFIX = "towerco.sites."
KPI_POLICY_UPDATED = "towerco.kpi.policy.updated"  # a tenant's SLA policy changed
KPI_HOUR_COMPUTED = "towerco.kpi.hour.computed"    # a site-hour's KPIs are final (or recomputed)
AIOPS_ANOMALY_DETECTED = "towerco.aiops.anomaly.detected"    # an anomaly opened
AIOPS_ANOMALY_CLEARED = "towerco.aiops.anomaly.cleared"      # an open anomaly cleared
AIOPS_ANOMALY_PREDICTED = "towerco.aiops.anomaly.predicted"  # a forecast (battery, fuel, site down)
AIOPS_ANOMALY_EVENTS = "towerco.aiops.anomaly.>"              # the NOC's input from the engine
NOC_INCIDENT_PREFIX = "towerco.noc.incident"                  # .<change>: opened, updated, ...
NOC_INCIDENT_EVENTS = f"{NOC_INCIDENT_PREFIX}.>"              # every incident change (feed, notifier)
NOC_INCIDENT_CHANGES = ("opened", "updated", "acknowledged", "resolved", "closed", "reopened")
# the Envelope type of a dead notification's dead letter (on dlq.EVENTS.<durable>, not on EVENTS)
NOTIFICATION_DEAD = "towerco.notifications.notification.dead"


def partition_of(site_id: str, partitions: int) -> int:
    """The stable partition of a site: CRC-32 of its UTF-8 id modulo `partitions`. Every process
    that routes or owns telemetry (the ingest API, the ingestor, the kpi_calculator's replicas, the
    simulator) agrees through this one function."""
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    return zlib.crc32(site_id.encode("utf-8")) % partitions


LEASED = "auto"  # a partitions setting meaning: shared by leases with the other replicas (mesh/leases.py)


def is_leased(spec: str) -> bool:
    """Whether a replica's partitions setting is `auto` (leased) rather than a fixed list."""
    return spec.strip().lower() == LEASED


def parse_partitions(spec: str, count: int) -> list[int]:
    """The partitions a replica owns, from its setting: "" -> all; "0-7" -> 0..7; "1,3,5" -> those;
    "auto" -> all of them are candidates (which ones it holds at a time, the leases decide)."""
    if not spec.strip() or is_leased(spec):
        return list(range(count))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    bad = [p for p in out if not 0 <= p < count]
    if bad:
        raise ValueError(f"partitions {bad} outside 0..{count - 1}")
    return sorted(out)


def replica_name(partitions: list[int], count: int) -> str:
    """A replica's default name from what it owns: "all", or "p0_1_2"."""
    return "all" if len(partitions) == count else "p" + "_".join(map(str, partitions))


def telemetry_subject(partition: int) -> str:
    """The subject of one partition's sample batches: `telemetry.samples.<partition>`."""
    return f"{TELEMETRY_PREFIX}.{partition}"


def site_telemetry_subject(site_id: str, partitions: int) -> str:
    """The subject a site's samples travel on."""
    return telemetry_subject(partition_of(site_id, partitions))


def noc_incident_subject(change: str) -> str:
    """`towerco.noc.incident.<change>`, change one of NOC_INCIDENT_CHANGES (the IncidentChange
    enum's names, lower case, without the prefix)."""
    if change not in NOC_INCIDENT_CHANGES:
        raise ValueError(f"unknown incident change {change!r}")
    return f"{NOC_INCIDENT_PREFIX}.{change}"


def sites_event(entity: str, kind: str) -> str:
    """`towerco.sites.<entity>.<created|updated|deleted>` (validation of the parts: sites' domain)."""
    return f"{SITES_EVENTS_PREFIX}{entity}.{kind}"


def dlq_subject(stream: str, durable: str) -> str:
    """Where a consumer's dead letters go: `dlq.<stream>.<durable>`."""
    return f"{DLQ_PREFIX}.{stream}.{durable}"
