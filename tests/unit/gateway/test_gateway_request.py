"""Request building from every route of the test contract: body modes, path, query, PATCH mask."""

from __future__ import annotations

import orjson
import pytest
from google.protobuf import json_format

from gateway.transcode import codec, request, routes

ROUTER = routes.Router(routes.build_routes(routes.discover_services(("testing", "sites"))))
DECODER = codec.Decoder()


def build(method: str, url: str, body: object = None, decoder: codec.Decoder = DECODER):
    path, _, qs = url.partition("?")
    route, params, _ = ROUTER.match(method, path)
    assert route is not None, (method, path)
    from urllib.parse import parse_qsl

    msg = request.build(
        request_cls=route.request_cls,
        body_rule=route.body,
        http_method=method,
        path_params=params,
        query=parse_qsl(qs, keep_blank_values=True),
        body=b"" if body is None else orjson.dumps(body),
        decoder=decoder,
    )
    return route, json_format.MessageToDict(msg, preserving_proto_field_name=True)


CASES = [
    # method, url, body, expected RPC, expected request (proto field names)
    ("GET", "/v1/shelves/s1/books/b1", None, "GetBook", {"name": "shelves/s1/books/b1"}),
    ("GET", "/v1/books/b1?view=FULL", None, "GetBook", {"name": "b1", "view": "FULL"}),  # additional binding
    ("GET", "/v1/files/a/b/c.txt", None, "GetFile", {"path": "a/b/c.txt"}),
    ("POST", "/v1/shelves/s1:archive", {"reason": "full", "keep": "60s"}, "ArchiveShelf",
     {"name": "shelves/s1", "reason": "full", "keep": "60s"}),
    # a body may repeat a path field with the same value (a different one is refused: see below)
    ("POST", "/v1/shelves/s1:archive", {"name": "shelves/s1"}, "ArchiveShelf", {"name": "shelves/s1"}),
    ("POST", "/v1/shelves/s2/books", {"id": "b1", "title": "T"}, "CreateBook",
     {"book": {"id": "b1", "shelf": "s2", "title": "T"}}),
    ("POST", "/v1/shelves/s2/books?dry_run=true", {"id": "b1"}, "CreateBook",
     {"book": {"id": "b1", "shelf": "s2"}, "dry_run": True}),
    ("POST", "/v1/shelves/s2/books?dryRun=1", {}, "CreateBook", {"book": {"shelf": "s2"}, "dry_run": True}),
    # PATCH infers the mask from the keys present (nested objects recurse)
    ("PATCH", "/v1/books/b1", {"title": "T", "author": {"name": "A", "born": 1970}}, "UpdateBook",
     {"book": {"id": "b1", "title": "T", "author": {"name": "A", "born": 1970}},
      "update_mask": "title,author.name,author.born"}),
    ("PATCH", "/v1/books/b1", {"author": {}, "publishTime": "2026-01-01T00:00:00Z"}, "UpdateBook",
     {"book": {"id": "b1", "author": {}, "publish_time": "2026-01-01T00:00:00Z"}, "update_mask": "author,publishTime"}),
    # ... but an explicit mask wins
    ("PATCH", "/v1/books/b1?updateMask=title", {"title": "T", "pages": "3"}, "UpdateBook",
     {"book": {"id": "b1", "title": "T", "pages": "3"}, "update_mask": "title"}),
    ("PATCH", "/v1/books/b1?update_mask=author.born", {"title": "T"}, "UpdateBook",
     {"book": {"id": "b1", "title": "T"}, "update_mask": "author.born"}),
    # query parameters: scalars, repeated, enums by name and number, nested, WKTs, wrappers
    ("GET", "/v1/echo?tag=a&tag=b", None, "Echo", {"tag": ["a", "b"]}),
    ("GET", "/v1/echo?everything.i64=-5&everything.u64=7&everything.flag=true", None, "Echo",
     {"everything": {"i64": "-5", "u64": "7", "flag": True}}),
    ("GET", "/v1/echo?everything.colour=COLOUR_GREEN&everything.colours=COLOUR_RED&everything.colours=2", None, "Echo",
     {"everything": {"colour": "COLOUR_GREEN", "colours": ["COLOUR_RED", "COLOUR_GREEN"]}}),
    ("GET", "/v1/echo?everything.inner.child.label=deep&everything.inner.count=3", None, "Echo",
     {"everything": {"inner": {"count": "3", "child": {"label": "deep"}}}}),
    ("GET", "/v1/echo?everything.when=2026-01-31T12:00:00Z&everything.took=0.25s&everything.mask=a,bC", None, "Echo",
     {"everything": {"when": "2026-01-31T12:00:00Z", "took": "0.250s", "mask": "a,bC"}}),
    ("GET", "/v1/echo?everything.maybeCount=0&everything.maybe_text=&everything.db=NaN", None, "Echo",
     {"everything": {"maybe_count": "0", "maybe_text": "", "db": "NaN"}}),
    ("GET", "/v1/echo?everything.data=aGk%3D&everything.times=2026-01-01T00:00:00Z", None, "Echo",
     {"everything": {"data": "aGk=", "times": ["2026-01-01T00:00:00Z"]}}),
    ("GET", "/v1/echo?everything.otherName=x&everything.opt=0", None, "Echo", {"everything": {"renamed": "x", "opt": 0}}),
    # body "*" takes everything from the body, body "field" one field
    ("POST", "/v1/echo", {"everything": {"i64": 1}, "tag": ["x"]}, "Echo", {"everything": {"i64": "1"}, "tag": ["x"]}),
    ("PUT", "/v1/echo/hello", {"i32": 4}, "Echo", {"everything": {"text": "hello", "i32": 4}}),
    # the Sites contract
    ("GET", "/api/v1/sites/NBO-1", None, "GetSite", {"site_id": "NBO-1"}),
    ("GET", "/api/v1/sites?status=SITE_STATUS_ACTIVE&page.size=10&bbox.southWest.latitude=-1.5", None, "ListSites",
     {"status": "SITE_STATUS_ACTIVE", "page": {"size": 10}, "bbox": {"south_west": {"latitude": -1.5}}}),
    ("GET", "/api/v1/sites/S1/tenancies", None, "ListTenancies", {"site_id": "S1"}),
    ("GET", "/api/v1/tenancies?tenantId=airtel", None, "ListTenancies", {"tenant_id": "airtel"}),
    ("PATCH", "/api/v1/sites/S1", {"name": "N", "power": {"solarKwp": 5}}, "UpdateSite",
     {"site": {"id": "S1", "name": "N", "power": {"solar_kwp": 5.0}}, "update_mask": "name,power.solarKwp"}),
    ("GET", "/api/v1/changes:watch?afterSequence=42", None, "WatchChanges", {"after_sequence": "42"}),
]


@pytest.mark.parametrize(("method", "url", "body", "rpc", "expected"), CASES)
def test_transcoding(method: str, url: str, body: object, rpc: str, expected: dict) -> None:
    route, got = build(method, url, body)
    assert route.method.name == rpc
    assert got == expected


BAD = [
    # method, url, body, violated field, words in its description
    ("GET", "/v1/echo?nope=1", None, "nope", "unknown query parameter"),
    ("GET", "/v1/echo?everything.nope=1", None, "everything.nope", "unknown query parameter"),
    ("GET", "/v1/echo?everything.i32=abc", None, "everything.i32", "integer"),
    ("GET", "/v1/echo?everything.colour=PURPLE", None, "everything.colour", "COLOUR_RED"),
    ("GET", "/v1/echo?everything.i32=1&everything.i32=2", None, "everything.i32", "more than once"),
    ("GET", "/v1/echo?everything.inner=x", None, "everything.inner", "message"),
    ("GET", "/v1/echo?everything.counts=x", None, "everything.counts", "map"),
    ("GET", "/v1/echo?everything.when=never", None, "everything.when", "RFC 3339"),
    ("GET", "/v1/echo?everything.flag=maybe", None, "everything.flag", "true or false"),
    ("POST", "/v1/echo?tag=a", {}, "tag", "body"),  # body "*": no query parameters
    ("POST", "/v1/shelves/s2/books?book.title=x", {}, "book.title", "body"),
    ("PUT", "/v1/echo/hi?everything.i32=1", {}, "everything.i32", "body"),
    ("GET", "/v1/books/b1?name=other", None, "name", "path"),
    ("POST", "/v1/shelves/s2/books", {"id": "b1", "pages": "many"}, "book.pages", "integer"),
    ("POST", "/v1/shelves/s2/books", {"id": "b1", "colour": 1}, "book.colour", "unknown field"),
    ("POST", "/v1/echo", {"everything": {"inners": [{"count": []}]}}, "everything.inners[0].count", "integer"),
    ("GET", "/api/v1/changes:watch?after_sequence=x", None, "after_sequence", "integer"),
]


@pytest.mark.parametrize(("method", "url", "body", "field", "words"), BAD)
def test_bad_requests_name_the_field(method: str, url: str, body: object, field: str, words: str) -> None:
    with pytest.raises(request.TranscodeError) as info:
        build(method, url, body)
    found = {v.field: v.description for v in info.value.violations}
    assert field in found, found
    assert words.lower() in found[field].lower()


def test_unknown_body_fields_can_be_ignored_by_config() -> None:
    _, got = build("POST", "/v1/shelves/s2/books", {"id": "b1", "colour": 1}, codec.Decoder(ignore_unknown=True))
    assert got == {"book": {"id": "b1", "shelf": "s2"}}


def test_non_json_body_and_body_on_bodiless_method() -> None:
    route, params, _ = ROUTER.match("POST", "/v1/shelves/s1:archive")
    with pytest.raises(request.TranscodeError, match="not valid JSON"):
        request.build(request_cls=route.request_cls, body_rule=route.body, http_method="POST", path_params=params,
                      query=[], body=b"{nope", decoder=DECODER)
    route, params, _ = ROUTER.match("GET", "/v1/books/b1")
    with pytest.raises(request.TranscodeError, match="no request body"):
        request.build(request_cls=route.request_cls, body_rule=route.body, http_method="GET", path_params=params,
                      query=[], body=b'{"a": 1}', decoder=DECODER)


def test_response_body_picks_one_field() -> None:
    from towerco.testing.v1 import transcoding_pb2 as pb

    resp = pb.CreateBookResponse(book=pb.Book(id="b", pages=3), etag="e")
    assert request.encode_response(resp, "book") == {"id": "b", "pages": "3"}
    assert request.encode_response(resp, "") == {"book": {"id": "b", "pages": "3"}, "etag": "e"}
    assert request.encode_response(pb.CreateBookResponse(), "book") == {}


def test_routes_and_405() -> None:
    route, _, allowed = ROUTER.match("DELETE", "/v1/echo")
    assert route is None and set(allowed) == {"GET", "POST"}
    assert ROUTER.match("GET", "/v1/nothing/here/at/all/x")[0] is None


def test_test_contract_is_hidden_by_default() -> None:
    names = [s.full_name for s in routes.discover_services()]
    assert "towerco.sites.v1.SitesService" in names
    assert not any(n.startswith("towerco.testing.") for n in names)


def test_inferred_mask_paths_are_proto_names() -> None:
    route, params, _ = ROUTER.match("PATCH", "/api/v1/sites/S1")
    msg = request.build(request_cls=route.request_cls, body_rule=route.body, http_method="PATCH", path_params=params,
                        query=[], body=b'{"power": {"solarKwp": 5, "dg_capacity_kva": 1}, "name": "n"}', decoder=DECODER)
    assert list(msg.update_mask.paths) == ["power.solar_kwp", "power.dg_capacity_kva", "name"]


def test_a_body_contradicting_the_path_is_refused() -> None:
    """grpc-gateway lets the path silently win; here the caller learns that its body was wrong."""
    with pytest.raises(request.TranscodeError) as err:
        build("POST", "/v1/shelves/s1:archive", {"name": "shelves/zzz"})
    [v] = err.value.violations
    assert v.field == "name" and "shelves/zzz" in v.description and "shelves/s1" in v.description
    with pytest.raises(request.TranscodeError):
        build("POST", "/v1/shelves/s2/books", {"id": "b1", "shelf": "s9"})
