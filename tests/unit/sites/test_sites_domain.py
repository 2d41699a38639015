"""Unit tests of the Sites service's pure decisions (services/sites/domain.py)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import masks
from mesh.errors import InvalidArgument
from services.sites import domain as d

# --------------------------------------------------------------------------------------------
# callers and access


@dataclass(frozen=True)
class FakeIdentity:
    """A plain value standing in for mesh.auth.Identity (same fields, same role implications)."""

    subject: str
    tenant: str
    roles: frozenset[str]

    def has_role(self, *roles: str) -> bool:
        if "admin" in self.roles or "service" in self.roles:
            return True
        have = set(self.roles)
        if "noc_operator" in have:
            have.add("viewer")
        return bool(have & set(roles))


def who(tenant: str, *roles: str) -> d.Caller:
    return d.caller_of(FakeIdentity("u", tenant, frozenset(roles)))


def test_role_matrix():
    viewer, noc, admin = who("*", "viewer"), who("*", "noc_operator"), who("*", "admin")
    tv = who("safaricom", "tenant_viewer")
    assert (viewer.can_read, viewer.can_write_register, viewer.can_write_calendar) == (True, False, False)
    assert (noc.can_read, noc.can_write_register, noc.can_write_calendar) == (True, False, True)
    assert (admin.can_read, admin.can_write_register, admin.can_write_calendar) == (True, True, True)
    assert (tv.can_read, tv.can_write_register, tv.can_write_calendar) == (True, False, False)
    assert viewer.tenant_scope is None and tv.tenant_scope == "safaricom"
    with pytest.raises(d.Forbidden):
        d.check_read(who("*"))


def test_write_denials():
    d.check_write(who("*", "admin"), "site", resource_name="S-1", visible=False)  # allowed
    d.check_write(who("*", "noc_operator"), "window", resource_name="w", visible=True)
    with pytest.raises(d.Forbidden, match="admin"):
        d.check_write(who("*", "noc_operator"), "site", resource_name="S-1")
    with pytest.raises(d.Forbidden, match="noc_operator"):
        d.check_write(who("*", "viewer"), "window", resource_name="w")
    tv = who("safaricom", "tenant_viewer")
    assert d.needs_visibility_before_denial(tv, "site")
    assert not d.needs_visibility_before_denial(who("*", "viewer"), "site")
    assert not d.needs_visibility_before_denial(who("*", "admin"), "site")
    # hidden from the tenant -> NOT_FOUND, visible -> PERMISSION_DENIED
    with pytest.raises(d.NotVisible) as hidden:
        d.check_write(tv, "site", resource_name="S-9", visible=False)
    assert (hidden.value.resource_type, hidden.value.resource_name) == ("site", "S-9")
    with pytest.raises(d.Forbidden):
        d.check_write(tv, "site", resource_name="S-1", visible=True)
    with pytest.raises(d.Forbidden):  # a create has no target to hide
        d.check_write(tv, "tenant", resource_name="", visible=False)


def test_visibility_rules():
    tv = who("a", "tenant_viewer")
    assert d.visible_tenant_ids(tv, ["a", "b"]) == ["a"]
    assert d.visible_tenant_ids(tv, ["b"]) == []
    assert d.visible_tenant_ids(who("*", "viewer"), ["a", "b"]) == ["a", "b"]
    assert d.window_visible(None, site_tenants=[], window_tenants=["x"])
    assert d.window_visible("a", site_tenants=["a", "b"], window_tenants=[])
    assert d.window_visible("a", site_tenants=["a", "b"], window_tenants=["a", "b"])
    assert not d.window_visible("a", site_tenants=["a", "b"], window_tenants=["b"])
    assert not d.window_visible("a", site_tenants=["b"], window_tenants=[])
    assert d.tenant_filter_visible(tv, "") and d.tenant_filter_visible(tv, "a")
    assert not d.tenant_filter_visible(tv, "b")
    assert d.tenant_filter_visible(who("*", "viewer"), "b")
    assert d.change_visible(None, [])
    assert d.change_visible("a", ["a", "b"])
    assert not d.change_visible("a", ["b"])
    assert not d.change_visible("a", [])


# --------------------------------------------------------------------------------------------
# field masks


def test_site_mask_paths_to_columns():
    assert masks.resolve_mask(d.SITE_MASK, ["name", "power.dg_capacity_kva"]) == ("name", "dg_capacity_kva")
    assert masks.resolve_mask(d.SITE_MASK, ["location"]) == ("latitude", "longitude")
    assert masks.resolve_mask(d.SITE_MASK, ["location.latitude", "location"]) == ("latitude", "longitude")
    assert set(masks.resolve_mask(d.SITE_MASK, ["power"])) == set(d.POWER_COLUMNS)
    star = masks.resolve_mask(d.SITE_MASK, ["*"])
    assert {"name", "region", "latitude", "longitude", "type", "status", *d.POWER_COLUMNS} == set(star)


@pytest.mark.parametrize(
    ("rules", "path", "words"),
    [
        (d.SITE_MASK, "id", "cannot be changed"),
        (d.SITE_MASK, "create_time", "cannot be changed"),
        (d.SITE_MASK, "tenant_ids", "cannot be changed"),
        (d.SITE_MASK, "update_time.seconds", "cannot be changed"),
        (d.SITE_MASK, "colour", "not a field"),
        (d.SITE_MASK, "power.nope", "not a field"),
        (d.SITE_MASK, "location.altitude", "not a field"),
        (d.TENANT_MASK, "id", "cannot be changed"),
        (d.TENANCY_MASK, "site_id", "cannot be changed"),
        (d.TENANCY_MASK, "tenant_id", "cannot be changed"),
        (d.WINDOW_MASK, "site_id", "cannot be changed"),
        (d.WINDOW_MASK, "created_by", "cannot be changed"),
    ],
)
def test_bad_mask_paths_are_named(rules, path, words):
    with pytest.raises(InvalidArgument) as err:
        masks.resolve_mask(rules, ["name" if rules is not d.TENANCY_MASK else "currency_code", path]
                           if rules is not d.WINDOW_MASK else ["description", path])
    assert len(err.value.violations) == 1
    field, description = err.value.violations[0]
    assert field == "update_mask.paths[1]"
    assert path in description and words in description


def test_site_infer_mask_drops_ids_and_output_only():
    present = ["id", "name", "power.solar_kwp", "create_time", "tenant_ids", "location.latitude"]
    assert masks.infer_mask(d.SITE_MASK, present) == ["name", "power.solar_kwp", "location.latitude"]
    assert masks.infer_mask(d.TENANCY_MASK, ["id", "site_id", "monthly_fee_minor"]) == ["monthly_fee_minor"]


# --------------------------------------------------------------------------------------------
# invariants


def test_site_tenant_tenancy_invariants():
    d.check_site({"name": "A", "region": "r"})
    with pytest.raises(d.Invalid) as err:
        d.check_site({"name": " ", "region": ""})
    assert [f for f, _ in err.value.violations] == ["site.name", "site.region"]
    with pytest.raises(d.Invalid):
        d.check_tenant({"name": ""})
    with pytest.raises(d.Invalid) as no_id:
        d.check_site({"id": "", "name": "A", "region": "r"}, creating=True)
    assert no_id.value.violations == [("site.id", "is required")]
    with pytest.raises(d.Invalid) as no_ids:
        d.check_tenancy({"site_id": "", "tenant_id": " "}, creating=True)
    assert [f for f, _ in no_ids.value.violations] == ["tenancy.site_id", "tenancy.tenant_id"]
    with pytest.raises(d.Invalid) as no_tid:
        d.check_tenant({"id": "", "name": "x"}, creating=True)
    assert no_tid.value.violations == [("tenant.id", "is required")]
    d.check_tenancy({"dc_voltage_min_v": 43, "dc_voltage_max_v": 60})
    d.check_tenancy({"dc_voltage_min_v": 43, "dc_voltage_max_v": 0})  # open band
    with pytest.raises(d.Invalid) as band:
        d.check_tenancy({"dc_voltage_min_v": 60, "dc_voltage_max_v": 43})
    assert band.value.violations[0][0] == "tenancy.dc_voltage_max_v"
    with pytest.raises(d.Invalid) as unset:
        d.check_site({"name": "A", "region": "r", "status": "unspecified"})
    assert unset.value.violations[0][0] == "site.status"
    d.check_bbox(-1, 179, 1, -179)  # across the antimeridian is fine
    with pytest.raises(d.Invalid) as box:
        d.check_bbox(1, 0, -1, 1)
    assert box.value.violations[0][0] == "bbox.north_east.latitude"
    t = datetime(2026, 1, 1, tzinfo=UTC)
    d.check_range(t, None)
    with pytest.raises(d.Invalid) as rng:
        d.check_range(t, t)
    assert rng.value.violations[0][0] == "range.end_time"
    assert d.default_site_status("unspecified") == "active"
    assert d.default_site_status("planned") == "planned"


def test_nul_characters_are_refused_by_field():
    d.check_storable_text([("site.name", "ok"), ("site.id", "")])
    with pytest.raises(d.Invalid) as err:
        d.check_storable_text([("site.name", "a\x00b"), ("site.region", "r"), ("window.tenant_ids[2]", "\x00")])
    assert [f for f, _ in err.value.violations] == ["site.name", "window.tenant_ids[2]"]


def test_window_rules():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ok = {"start_time": t0, "end_time": t0 + timedelta(hours=1), "category": "force_majeure",
          "tenant_ids": ["bb", "aa", "bb"]}
    assert d.check_window(ok) == ["bb", "aa"]
    with pytest.raises(d.Invalid) as err:
        d.check_window({**ok, "end_time": t0, "tenant_ids": ["ok", "Bad!"], "category": "unspecified"})
    fields = [f for f, _ in err.value.violations]
    assert fields == ["window.end_time", "window.category", "window.tenant_ids[1]"]
    with pytest.raises(d.Invalid) as missing:
        d.check_window({"site_id": "", "tenant_ids": []}, creating=True)
    assert [f for f, _ in missing.value.violations] == [
        "window.site_id", "window.start_time", "window.end_time", "window.category"]
    d.check_window_tenants(["a"], ["a", "b"], site_id="S-1")
    with pytest.raises(d.Precondition) as pre:
        d.check_window_tenants(["a", "c"], ["a", "b"], site_id="S-1")
    assert pre.value.reason == "TENANT_NOT_ON_SITE" and "c" in str(pre.value)


# --------------------------------------------------------------------------------------------
# pages


def test_page_size_policy():
    assert d.page_size(0) == 50
    assert d.page_size(1) == 1
    assert d.page_size(1000) == 1000
    for bad in (-1, 1001):
        with pytest.raises(d.Invalid) as err:
            d.page_size(bad)
        assert err.value.violations[0][0] == "page.size"


def test_page_tokens_round_trip_and_refuse_tampering():
    codec = d.PageTokens("secret")
    fp = d.query_fingerprint("sites", None, {"region": "nairobi"})
    when = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    token = codec.encode([when, "abc"], fp)
    assert codec.decode(token, fp) == [when, "abc"]
    assert codec.decode("", fp) is None
    other_fp = d.query_fingerprint("sites", None, {"region": "mombasa"})
    tenant_fp = d.query_fingerprint("sites", "safaricom", {"region": "nairobi"})
    assert len({fp, other_fp, tenant_fp}) == 3
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged = base64.urlsafe_b64encode(raw.replace(b"abc", b"abd")).decode().rstrip("=")
    for bad, f in [(token, other_fp), (token, tenant_fp), (forged, fp), ("!!!", fp), ("bm9wZQ", fp),
                   (d.PageTokens("other").encode(["x"], fp), fp)]:
        with pytest.raises(d.Invalid) as err:
            codec.decode(bad, f)
        assert err.value.violations[0][0] == "page.token"


@given(st.lists(st.one_of(st.text(max_size=40), st.integers(), st.booleans()), min_size=1, max_size=4),
       st.text(max_size=20))
def test_page_tokens_property(key, secret):
    codec = d.PageTokens(secret)
    fp = d.query_fingerprint("x", None, {})
    assert codec.decode(codec.encode(key, fp), fp) == key


@given(st.text(max_size=600))
def test_garbage_tokens_never_crash(token):
    codec = d.PageTokens("s")
    fp = d.query_fingerprint("x", None, {})
    if not token:
        assert codec.decode(token, fp) is None
        return
    with pytest.raises(d.Invalid) as err:
        codec.decode(token, fp)
    assert err.value.violations[0][0] == "page.token"


# --------------------------------------------------------------------------------------------
# events


def test_event_subjects_and_tenants():
    assert d.event_subject("site", "created") == "towerco.sites.site.created"
    assert d.event_subject("window", "deleted") == "towerco.sites.window.deleted"
    with pytest.raises(ValueError):
        d.event_subject("planet", "created")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        d.event_subject("site", "exploded")  # type: ignore[arg-type]
    assert d.event_tenants("site", site_tenants=["b", "a"]) == ["a", "b"]
    assert d.event_tenants("tenant", tenant_id="a") == ["a"]
    assert d.event_tenants("tenancy", tenant_id="a", site_tenants=["b"]) == ["a"]
    assert d.event_tenants("window", site_tenants=["a", "b"], window_tenants=[]) == ["a", "b"]
    assert d.event_tenants("window", site_tenants=["a", "b"], window_tenants=["b"]) == ["b"]
