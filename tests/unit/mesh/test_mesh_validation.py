"""Declarative validation rules (mesh.validation).

Every rule kind is exercised on a test-only message type built at import time in the default
descriptor pool (so the tests do not depend on how the product .protos use the rules), plus a few
checks on the real contracts.
"""

from __future__ import annotations

import math

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from towerco.validate.v1 import validate_pb2

from mesh.errors import InvalidArgument
from mesh.validation import has_rules, validate, violations

F = descriptor_pb2.FieldDescriptorProto


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int, *, repeated: bool = False,
           type_name: str = "", optional: bool = False, **rules) -> None:
    fd = msg.field.add(name=name, number=number, type=ftype,
                       label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        fd.type_name = type_name
    if optional:
        fd.proto3_optional = True
        fd.oneof_index = len(msg.oneof_decl)
        msg.oneof_decl.add(name=f"_{name}")
    if rules:
        fd.options.Extensions[validate_pb2.field].CopyFrom(validate_pb2.FieldRules(**rules))


def _build():
    pkg = "towerco.testvalidation.v1"
    fdp = descriptor_pb2.FileDescriptorProto(name="towerco/testvalidation/v1/t.proto", package=pkg, syntax="proto3")
    fdp.dependency.append("towerco/validate/v1/validate.proto")
    color = fdp.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="COLOR_RED", number=1)

    inner = fdp.message_type.add(name="Inner")
    _field(inner, "code", 1, F.TYPE_STRING, pattern="^[A-Z]{3}$")
    _field(inner, "level", 2, F.TYPE_DOUBLE, gte=0, lte=1, finite=True)
    _field(inner, "child", 3, F.TYPE_MESSAGE, type_name=f".{pkg}.Inner")  # recursive

    plain = fdp.message_type.add(name="Plain")
    _field(plain, "anything", 1, F.TYPE_STRING)

    outer = fdp.message_type.add(name="Outer")
    _field(outer, "name", 1, F.TYPE_STRING, required=True, min_len=2, max_len=5)
    _field(outer, "count", 2, F.TYPE_INT32, gt=0, lt=10)
    _field(outer, "color", 3, F.TYPE_ENUM, type_name=f".{pkg}.Color", defined_only=True)
    _field(outer, "must_color", 4, F.TYPE_ENUM, type_name=f".{pkg}.Color", required=True)
    _field(outer, "inner", 5, F.TYPE_MESSAGE, type_name=f".{pkg}.Inner", required=True)
    _field(outer, "items", 6, F.TYPE_MESSAGE, type_name=f".{pkg}.Inner", repeated=True, min_items=1, max_items=3)
    _field(outer, "tags", 7, F.TYPE_STRING, repeated=True, max_len=3, max_items=4)
    _field(outer, "ratio", 8, F.TYPE_FLOAT, finite=True)
    _field(outer, "maybe", 9, F.TYPE_INT64, optional=True, gte=5)
    _field(outer, "blob", 10, F.TYPE_BYTES, max_len=4)
    _field(outer, "plain", 11, F.TYPE_MESSAGE, type_name=f".{pkg}.Plain")
    entry = outer.nested_type.add(name="ByKeyEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_MESSAGE, type_name=f".{pkg}.Inner")
    _field(outer, "by_key", 12, F.TYPE_MESSAGE, type_name=f".{pkg}.Outer.ByKeyEntry", repeated=True)

    pool = descriptor_pool.Default()
    try:
        file_desc = pool.FindFileByName(fdp.name)
    except KeyError:
        file_desc = pool.Add(fdp) and pool.FindFileByName(fdp.name)
    classes = {n: message_factory.GetMessageClass(file_desc.message_types_by_name[n]) for n in ("Outer", "Inner", "Plain")}
    return classes["Outer"], classes["Inner"], classes["Plain"]


Outer, Inner, Plain = _build()


def valid() -> Outer:
    m = Outer(name="abc", count=3, color=1, must_color=1, tags=["a", "bb"])
    m.inner.code = "ABC"
    m.items.add(level=0.5)
    return m


def fields(msg) -> dict[str, str]:
    return {v.field: v.description for v in violations(msg)}


def test_valid_message_has_no_violations() -> None:
    assert violations(valid()) == []
    validate(valid())


def test_required_kinds() -> None:
    m = Outer()
    got = fields(m)
    assert got["name"] == "is required"
    assert got["must_color"] == "is required"  # enum: non-zero
    assert got["inner"] == "is required"  # message: present
    assert got["items"] == "must have at least 1 items"


def test_string_lengths_in_code_points() -> None:
    m = valid()
    m.name = "a"
    assert fields(m) == {"name": "must be at least 2 characters long"}
    m.name = "ééééé"  # 5 code points, 10 bytes
    assert fields(m) == {}
    m.name = "abcdef"
    assert fields(m) == {"name": "must be at most 5 characters long"}
    m = valid()
    m.blob = b"12345"
    assert fields(m) == {"blob": "must be at most 4 bytes long"}


def test_numeric_bounds_exclusive_and_inclusive() -> None:
    m = valid()
    m.count = 0
    assert fields(m) == {"count": "must be > 0 and < 10"}
    m.count = 10
    assert fields(m) == {"count": "must be > 0 and < 10"}
    m.count = 9
    assert fields(m) == {}


def test_bounds_on_explicit_presence_only_when_set() -> None:
    m = valid()
    assert fields(m) == {}  # maybe unset: not checked
    m.maybe = 0
    assert fields(m) == {"maybe": "must be >= 5"}
    m.maybe = 5
    assert fields(m) == {}


def test_enum_defined_only() -> None:
    m = valid()
    m.color = 7
    assert fields(m) == {"color": "must be one of the defined values"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finite(bad: float) -> None:
    m = valid()
    m.ratio = bad
    assert fields(m) == {"ratio": "must be a finite number"}
    m = valid()
    m.items[0].level = bad
    assert fields(m) == {"items[0].level": "must be a finite number"}  # one violation per value


def test_pattern_full_match_on_non_empty_strings() -> None:
    m = valid()
    m.inner.code = "ABCD"
    assert fields(m) == {"inner.code": "must match ^[A-Z]{3}$"}
    m.inner.code = "xABC"
    assert "inner.code" in fields(m)
    m.inner.code = ""
    assert fields(m) == {}


def test_nested_paths_and_repeated_indexes() -> None:
    m = valid()
    m.items.add(level=2.0)
    m.items.add(code="no")
    m.inner.child.child.level = -1
    assert fields(m) == {
        "inner.child.child.level": "must be >= 0 and <= 1",
        "items[1].level": "must be >= 0 and <= 1",
        "items[2].code": "must match ^[A-Z]{3}$",
    }


def test_repeated_scalar_elements_and_counts() -> None:
    m = valid()
    m.tags.extend(["ok", "toolong"])
    assert fields(m) == {"tags[3]": "must be at most 3 characters long"}
    m.tags.append("x")
    assert fields(m) == {"tags": "must have at most 4 items"}  # the list is not walked then
    m = valid()
    for _ in range(3):
        m.items.add()
    assert fields(m) == {"items": "must have at most 3 items"}


def test_map_values_are_validated_with_key_paths() -> None:
    m = valid()
    m.by_key["b"].code = "bad"
    m.by_key["a"].level = 3
    assert fields(m) == {"by_key[a].level": "must be >= 0 and <= 1", "by_key[b].code": "must match ^[A-Z]{3}$"}


def test_types_without_rules_are_free() -> None:
    assert not has_rules(Plain.DESCRIPTOR)
    assert has_rules(Outer.DESCRIPTOR) and has_rules(Inner.DESCRIPTOR)
    assert violations(Plain(anything="x" * 10_000)) == []


def test_validate_raises_invalid_argument_with_all_violations() -> None:
    m = valid()
    m.name = ""
    m.count = 99
    with pytest.raises(InvalidArgument) as err:
        validate(m)
    assert err.value.details == "invalid Outer: name is required (and 1 more)"
    assert [v.field for v in err.value.violations] == ["name", "count"]


def test_real_contracts() -> None:
    from towerco.common.v1 import common_pb2
    from towerco.sites.v1 import sites_pb2

    bad = sites_pb2.ListSitesRequest(page=common_pb2.PageRequest(size=5000))
    assert fields(bad) == {"page.size": "must be >= 0 and <= 1000"}
    req = sites_pb2.GetSiteRequest()
    assert fields(req) == {"site_id": "is required"}
    # google.api.field_behavior REQUIRED is documentation only: Site.location is not enforced
    site = sites_pb2.Site(id="NBO-0001", name="n", region="r")
    assert "site.location" not in fields(sites_pb2.UpdateSiteRequest(site=site))


# ------------------------------------------------------------------ rules the OpenAPI also states


def test_time_range_order_is_a_declared_message_rule() -> None:
    from google.protobuf import timestamp_pb2
    from towerco.common.v1 import common_pb2
    from towerco.kpi.v1 import kpi_pb2

    def rng(a: int, b: int | None) -> common_pb2.TimeRange:
        r = common_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=a))
        if b is not None:
            r.end_time.seconds = b
        return r

    assert violations(kpi_pb2.GetSiteKpisRequest(site_id="S-1", range=rng(60, 120))) == []
    for bad in (rng(120, 60), rng(60, 60)):
        found = violations(kpi_pb2.GetSiteKpisRequest(site_id="S-1", range=bad))
        assert [(v.field, v.description) for v in found] == [("range.end_time", "must be after start_time")]
    # one end missing is not an ordering question (the handler says which end is required)
    assert violations(kpi_pb2.GetSiteKpisRequest(site_id="S-1", range=rng(60, None))) == []
    nanos = common_pb2.TimeRange(start_time=timestamp_pb2.Timestamp(seconds=60, nanos=2),
                                 end_time=timestamp_pb2.Timestamp(seconds=60, nanos=1))
    assert [v.field for v in violations(kpi_pb2.GetSiteKpisRequest(site_id="S-1", range=nanos))] == ["range.end_time"]


def test_update_mask_paths_are_declared_and_checked() -> None:
    from google.protobuf import field_mask_pb2
    from towerco.sites.v1 import sites_pb2

    def req(*paths: str) -> sites_pb2.UpdateTenantRequest:
        return sites_pb2.UpdateTenantRequest(tenant=sites_pb2.Tenant(id="acme", name="Acme"),
                                             update_mask=field_mask_pb2.FieldMask(paths=list(paths)))

    assert violations(req("name")) == [] and violations(req("*")) == []
    assert violations(sites_pb2.UpdateTenantRequest(tenant=sites_pb2.Tenant(id="acme"))) == []  # no mask
    found = violations(req("name", "id", "power.solar_kwp"))
    assert [v.field for v in found] == ["update_mask.paths[1]", "update_mask.paths[2]"]
    assert "one of: name" in found[0].description


def test_declared_mask_paths_are_the_sites_domain_masks() -> None:
    """The OpenAPI publishes the declared paths; the Sites domain maps the same paths to columns."""
    from towerco.sites.v1 import sites_pb2

    from services.sites import domain

    for request, entity in [(sites_pb2.UpdateSiteRequest, "site"), (sites_pb2.UpdateTenantRequest, "tenant"),
                            (sites_pb2.UpdateTenancyRequest, "tenancy"), (sites_pb2.UpdateWindowRequest, "window")]:
        fd = request.DESCRIPTOR.fields_by_name["update_mask"]
        declared = list(fd.GetOptions().Extensions[validate_pb2.field].mask_paths)
        assert declared == list(domain.MASKS[entity].paths), entity
