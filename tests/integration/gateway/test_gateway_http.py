"""The gateway over real HTTP (uvicorn) in front of a real grpc.aio upstream (the test contract)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from mesh.auth import mint_token

ERROR_TABLE = [
    # gRPC code number, HTTP status
    (1, 499), (2, 500), (3, 400), (4, 504), (5, 404), (6, 409), (7, 403), (8, 429),
    (9, 400), (10, 409), (11, 400), (12, 501), (13, 500), (14, 503), (15, 500), (16, 401),
]


async def test_transcoded_round_trip(gw) -> None:
    client, servicer = gw
    r = await client.post("/v1/shelves/s1/books", json={"id": "b1", "title": "T", "pages": 12})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"id": "b1", "shelf": "s1", "title": "T", "pages": "12", "publishTime": "2023-11-14T22:13:20Z"}
    r = await client.patch("/v1/books/b1", json={"title": "New", "author": {"born": 1970}})
    assert r.json() == {"book": {"id": "b1", "title": "New", "author": {"born": 1970}}, "updateMask": "title,author.born"}
    r = await client.get("/v1/shelves/a/books/b%2Fc", params={"view": "v"})
    assert r.json() == {"name": "shelves/a/books/b%2Fc", "view": "v"}
    r = await client.get("/v1/files/x/y/z.txt")
    assert r.json() == {"path": "x/y/z.txt"}


@pytest.mark.parametrize(("code", "http"), ERROR_TABLE)
async def test_error_mapping_over_http(gw, code: int, http: int) -> None:
    client, _ = gw
    r = await client.post("/v1/errors:raise", json={"code": code, "message": "boom details", "violation": "a.b:bad"})
    assert r.status_code == http
    body = r.json()
    assert body["code"] == code
    if http == 500:
        assert body["message"] != "boom details"
        assert body["details"][0]["requestId"] == r.headers["x-correlation-id"]
    else:
        assert body["message"] == "boom details"
        assert body["details"][0]["fieldViolations"] == [{"field": "a.b", "description": "bad"}]
    assert ("www-authenticate" in r.headers) == (http == 401)
    assert ("retry-after" in r.headers) == (http in (429, 503))


async def test_retry_after_from_upstream_retry_info(gw) -> None:
    client, _ = gw
    r = await client.post("/v1/errors:raise", json={"code": 8, "message": "slow down", "retryAfterS": 7, "reason": "QUOTA"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    types = [d["@type"].rsplit("/", 1)[1] for d in r.json()["details"]]
    assert types == ["google.rpc.RetryInfo", "google.rpc.ErrorInfo"]


async def test_bad_input_is_400_with_violations_and_never_reaches_upstream(gw) -> None:
    client, servicer = gw
    before = servicer.calls
    for method, url, kwargs in [
        ("GET", "/v1/echo?nope=1", {}),
        ("GET", "/v1/echo?everything.i32=x", {}),
        ("POST", "/v1/shelves/s1/books", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/shelves/s1/books", {"json": {"id": "b", "unknown": 1}}),
        ("POST", "/v1/shelves/s1/books", {"json": ["a list"]}),
        ("GET", "/v1/books/b1", {"content": b'{"a": 1}'}),
    ]:
        r = await client.request(method, url, **kwargs)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["code"] == 3
    assert servicer.calls == before


async def test_strict_parsing_refuses_what_the_spec_does_not_allow(gw) -> None:
    """Lenient readings the outside probe found (#9): each is a clear 4xx, never reaches upstream."""
    client, servicer = gw
    before = servicer.calls
    for method, url, kwargs, status, field in [
        ("GET", "/v1/echo?everything.when=2026-01-31T12:00:00%2B99:00", {}, 400, "everything.when"),
        ("GET", "/v1/echo?everything.when=2026-01-31T12:00:00-24:00", {}, 400, "everything.when"),
        ("GET", "/v1/echo?everything.i32=1e3", {}, 400, "everything.i32"),
        ("GET", "/v1/echo?everything.i32=1.0", {}, 400, "everything.i32"),
        ("POST", "/v1/shelves/s1/books", {"content": b'{"id": "b"}', "headers": {"content-type": "text/plain"}},
         415, None),
        ("POST", "/v1/shelves/s1/books", {"content": b'{"id": "b"}'}, 415, None),
        ("GET", "/v1/echo", {"headers": {"x-correlation-id": ""}}, 400, "X-Correlation-ID"),
        ("GET", "/v1/echo", {"headers": {"x-correlation-id": "has space"}}, 400, "X-Correlation-ID"),
        ("GET", "/v1/echo", {"headers": {"x-request-timeout": ""}}, 400, "X-Request-Timeout"),
        ("GET", "/v1/echo", {"headers": {"x-request-timeout": "0"}}, 400, "X-Request-Timeout"),
        ("GET", "/v1/echo", {"headers": {"x-request-timeout": "800ms"}}, 400, "X-Request-Timeout"),
        ("GET", "/v1/echo", {"headers": {"x-request-timeout": "1.2345"}}, 400, "X-Request-Timeout"),
        ("GET", "/v1/echo", {"headers": {"x-request-timeout": "soon"}}, 400, "X-Request-Timeout"),
    ]:
        r = await client.request(method, url, **kwargs)
        assert r.status_code == status, (url, kwargs, r.text)
        body = r.json()
        assert body["code"] == 3 and body["message"], body
        if field:
            fields = [v["field"] for d in body["details"] for v in d.get("fieldViolations", [])]
            assert field in fields, body
    assert servicer.calls == before
    # the same values in their valid spelling are accepted
    for kwargs in [{"headers": {"x-correlation-id": "ok.id:1-2_3", "x-request-timeout": "1500ms"}},
                   {"headers": {"x-request-timeout": "1"}}, {"headers": {"x-request-timeout": "2.5s"}}]:
        r = await client.get("/v1/echo?everything.when=2026-01-31T12:00:00%2B23:59&everything.i32=1000", **kwargs)
        assert r.status_code == 200, r.text
    r = await client.post("/v1/shelves/s1/books", content=b'{"id": "b"}',
                          headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


async def test_unknown_route_and_method(gw) -> None:
    client, _ = gw
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["code"] == 5
    r = await client.delete("/v1/echo")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}


async def test_auth_is_checked_before_upstream_and_token_forwarded(make_gateway, token) -> None:
    async with make_gateway() as (client, servicer, app, base, server):
        r = await client.get("/v1/echo")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = await client.get("/v1/echo", headers={"authorization": "Bearer not-a-jwt"})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        expired = mint_token(subject="x", tenant="*", roles=["admin"], ttl_s=-60)
        r = await client.get("/v1/echo", headers={"authorization": f"Bearer {expired}"})
        assert r.status_code == 401
        r = await client.get("/v1/echo", headers={"authorization": "Basic dXNlcjpwYXNz"})
        assert r.status_code == 401
        assert servicer.calls == 0
        r = await client.get("/v1/echo", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert r.json()["authorization"] == f"Bearer {token}"


async def test_correlation_id_accepted_generated_echoed_forwarded(gw) -> None:
    client, servicer = gw
    r = await client.get("/v1/echo", headers={"x-correlation-id": "req-42"})
    assert r.headers["x-correlation-id"] == "req-42"
    assert r.json()["correlationId"] == "req-42"
    r = await client.get("/v1/echo")
    cid = r.headers["x-correlation-id"]
    assert len(cid) == 32 and r.json()["correlationId"] == cid
    r = await client.get("/v1/nothing")
    assert r.headers["x-correlation-id"]
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await client.get("/v1/echo", headers={"traceparent": trace, "tracestate": "k=v"})
    assert servicer.last_metadata["traceparent"] == trace and servicer.last_metadata["tracestate"] == "k=v"


async def test_deadline_default_headers_and_504(gw) -> None:
    client, _ = gw
    r = await client.get("/v1/echo")
    assert 9.0 < r.json()["deadlineS"] <= 10.1  # default 10 s
    r = await client.get("/v1/echo", headers={"grpc-timeout": "2S"})
    assert 1.0 < r.json()["deadlineS"] <= 2.1
    r = await client.get("/v1/echo", headers={"x-request-timeout": "3.5"})
    assert 2.5 < r.json()["deadlineS"] <= 3.6
    r = await client.get("/v1/echo", headers={"x-request-timeout": "soon"})
    assert r.status_code == 400
    started = time.monotonic()
    r = await client.get("/v1/sleep", params={"duration": "5s"}, headers={"grpc-timeout": "300m"})
    assert r.status_code == 504 and r.json()["code"] == 4
    assert time.monotonic() - started < 3


async def test_rate_limit_per_principal(make_gateway) -> None:
    async with make_gateway(rate_per_s=1, rate_burst=3) as (client, servicer, app, base, server):
        alice = {"authorization": "Bearer " + mint_token(subject="alice", tenant="*", roles=["viewer"])}
        bob = {"authorization": "Bearer " + mint_token(subject="bob", tenant="*", roles=["viewer"])}
        codes = [(await client.get("/v1/echo", headers=alice)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await client.get("/v1/echo", headers=alice)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["details"][0]["reason"] == "RATE_LIMITED"
        assert (await client.get("/v1/echo", headers=bob)).status_code == 200


async def test_body_size_limit(make_gateway, token) -> None:
    async with make_gateway(max_body_bytes=1000) as (client, servicer, app, base, server):
        client.headers["authorization"] = f"Bearer {token}"
        r = await client.post("/v1/shelves/s1/books", json={"id": "b", "title": "x" * 2000})
        assert r.status_code == 413 and r.json()["code"] == 3

        async def chunks():  # no Content-Length: counted while reading
            for _ in range(5):
                yield b" " * 400

        r = await client.post("/v1/shelves/s1/books", content=chunks())
        assert r.status_code == 413
        assert servicer.calls == 0


async def test_cors(make_gateway, token) -> None:
    async with make_gateway(cors_origins=("https://noc.example.com",)) as (client, servicer, app, base, server):
        pre = await client.options("/v1/echo", headers={"origin": "https://noc.example.com", "access-control-request-method": "POST"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://noc.example.com"
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert "authorization" in pre.headers["access-control-allow-headers"]
        r = await client.get("/v1/echo", headers={"origin": "https://noc.example.com", "authorization": f"Bearer {token}"})
        assert r.headers["access-control-allow-origin"] == "https://noc.example.com"
        r = await client.get("/v1/echo", headers={"origin": "https://evil.example.com", "authorization": f"Bearer {token}"})
        assert "access-control-allow-origin" not in r.headers


async def test_health_ready_metrics_docs(make_gateway, token) -> None:
    async with make_gateway(ready_cache_s=1.0) as (client, servicer, app, base, server):
        assert (await client.get("/health")).json() == {"status": "SERVING"}
        r = await client.get("/ready")
        assert r.status_code == 200 and r.json()["upstreams"] == {"testing": "SERVING"}
        await client.get("/v1/echo", headers={"authorization": f"Bearer {token}"})
        metrics = (await client.get("/metrics")).text
        assert 'towerco_gateway_requests_total{route="GET /v1/echo",status="200"}' in metrics
        html = (await client.get("/api/v1/docs")).text
        assert "/api/v1/docs/static/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
        js = await client.get("/api/v1/docs/static/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
        assert (await client.get("/api/v1/docs/static/swagger-ui.css")).status_code == 200
        spec = (await client.get("/api/v1/openapi.json")).json()
        assert "/v1/echo" in spec["paths"]
        await client.get("/ready")
        await server.stop(grace=None)
        r = await client.get("/ready")
        assert r.status_code == 200  # cached answer
        await asyncio.sleep(1.1)
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["upstreams"]["testing"].startswith("UNREACHABLE")


async def test_dead_upstream_is_503_and_the_breaker_fails_fast(make_gateway, token) -> None:
    async with make_gateway() as (client, servicer, app, base, server):
        client.headers["authorization"] = f"Bearer {token}"
        assert (await client.get("/v1/echo")).status_code == 200
        await server.stop(grace=None)
        codes, messages = [], []
        for _ in range(30):
            r = await client.get("/v1/echo")
            codes.append(r.status_code)
            messages.append(r.json()["message"])
            assert r.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "retry-after" in r.headers
        assert set(codes) == {503}
        # the sdk's breaker of this target opened: later calls never leave the gateway
        from sdk.breaker import State, breaker_for

        assert breaker_for(app.target("testing")).state is State.OPEN
        assert "circuit open" in messages[-1]
        started = time.monotonic()
        r = await client.get("/v1/echo")
        assert r.status_code == 503 and "circuit open" in r.json()["message"]
        assert time.monotonic() - started < 1.0
        details = r.json()["details"]
        assert details[0]["@type"].endswith("google.rpc.RetryInfo")


async def test_unknown_fields_can_be_ignored(make_gateway, token) -> None:
    async with make_gateway(ignore_unknown_fields=True) as (client, servicer, app, base, server):
        r = await client.post("/v1/shelves/s1/books", json={"id": "b", "extra": 1}, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["id"] == "b"


async def test_concurrent_requests(gw) -> None:
    client, _ = gw
    rs = await asyncio.gather(*(client.get("/v1/books/b", params={"view": str(i)}) for i in range(50)))
    assert [r.json()["view"] for r in rs] == [str(i) for i in range(50)]




async def test_deeply_nested_and_odd_bodies_are_400_not_500(gw) -> None:
    client, _ = gw
    deep = '{"child": ' * 900 + "{}" + "}" * 900
    body = '{"everything": {"inner": ' + deep + "}}"
    deep_struct = '{"everything": {"attributes": ' + '{"a": ' * 300 + "1" + "}" * 300 + "}}"
    for payload in [body.encode(), deep_struct.encode(), b"[" * 5000 + b"]" * 5000, b"\xff\xfe", b'{"everything": {"i64": 1e400}}', b"null"]:
        r = await client.post("/v1/echo", content=payload, headers={"content-type": "application/json"})
        assert r.status_code in (200, 400), (payload[:40], r.text)
        assert r.headers["content-type"] == "application/json"


async def test_a_call_of_a_few_seconds_is_no_breaker_failure(make_gateway, token) -> None:
    """A slow-by-nature answer (seconds: a monthly statement) must not open the upstream breaker."""
    async with make_gateway() as (client, servicer, app, base, server):
        client.headers["authorization"] = f"Bearer {token}"
        r = await client.get("/v1/sleep", params={"duration": "2.3s"}, headers={"x-request-timeout": "10"})
        assert r.status_code == 200, r.text
        cb = app.breaker("testing")
        assert cb.window_len() == 1 and cb.failure_rate() == 0.0
