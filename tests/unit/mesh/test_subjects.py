"""mesh.subjects is the one home of subject names and of the site partitioning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mesh import subjects

ROOT = Path(__file__).resolve().parents[3]
CODE = ("mesh", "services", "workers", "gateway", "cli", "sdk", "bench")


def _sources() -> list[Path]:
    return [p for folder in CODE for p in sorted((ROOT / folder).rglob("*.py")) if p.name != "subjects.py"]


def test_subject_shapes():
    assert subjects.telemetry_subject(7) == "telemetry.samples.7"
    assert subjects.site_telemetry_subject("site-0001", 16) == "telemetry.samples.2"
    assert subjects.TELEMETRY_SUBJECTS == "telemetry.samples.*"
    assert subjects.sites_event("site", "created") == "towerco.sites.site.created"
    assert subjects.sites_event("site", "created").startswith(subjects.SITES_EVENTS_PREFIX)
    assert subjects.dlq_subject("TELEMETRY", "ingestor") == "dlq.TELEMETRY.ingestor"
    for name in (subjects.KPI_HOUR_COMPUTED, subjects.KPI_POLICY_UPDATED, subjects.SITES_EVENTS):
        assert name.startswith(subjects.EVENTS_PREFIX + ".")


def test_telemetry_subject_and_partition_hash_are_spelled_only_in_subjects():
    # A quoted "telemetry.samples." is a subject (the SQL table is `telemetry.samples` followed by a
    # space); crc32 of a site id is the partition hash. Either outside mesh/subjects.py is a copy.
    subject = re.compile(r"""["']telemetry\.samples\.""")
    found = [(str(p.relative_to(ROOT)), rule) for p in _sources() for rule, pattern in
             (("subject", subject), ("hash", re.compile(r"crc32\(\s*site")))
             if pattern.search(p.read_text())]
    assert not found, found


EVENT_SUBJECT_EXEMPT: set[str] = set()  # every event subject is spelled in mesh/subjects.py


def test_event_subjects_are_spelled_only_in_subjects():
    # "towerco.<domain>.<entity>.<what>" or "towerco.<domain>.>", not a proto name (towerco.sites.v1.X)
    event = re.compile(r"""["']towerco\.[a-z_]+\.(?:>|(?!v\d+\.)[a-z_]+\.[a-z_]+)""")
    found = sorted(str(p.relative_to(ROOT)) for p in _sources() if event.search(p.read_text()))
    assert [f for f in found if f not in EVENT_SUBJECT_EXEMPT] == []
    assert subjects.KPI_POLICY_UPDATED == "towerco.kpi.policy.updated"


def test_partition_specs_and_replica_names():
    assert subjects.parse_partitions("", 4) == [0, 1, 2, 3]
    assert subjects.parse_partitions("0-2, 5", 8) == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="outside 0..3"):
        subjects.parse_partitions("2-4", 4)
    assert subjects.replica_name([0, 1, 2, 3], 4) == "all"
    assert subjects.replica_name([1, 3], 4) == "p1_3"
