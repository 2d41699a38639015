"""Path templates: every grammar form, parsed and matched (table-driven)."""

from __future__ import annotations

import pytest

from gateway.transcode import pattern

MATCHES = [
    # template, path, expected bindings (None: no match)
    ("/v1/sites", "/v1/sites", {}),
    ("/v1/sites", "/v1/sites/x", None),
    ("/v1/sites/{site_id}", "/v1/sites/NBO-1", {"site_id": "NBO-1"}),
    ("/v1/sites/{site_id}", "/v1/sites/a%20b", {"site_id": "a b"}),
    ("/v1/sites/{site_id}", "/v1/sites/a%2Fb", {"site_id": "a/b"}),  # one segment: fully decoded
    ("/v1/sites/{site_id}", "/v1/sites/", None),  # empty segment is no value
    ("/v1/sites/{site_id}", "/v1/sites/a/b", None),
    ("/v1/sites/{site.id}", "/v1/sites/X1", {"site.id": "X1"}),  # nested field path
    ("/v1/{name=shelves/*}", "/v1/shelves/s1", {"name": "shelves/s1"}),
    ("/v1/{name=shelves/*}", "/v1/books/s1", None),
    ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b%2F2", {"name": "shelves/s1/books/b%2F2"}),  # multi: %2F kept
    ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books", None),
    ("/v1/files/{path=**}", "/v1/files/a/b/c", {"path": "a/b/c"}),
    ("/v1/files/{path=**}", "/v1/files/a", {"path": "a"}),
    ("/v1/files/{path=**}", "/v1/files", {"path": ""}),
    ("/v1/{name=**}/blob", "/v1/a/b/blob", {"name": "a/b"}),
    ("/v1/*/items", "/v1/anything/items", {}),
    ("/v1/**", "/v1/x/y/z", {}),
    ("/v1/{name=shelves/*}:archive", "/v1/shelves/s1:archive", {"name": "shelves/s1"}),
    ("/v1/{name=shelves/*}:archive", "/v1/shelves/s1", None),
    ("/v1/{name=shelves/*}:archive", "/v1/shelves/s1:restore", None),
    ("/api/v1/changes:watch", "/api/v1/changes:watch", {}),
    ("/api/v1/changes:watch", "/api/v1/changes", None),
    ("/v1/{name=**}:download", "/v1/a/b:download", {"name": "a/b"}),
    ("/v1/sites/{site_id}/tenancies", "/v1/sites/S1/tenancies", {"site_id": "S1"}),
    ("/v1/sites/{a}/x/{b}", "/v1/sites/1/x/2", {"a": "1", "b": "2"}),
]


@pytest.mark.parametrize(("template", "path", "expected"), MATCHES)
def test_match(template: str, path: str, expected: dict | None) -> None:
    assert pattern.parse(template).match(path) == expected


BAD = [
    "v1/no-leading-slash",
    "/v1/{unclosed",
    "/v1/closed}",
    "/v1/{a{b}}",
    "/v1//double",
    "/v1/{1bad}",
    "/v1/{a=**}/{b=**}",
    "/v1/{a}/{a}",
    "/v1/x:",
    "/v1/{a={b}}",
]


@pytest.mark.parametrize("template", BAD)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(pattern.TemplateError):
        pattern.parse(template)


def test_verb_and_variables_parsed() -> None:
    t = pattern.parse("/v1/{name=shelves/*/books/*}:archive")
    assert t.verb == "archive"
    assert [(v.field_path, v.multi) for v in t.variables] == [("name", True)]
    assert t.openapi_path() == "/v1/{name}:archive"
    assert t.variable_pattern(t.variables[0]) == "shelves/*/books/*"


def test_specificity_prefers_literals() -> None:
    lit = pattern.parse("/v1/sites/special")
    var = pattern.parse("/v1/sites/{id}")
    dstar = pattern.parse("/v1/{rest=**}")
    assert sorted([dstar, var, lit], key=lambda t: t.specificity) == [lit, var, dstar]


def test_a_path_ending_in_a_declared_verb_is_only_for_verb_templates() -> None:
    """GET /v1/shelves/s1:archive must not reach GetBook's /v1/books/{name}-like templates with
    name "s1:archive"; only ArchiveShelf (POST) matches, so GET is a 405 naming POST."""
    from gateway.transcode import routes

    router = routes.Router(routes.build_routes(routes.discover_services(("testing",))))
    route, params, allowed = router.match("POST", "/v1/shelves/s1:archive")
    assert route is not None and route.method.name == "ArchiveShelf" and params == {"name": "shelves/s1"}
    route, _, allowed = router.match("GET", "/v1/books/b1:archive")
    assert route is None and allowed == []  # no template with that verb fits this path
    route, params, _ = router.match("GET", "/v1/books/b1")
    assert route is not None and params == {"name": "b1"}
