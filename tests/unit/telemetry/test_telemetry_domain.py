"""Screening rules, partitioning and batch splitting of the telemetry domain."""

from __future__ import annotations

import math
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import subjects
from services.telemetry import domain

NOW = 1_750_000_000.0
RETENTION = 90 * 86400.0


def check(site="S-001", metric="dc_bus_v", tenant="", ts=NOW, value=53.5, known=True):
    return domain.check_sample(site, metric, tenant, ts, value, known_site=known, now=NOW,
                               oldest=NOW - RETENTION)


def test_catalogue_has_every_documented_metric():
    assert set(domain.CATALOGUE) == {
        "mains_present", "dg_running", "fuel_level_l", "dc_bus_v", "load_a", "battery_soc_pct",
        "battery_v", "cabinet_temp_c", "door_open", "rectifier_fault", "tenant_link_up",
    }
    for m in domain.CATALOGUE.values():
        assert m.low < m.high and m.unit and m.description
    assert [m.name for m in domain.CATALOGUE.values() if m.per_tenant] == ["tenant_link_up"]


def test_good_sample_passes():
    assert check() is None
    assert check(metric="tenant_link_up", tenant="opco-a", value=1.0) is None
    assert check(metric="cabinet_temp_c", value=-40.0) is None
    assert check(ts=NOW + domain.MAX_FUTURE_S) is None


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"known": False}, "site_id", domain.UNKNOWN_SITE),
        ({"metric": "dc_bus_volts"}, "metric", domain.UNKNOWN_METRIC),
        ({"ts": 0.0}, "time", domain.MISSING_TIME),
        ({"ts": NOW + 301}, "time", domain.IN_FUTURE),
        ({"ts": NOW - RETENTION - 1}, "time", domain.TOO_OLD),
        ({"value": math.nan}, "value", domain.NOT_FINITE),
        ({"value": math.inf}, "value", domain.NOT_FINITE),
        ({"value": -0.1}, "value", domain.OUT_OF_RANGE),
        ({"value": 80.01}, "value", domain.OUT_OF_RANGE),
        ({"metric": "door_open", "value": 0.5}, "value", domain.NOT_BOOLEAN),
        ({"metric": "door_open", "value": math.nan}, "value", domain.NOT_FINITE),
        ({"metric": "tenant_link_up", "value": 1.0}, "tenant_id", domain.TENANT_REQUIRED),
        ({"tenant": "opco-a"}, "tenant_id", domain.TENANT_NOT_ALLOWED),
        ({"metric": "tenant_link_up", "value": 1.0, "tenant": "t" * 33}, "tenant_id", domain.TENANT_TOO_LONG),
    ],
)
def test_bad_sample_is_refused_with_field_and_reason(kwargs, field, reason):
    got = check(**kwargs)
    assert got is not None
    assert got[0] == field and got[1] == reason and got[2]


def test_partition_is_stable_crc32():
    assert subjects.partition_of("S-001", 16) == zlib.crc32(b"S-001") % 16
    assert subjects.partition_of("S-001", 16) == subjects.partition_of("S-001", 16)


@given(st.text(min_size=1, max_size=32), st.integers(min_value=1, max_value=256))
def test_partition_in_range(site, n):
    assert 0 <= subjects.partition_of(site, n) < n


def test_screen_groups_by_partition_in_order_and_keeps_bad_samples_out():
    sites = {"A": 0, "B": 1, "C": 0}
    rows = [
        ("A", "dc_bus_v", "", NOW, 53.0),
        ("B", "dc_bus_v", "", NOW, 53.0),
        ("X", "dc_bus_v", "", NOW, 53.0),  # unknown site
        ("C", "load_a", "", NOW, 10.0),
        ("A", "load_a", "", NOW, -5.0),  # out of range
        ("A", "door_open", "", NOW + 1, 1.0),
    ]
    out = domain.screen(rows, sites=sites, now=NOW, retention_s=RETENTION)
    assert out.accepted == 4
    assert out.by_partition == {0: [0, 3, 5], 1: [1]}
    assert [(r.index, r.reason) for r in out.refusals] == [(2, domain.UNKNOWN_SITE), (4, domain.OUT_OF_RANGE)]


@given(st.lists(st.tuples(st.sampled_from(["A", "B", "Z"]), st.sampled_from(["dc_bus_v", "nope"]),
                          st.floats(allow_nan=True, allow_infinity=True)), max_size=50))
def test_screen_accounts_for_every_sample(samples):
    rows = [(s, m, "", NOW, v) for s, m, v in samples]
    out = domain.screen(rows, sites={"A": 3, "B": 7}, now=NOW, retention_s=RETENTION)
    kept = sorted(i for idx in out.by_partition.values() for i in idx)
    refused = [r.index for r in out.refusals]
    assert sorted(kept + refused) == list(range(len(rows)))
    assert out.accepted == len(kept)


def test_message_ids_and_chunks():
    assert domain.message_id("b1", 3) == "b1:3"
    assert domain.message_id("b1", 3, 2) == "b1:3:2"
    assert domain.chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert domain.chunks([], 2) == [[]]
    assert subjects.telemetry_subject(7) == "telemetry.samples.7"


def test_docs_metric_catalogue_matches_the_code():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text(encoding="utf-8")
    for m in domain.CATALOGUE.values():
        rng = "0 or 1" if m.boolean else f"{m.low:g} to {m.high:g}"
        series = "per tenancy" if m.per_tenant else "per site"
        assert f"| `{m.name}` | {m.unit} | {rng} | {series} |" in text, m.name


class _T:
    def __init__(self, ts):
        self.seconds = int(ts // 1) if math.isfinite(ts) else 0
        self.nanos = int((ts - self.seconds) * 1e9) if math.isfinite(ts) else 0


class _S:
    def __init__(self, site_id, metric, tenant_id, ts, value):
        self.site_id, self.metric, self.tenant_id, self.value = site_id, metric, tenant_id, value
        self.time = _T(ts)


@given(st.lists(st.tuples(
    st.sampled_from(["A", "B", "Z"]),
    st.sampled_from(["dc_bus_v", "door_open", "tenant_link_up", "cabinet_temp_c", "nope"]),
    st.sampled_from(["", "op", "x" * 33]),
    st.sampled_from([0.0, NOW, NOW + 299, NOW + 301, NOW - RETENTION - 10, NOW - 100.5]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, 0.5, -40.0, 90.0]))),
    max_size=40))
def test_fast_screen_of_samples_agrees_with_the_reference(rows):
    objs = [_S(*r) for r in rows]
    ref_rows = [(o.site_id, o.metric, o.tenant_id, o.time.seconds + o.time.nanos * 1e-9, o.value) for o in objs]
    sites = {"A": 3, "B": 7}
    a = domain.screen(ref_rows, sites=sites, now=NOW, retention_s=RETENTION)
    b = domain.screen_samples(objs, sites=sites, now=NOW, retention_s=RETENTION)
    assert a == b
