"""mesh/masks.py: update masks resolved to columns, inferred from what a request sets, applied to
a row. One home for the Sites and Notifications services' Update RPCs."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2
from towerco.notifications.v1 import notifications_pb2 as npb
from towerco.sites.v1 import sites_pb2 as spb

from mesh import masks
from mesh.errors import InvalidArgument

RULES = masks.MaskRules(
    entity="thing",
    paths={"name": ("name",), "where": ("lat", "lon"), "where.lat": ("lat",), "where.lon": ("lon",),
           "tags": ("tags",)},
    immutable=frozenset({"id", "create_time", "owner"}),
    reasons={"owner": "a thing never changes hands"},
)


def test_paths_resolve_to_columns_once_in_a_stable_order():
    assert masks.resolve_mask(RULES, ["name"]) == ("name",)
    assert masks.resolve_mask(RULES, ["where.lat", "where", " name "]) == ("lat", "lon", "name")
    assert masks.resolve_mask(RULES, ["*"]) == ("name", "lat", "lon", "tags")
    assert masks.resolve_mask(RULES, ["tags", "*"]) == ("tags", "name", "lat", "lon")


def test_every_bad_path_is_named_and_an_empty_mask_refused():
    with pytest.raises(InvalidArgument) as err:
        masks.resolve_mask(RULES, ["id", "name", "colour", "create_time.seconds", "owner", "where.alt"])
    got = [(v.field, v.description) for v in err.value.violations]
    assert [f for f, _ in got] == ["update_mask.paths[0]", "update_mask.paths[2]", "update_mask.paths[3]",
                                   "update_mask.paths[4]", "update_mask.paths[5]"]
    assert "'id' cannot be changed (id or output-only field)" in got[0][1]
    assert "'colour' is not a field of the thing" in got[1][1]
    assert "cannot be changed" in got[2][1]
    assert "'owner' cannot be changed (a thing never changes hands)" == got[3][1]
    assert "'where.alt' is not a field" in got[4][1]
    assert err.value.details.startswith("update_mask.paths[0] 'id' cannot be changed")
    with pytest.raises(InvalidArgument) as empty:
        masks.resolve_mask(RULES, [])
    assert [v.field for v in empty.value.violations] == ["update_mask"]
    assert "names no field of the thing" in empty.value.violations[0].description


def test_infer_mask_keeps_updatable_present_paths_only():
    present = ["id", "name", "where.lat", "create_time", "owner", "unknown", "name"]
    assert masks.infer_mask(RULES, present) == ["name", "where.lat"]
    assert masks.infer_mask(RULES, []) == []


def test_apply_mask_changes_only_masked_columns_and_mutates_nothing():
    current = {"id": "T-1", "name": "old", "lat": 1.0, "lon": 2.0}
    incoming = {"id": "T-1", "name": "", "lat": 9.0, "lon": 0.0}
    merged = masks.apply_mask(current, incoming, ("lat", "lon"))
    assert merged == {"id": "T-1", "name": "old", "lat": 9.0, "lon": 0.0}
    assert current["lat"] == 1.0 and incoming["name"] == ""


def test_present_paths_of_a_message():
    site = spb.Site(id="S-1", location={"latitude": 1.5}, power=spb.PowerConfig(), tenant_ids=["a"])
    site.power.SetInParent()
    # a set but empty sub-message is its own path; a set sub-field is `a.b`
    assert masks.present_paths(site) == ["id", "location.latitude", "power", "tenant_ids"]
    w = spb.CalendarWindow(start_time={"seconds": 5}, description="d")
    assert masks.present_paths(w) == ["start_time", "description"]  # a Timestamp is a leaf
    route = npb.Route(name="r", match=npb.IncidentMatcher(regions=["x"]), channel_ids=["c"])
    assert masks.present_paths(route) == ["name", "match.regions", "channel_ids"]


def test_request_paths_take_the_mask_or_infer_it():
    site = spb.Site(id="S-1", name="N", region="r")
    with_mask = spb.UpdateSiteRequest(site=site, update_mask=field_mask_pb2.FieldMask(paths=["region"]))
    assert masks.request_paths(with_mask, with_mask.site, RULES) == ["region"]  # as given, not filtered
    without = spb.UpdateSiteRequest(site=site)
    rules = masks.MaskRules("site", {"name": ("name",), "region": ("region",)}, frozenset({"id"}))
    assert masks.request_paths(without, without.site, rules) == ["name", "region"]
    empty = spb.UpdateSiteRequest(site=site, update_mask=field_mask_pb2.FieldMask())
    assert masks.request_paths(empty, empty.site, rules) == ["name", "region"]
