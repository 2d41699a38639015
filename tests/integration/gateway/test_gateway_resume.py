"""The gateway re-opens the upstream of a resumable stream that became unavailable, from the last
sequence it sent, while the client's SSE/WebSocket stays open: no gap, no duplicate; and gives up
after TOWERCO_GATEWAY_STREAM_RESUME_S with the error as before."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from gwfake import fake_server, serve_gateway
from test_gateway_live import sse_events

from gateway.app import create_app
from gateway.config import GatewayConfig


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def test_sse_stream_resumes_after_each_upstream_failure_without_gap_or_duplicate(make_gateway, token):
    # the fake ticker fails with UNAVAILABLE after every 2 messages; the gateway re-opens it after
    # the last sequence each time, so the client sees one unbroken run
    async with make_gateway(stream_resume_s=10) as (client, *_):
        client.headers["authorization"] = f"Bearer {token}"
        _, events = await sse_events(client, "/v1/ticks?count=0&failAfter=2&intervalMs=5", limit=9)
    assert [e.get("event") for e in events] == [None] * 9
    assert [int(e["id"]) for e in events] == list(range(1, 10))


async def test_websocket_stays_open_while_the_upstream_restarts(token):
    async with fake_server() as (target, _servicer, server):
        port = int(target.rsplit(":", 1)[1])
        cfg = GatewayConfig(services=("testing",), targets={"testing": target}, stream_resume_s=30,
                            heartbeat_s=0.2)
        async with serve_gateway(create_app(cfg)) as base:
            headers = {"authorization": f"Bearer {token}"}
            async with websockets.connect(ws_url(base, "/v1/ticks?count=0&intervalMs=50"),
                                          additional_headers=headers) as ws:
                seqs: list[int] = []
                beats = 0

                async def read(n: int) -> None:
                    nonlocal beats
                    while len(seqs) < n:
                        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
                        assert "error" not in frame, frame
                        if "result" in frame:
                            seqs.append(int(frame["result"]["sequence"]))
                        else:
                            beats += 1

                await read(3)
                await server.stop(grace=None)  # the upstream process goes away
                await asyncio.sleep(1.0)  # the client only gets heartbeats meanwhile
                async with fake_server(port) as _again:  # ... and comes back on its address
                    await read(len(seqs) + 5)
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no duplicate
                assert beats >= 1 and ws.close_code is None


async def test_gives_up_after_the_resume_window(make_gateway, token):
    async with make_gateway(stream_resume_s=1.0) as (client, servicer, app, base, server):
        headers = {"authorization": f"Bearer {token}"}
        async with websockets.connect(ws_url(base, "/v1/ticks?count=0&intervalMs=20"), additional_headers=headers) as ws:
            assert "result" in orjson.loads(await ws.recv())
            await server.stop(grace=None)
            frames = []
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert frames[-1]["error"]["code"] in (1, 14)
        assert ws.close_code in (4503, 4499)


async def test_an_upstream_down_at_connect_is_refused_at_once(make_gateway, token):
    # the resume is for streams that were established; a new one gets the 503 straight away
    async with make_gateway(stream_resume_s=30) as (client, servicer, app, base, server):
        client.headers["authorization"] = f"Bearer {token}"
        await server.stop(grace=None)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        status, body = await sse_events(client, "/v1/ticks?count=5")
        assert status == 503 and body[0]["code"] == 14
        assert loop.time() - t0 < 10
