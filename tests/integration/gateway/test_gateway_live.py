"""SSE and WebSocket bridges of a server-streaming RPC: messages, resume, heartbeats, failures,
slow consumers, auth."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from mesh.auth import mint_token


async def sse_events(client: httpx.AsyncClient, url: str, *, limit: int = 100, **kw) -> tuple[int, list[dict]]:
    """(status, events); each event {"event", "id", "data", "comment"}."""
    events: list[dict] = []
    async with client.stream("GET", url, **kw) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, [r.json()]
        assert r.headers["content-type"].startswith("text/event-stream")
        cur: dict = {}
        async for line in r.aiter_lines():
            if line == "":
                if cur:
                    events.append(cur)
                    cur = {}
                    if len(events) >= limit:
                        break
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            cur[key or "comment"] = value
    return 200, events


async def test_sse_messages_ids_and_end(gw) -> None:
    client, _ = gw
    status, events = await sse_events(client, "/v1/ticks?count=3")
    assert status == 200
    assert [e["id"] for e in events] == ["1", "2", "3"]
    assert [orjson.loads(e["data"]) for e in events] == [{"sequence": "1"}, {"sequence": "2"}, {"sequence": "3"}]


async def test_sse_resume_with_last_event_id(gw) -> None:
    client, _ = gw
    _, events = await sse_events(client, "/v1/ticks?count=2", headers={"last-event-id": "41"})
    assert [e["id"] for e in events] == ["42", "43"]
    _, events = await sse_events(client, "/v1/ticks?count=1&afterSequence=7")
    assert events[0]["id"] == "8"


async def test_sse_error_event_when_upstream_dies_mid_stream(make_gateway, token) -> None:
    # without the gateway's own resume (stream_resume_s=0; test_gateway_resume.py covers it on)
    async with make_gateway(stream_resume_s=0) as (client, *_):
        client.headers["authorization"] = f"Bearer {token}"
        _, events = await sse_events(client, "/v1/ticks?count=10&failAfter=2&intervalMs=10")
    assert [e.get("id") for e in events[:2]] == ["1", "2"]
    assert events[2]["event"] == "error"
    err = orjson.loads(events[2]["data"])
    assert err["code"] == 14 and err["message"] == "ticker went away"
    assert len(events) == 3


async def test_sse_heartbeat(make_gateway, token) -> None:
    async with make_gateway(heartbeat_s=0.1) as (client, *_):
        client.headers["authorization"] = f"Bearer {token}"
        _, events = await sse_events(client, "/v1/ticks?count=2&intervalMs=400", limit=4)
        assert any(e.get("comment") == "heartbeat" for e in events)
        assert [e["id"] for e in events if "id" in e][:1] == ["1"]


async def test_sse_auth_by_query_token_and_refusals(make_gateway, token) -> None:
    async with make_gateway() as (client, *_):
        status, body = await sse_events(client, "/v1/ticks?count=1")
        assert status == 401 and body[0]["code"] == 16
        status, events = await sse_events(client, f"/v1/ticks?count=1&access_token={token}")
        assert status == 200 and events[0]["id"] == "1"
        status, body = await sse_events(client, f"/v1/ticks?count=1&bogus=1&access_token={token}")
        assert status == 400


async def test_sse_slow_consumer_is_cut(make_gateway, token) -> None:
    async with make_gateway(stream_queue=4) as (client, app, *_):
        client.headers["authorization"] = f"Bearer {token}"
        async with client.stream("GET", "/v1/ticks?count=0&padding=65536") as r:
            assert r.status_code == 200
            await asyncio.sleep(2.0)  # read nothing: the gateway's queue overflows
            tail = b""
            async for chunk in r.aiter_bytes():
                tail = (tail + chunk)[-4096:]
        assert b"event: error" in tail and b"SLOW_CONSUMER" in tail


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def test_websocket_messages_and_normal_close(make_gateway, token) -> None:
    async with make_gateway() as (client, servicer, app, base, server):
        async with websockets.connect(ws_url(base, "/v1/ticks?count=3"), additional_headers={"authorization": f"Bearer {token}"}) as ws:
            frames = [orjson.loads(m) async for m in ws]
        assert frames == [{"result": {"sequence": str(i)}} for i in (1, 2, 3)]
        assert ws.close_code == 1000


async def test_websocket_auth_by_first_message_and_query(make_gateway, token) -> None:
    async with make_gateway() as (client, servicer, app, base, server):
        async with websockets.connect(ws_url(base, "/v1/ticks?count=1&afterSequence=9")) as ws:
            await ws.send(orjson.dumps({"token": token}).decode())
            assert orjson.loads(await ws.recv()) == {"result": {"sequence": "10"}}
        async with websockets.connect(ws_url(base, f"/v1/ticks?count=1&access_token={token}")) as ws:
            assert orjson.loads(await ws.recv()) == {"result": {"sequence": "1"}}
        async with websockets.connect(ws_url(base, "/v1/ticks?count=1")) as ws:
            await ws.send('{"token": "garbage"}')
            frame = orjson.loads(await ws.recv())
            assert frame["error"]["code"] == 16
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4401


async def test_websocket_upstream_dies_mid_stream(make_gateway, token) -> None:
    async with make_gateway(stream_resume_s=0) as (client, servicer, app, base, server):
        headers = {"authorization": f"Bearer {token}"}
        async with websockets.connect(ws_url(base, "/v1/ticks?count=0&intervalMs=20"), additional_headers=headers) as ws:
            assert "result" in orjson.loads(await ws.recv())
            await server.stop(grace=None)  # the upstream process goes away
            frames = []
            with pytest.raises(ConnectionClosed):
                while True:
                    frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
        assert frames[-1]["error"]["code"] in (1, 14)  # UNAVAILABLE (or CANCELLED by the server stop)
        assert ws.close_code in (4503, 4499)


async def test_websocket_heartbeat_and_bad_query(make_gateway, token) -> None:
    async with make_gateway(heartbeat_s=0.1) as (client, servicer, app, base, server):
        headers = {"authorization": f"Bearer {token}"}
        async with websockets.connect(ws_url(base, "/v1/ticks?count=1&intervalMs=50"), additional_headers=headers) as ws:
            first = orjson.loads(await ws.recv())
            assert first == {"result": {"sequence": "1"}}
        async with websockets.connect(ws_url(base, "/v1/ticks?count=2&intervalMs=500"), additional_headers=headers) as ws:
            frames = [orjson.loads(await ws.recv()) for _ in range(3)]
            assert any("heartbeat" in f for f in frames)
        async with websockets.connect(ws_url(base, "/v1/ticks?nope=1"), additional_headers=headers) as ws:
            frame = orjson.loads(await ws.recv())
            assert frame["error"]["code"] == 3
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4400


async def test_websocket_slow_consumer_gets_4008(make_gateway, token) -> None:
    async with make_gateway(stream_queue=4) as (client, servicer, app, base, server):
        headers = {"authorization": f"Bearer {token}"}
        async with websockets.connect(
            ws_url(base, "/v1/ticks?count=0&padding=65536"), additional_headers=headers, max_queue=1, max_size=None
        ) as ws:
            await asyncio.sleep(2.0)  # read nothing
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 4008


async def test_websocket_unknown_path(make_gateway) -> None:
    async with make_gateway() as (client, servicer, app, base, server):
        with pytest.raises(Exception):  # noqa: B017 - closed before or right after the handshake
            async with websockets.connect(ws_url(base, "/v1/echo")) as ws:
                await ws.recv()


async def test_tokens_for_other_principals_stream_independently(make_gateway) -> None:
    async with make_gateway() as (client, servicer, app, base, server):
        t1 = mint_token(subject="a", tenant="*", roles=["viewer"])
        t2 = mint_token(subject="b", tenant="*", roles=["viewer"])
        res = await asyncio.gather(
            sse_events(client, "/v1/ticks?count=2", headers={"authorization": f"Bearer {t1}"}),
            sse_events(client, "/v1/ticks?count=3", headers={"authorization": f"Bearer {t2}"}),
        )
        assert [len(ev) for _, ev in res] == [2, 3]


async def test_query_token_never_reaches_the_logs(token, caplog) -> None:
    import logging

    from gwfake import fake_server, serve_gateway

    from gateway.app import create_app
    from gateway.config import GatewayConfig

    async with fake_server() as (target, *_):
        app = create_app(GatewayConfig(services=("testing",), targets={"testing": target}))
        async with serve_gateway(app, log_level="info") as base:
            uv = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate to the root
            uv.addHandler(caplog.handler)
            try:
                with caplog.at_level(logging.INFO, logger="uvicorn.error"):
                    async with websockets.connect(ws_url(base, f"/v1/ticks?count=1&access_token={token}")) as ws:
                        assert "result" in orjson.loads(await ws.recv())
                    await asyncio.sleep(0.1)
            finally:
                uv.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    assert any("WebSocket" in line and "access_token=REDACTED" in line for line in lines), lines
    assert token not in caplog.text


async def test_websocket_origin_check(make_gateway, token) -> None:
    async with make_gateway(cors_origins=("https://noc.example.com",)) as (client, servicer, app, base, server):
        url = ws_url(base, f"/v1/ticks?count=1&access_token={token}")
        host = base.split("://", 1)[1]
        for origin in ("https://noc.example.com", f"http://{host}"):  # listed, and same origin
            async with websockets.connect(url, origin=origin) as ws:
                assert "result" in orjson.loads(await ws.recv())
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:  # refused at the handshake
            async with websockets.connect(url, origin="https://evil.example.com") as ws:
                await ws.recv()
        assert info.value.response.status_code == 403
