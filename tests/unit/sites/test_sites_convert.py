"""Row <-> protobuf mapping of the Sites servicer (pure parts, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from towerco.sites.v1 import sites_pb2 as pb

from services.sites import servicer as sv


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_ts_matches_protobuf(dt):
    ref = timestamp_pb2.Timestamp()
    ref.FromDatetime(dt)
    assert sv._ts(dt) == ref
    assert sv._ts(dt).ToDatetime(tzinfo=UTC) == dt


def test_ts_other_zones_and_none():
    east = datetime(2026, 1, 1, 3, tzinfo=timezone(timedelta(hours=3)))
    assert sv._ts(east).ToDatetime(tzinfo=UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    assert sv._ts(None) is None


def test_string_fields():
    site = pb.Site(id="S-1", location={"latitude": 1.5}, power=pb.PowerConfig(), tenant_ids=["a", "b\x00"])
    site.power.SetInParent()
    req = pb.UpdateSiteRequest(site=site, update_mask={"paths": ["name"]})
    assert sv.string_fields(req) == [("site.id", "S-1"), ("site.tenant_ids[0]", "a"),
                                     ("site.tenant_ids[1]", "b\x00"), ("update_mask.paths[0]", "name")]


def test_site_row_round_trip():
    site = pb.Site(id="NBO-1", name="N", region="r", location={"latitude": -1.2, "longitude": 36.8},
                   type=pb.SITE_TYPE_ROOFTOP, status=pb.SITE_STATUS_PLANNED,
                   power=pb.PowerConfig(grid=pb.GRID_CONNECTION_NONE, solar_kwp=6, dg_start_delay_s=30))
    row = sv.site_row(site)
    assert (row["type"], row["status"], row["grid"]) == ("rooftop", "planned", "none")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    back = sv.site_proto({**row, "create_time": now, "update_time": now, "tenant_ids": ["a"]})
    expected = pb.Site()
    expected.CopyFrom(site)
    expected.create_time.FromDatetime(now)
    expected.update_time.FromDatetime(now)
    expected.tenant_ids.append("a")
    assert back == expected
    assert sv.site_row(pb.Site())["status"] == "unspecified"


def test_unknown_enum_numbers_are_invalid():
    from services.sites import domain as d

    with pytest.raises(d.Invalid):
        sv.site_row(pb.Site(type=99))
