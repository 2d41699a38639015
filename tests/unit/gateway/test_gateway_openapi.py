"""OpenAPI 3.1 from the descriptors: every route, proto3 JSON schema rules, comments, errors."""

from __future__ import annotations

import pytest

from gateway import openapi
from gateway.transcode import routes


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
    every = s["towerco.testing.v1.Everything"]["properties"]
    assert every["i64"]["type"] == "string" and every["i64"]["format"] == "int64"
    assert every["u64"]["format"] == "uint64"
    assert every["i32"] == {"type": "integer", "format": "int32", "description": "int32."}
    assert every["colour"]["enum"] == ["COLOUR_UNSPECIFIED", "COLOUR_RED", "COLOUR_GREEN"]
    assert every["when"]["format"] == "date-time"
    assert every["took"]["pattern"].endswith("s$")
    assert every["data"]["format"] == "byte"
    assert every["maybeCount"]["anyOf"][1] == {"type": "null"}
    assert "otherName" in every and "renamed" not in every
    assert every["counts"]["additionalProperties"]["format"] == "int64"
    site = s["towerco.sites.v1.Site"]
    assert {"id", "region", "location"} <= set(site["required"])
    assert site["properties"]["createTime"]["readOnly"] is True
    assert site["properties"]["id"]["pattern"] == "^[A-Z0-9][A-Z0-9-]{2,31}$"
    assert site["description"] == "A cell-tower site."  # proto comments
    lat = s["towerco.common.v1.GeoPoint"]["properties"]["latitude"]
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
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("towerco.sites.v1.Site")
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
