"""OpenAPI 3.1 from the descriptors: every route, proto3 JSON schema rules, comments, errors."""

from __future__ import annotations

import pytest

from gateway import openapi
from gateway.transcode import routes


def _inner(schema: dict) -> dict:
    """An optional property is `anyOf: [schema, null]` (proto3 JSON reads null as the default)."""
    alts = schema.get("anyOf", [])
    if len(alts) == 2 and alts[1] == {"type": "null"}:
        return {**alts[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi.build(routes.build_routes(routes.discover_services(("sites", "testing"))))


def test_every_route_is_documented(spec: dict) -> None:
    rs = routes.build_routes(routes.discover_services(("sites",)))
    ops = {op["operationId"]: op for item in spec["paths"].values() for op in item.values()}
    for r in rs:
        assert ops[r.operation_id]["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert spec["security"] == [{"bearerAuth": []}]


def test_json_mapping_in_schemas(spec: dict) -> None:
    s = spec["components"]["schemas"]
    every = {k: _inner(v) for k, v in s["towerco.testing.v1.Everything"]["properties"].items()}
    # 64-bit integers: strings out, strings or JSON numbers in
    assert every["i64"]["anyOf"][0] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
    assert every["i64"]["anyOf"][1] == {"type": "integer", "format": "int64"}
    assert every["u64"]["anyOf"][0]["format"] == "uint64"
    assert every["i32"] == {"type": "integer", "format": "int32", "description": "int32."}
    # an enum by name or by number (proto3 JSON); open enums keep unknown numbers
    assert every["colour"]["anyOf"] == [{"type": "string", "enum": ["COLOUR_UNSPECIFIED", "COLOUR_RED", "COLOUR_GREEN"]},
                                        {"type": "integer", "format": "int32"}]
    assert every["when"]["format"] == "date-time"
    assert every["took"]["pattern"].endswith("s$")
    assert every["data"]["format"] == "byte"
    assert s["towerco.testing.v1.Everything"]["properties"]["maybeCount"]["anyOf"][1] == {"type": "null"}
    assert "otherName" in every and "renamed" not in every
    assert every["counts"]["additionalProperties"]["anyOf"][0]["format"] == "int64"
    site = s["towerco.sites.v1.Site"]
    assert {"id", "region", "location"} <= set(site["required"])
    assert site["properties"]["createTime"]["readOnly"] is True
    assert site["properties"]["createTime"]["anyOf"][1] == {"type": "null"}  # optional: null reads as unset
    assert site["properties"]["id"]["pattern"] == "(^$)|(^[A-Z0-9][A-Z0-9-]{2,31}$)"  # a rule of non-empty values
    assert site["description"] == "A cell-tower site."  # proto comments
    lat = _inner(s["towerco.common.v1.GeoPoint"]["properties"]["latitude"])
    assert lat["minimum"] == -90 and lat["maximum"] == 90 and lat["type"] == "number"
    status = s["google.rpc.Status"]
    assert set(status["required"]) == {"code", "message", "details"}


def test_operations_parameters(spec: dict) -> None:
    get = spec["paths"]["/api/v1/sites/{site_id}"]["get"]
    assert get["summary"] == "Get one site by id."
    assert get["parameters"][0]["in"] == "path" and get["parameters"][0]["name"] == "site_id"
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/towerco.sites.v1.Site"}
    listing = {p.get("name"): p for p in spec["paths"]["/api/v1/sites"]["get"]["parameters"]}
    assert listing["status"]["schema"]["enum"][0] == "SITE_STATUS_UNSPECIFIED"
    assert "page.size" in listing and "bbox.southWest.latitude" in listing
    patch = spec["paths"]["/api/v1/sites/{site_id}"]["patch"]
    assert patch["parameters"][0]["name"] == "site_id" and "site.id" in patch["parameters"][0]["description"]
    create = spec["paths"]["/api/v1/sites/{site_id}/tenancies"]["post"]  # {tenancy.site_id}, merged
    assert create["parameters"][0]["name"] == "site_id"
    body_ref = patch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.endswith("SitesService_UpdateSite.Body")
    assert "updateMask" in {p.get("name") for p in patch["parameters"]}
    echo = {p.get("name"): p for p in spec["paths"]["/v1/echo"]["get"]["parameters"]}
    assert echo["tag"]["schema"]["type"] == "array" and echo["tag"]["explode"] is True
    assert echo["everything.when"]["schema"]["format"] == "date-time"
    watch = spec["paths"]["/api/v1/changes:watch"]["get"]
    assert watch["x-server-streaming"] is True
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    assert {"access_token", "Last-Event-ID", "afterSequence"} <= {p.get("name") for p in watch["parameters"]}


def test_comments_come_from_the_descriptor_set() -> None:
    comments = openapi.load_comments()
    assert comments["towerco.sites.v1.SitesService.CreateSite"] == "Create a site."
    assert comments["towerco.sites.v1.SiteStatus.SITE_STATUS_ACTIVE"] == "On air."


def test_the_spec_states_the_rules_the_server_enforces(spec: dict) -> None:
    """#9: ids in paths, required fields, update masks, orderings, header formats (one source)."""
    import re

    s = spec["components"]["schemas"]
    get_site = {p.get("name"): p for p in spec["paths"]["/api/v1/sites/{site_id}"]["get"]["parameters"]}
    assert get_site["site_id"]["schema"]["maxLength"] == 32 and get_site["site_id"]["schema"]["minLength"] == 1
    tenancies = {p.get("name"): p for p in spec["paths"]["/api/v1/sites/{site_id}/tenancies"]["post"]["parameters"]}
    assert tenancies["site_id"]["schema"]["pattern"] == "(^$)|(^[A-Z0-9][A-Z0-9-]{2,31}$)"  # binds tenancy.site_id
    # required means present and non-empty; a create body does not repeat what the path gives
    site = s["towerco.sites.v1.Site"]["properties"]
    assert site["name"]["minLength"] == 1 and "name" in s["towerco.sites.v1.Site"]["required"]
    create_body = s["SitesService_CreateTenancy.Body"]
    assert "siteId" not in create_body.get("required", []) and "tenantId" in create_body["required"]
    # an update body (patch mode) requires nothing beyond the interceptor's rules
    patch_body = s["SitesService_UpdateSite.Body"]
    assert "required" not in patch_body and "minLength" not in _inner(patch_body["properties"]["name"])
    assert _inner(patch_body["properties"]["id"])["pattern"] == "(^$)|(^[A-Z0-9][A-Z0-9-]{2,31}$)"
    assert patch_body["properties"]["id"]["readOnly"] is True  # given by the path
    patch = {p.get("name"): p for p in spec["paths"]["/api/v1/sites/{site_id}"]["patch"]["parameters"]}
    mask = re.compile(patch["updateMask"]["schema"]["pattern"])
    assert mask.match("name,power.solarKwp") and mask.match("power.solar_kwp") and mask.match("*")
    assert not mask.match("id") and not mask.match("createTime") and not mask.match("name,")
    # the declared ordering of TimeRange, on the schema and on flattened query parameters
    windows = spec["paths"]["/api/v1/windows"]["get"]
    assert windows["x-towerco-ordered"] == [{"lesser": "range.startTime", "greater": "range.endTime", "in": "query"}]
    create_window = spec["paths"]["/api/v1/sites/{site_id}/windows"]["post"]
    assert create_window["x-towerco-ordered"] == [{"lesser": "startTime", "greater": "endTime", "in": "body"}]
    assert s["towerco.sites.v1.Site"]["additionalProperties"] is False  # unknown fields are refused
    # headers: the gateway's own patterns
    params = spec["components"]["parameters"]
    timeout = re.compile(params["XRequestTimeout"]["schema"]["pattern"])
    assert all(timeout.match(v) for v in ("2.5", "2.5s", "1500ms", "1", "300", "999.999"))
    assert not any(timeout.match(v) for v in ("", "0", "0.5", "800ms", "1.2345", "soon", "-1", "1000"))
    cid = re.compile(params["XCorrelationId"]["schema"]["pattern"])
    assert cid.match("abc-1.2:3_4") and not cid.match("") and not cid.match("a b")
    assert "415" in spec["paths"]["/api/v1/sites"]["post"]["responses"]
