"""The live incident feed end to end: anomaly events -> the NOC process (correlation, outbox) ->
EVENTS -> WatchIncidents -> the gateway process -> WebSocket / SSE clients; REST lifecycle changes
arrive on the feed; tenant isolation on the WebSocket; bad input closes 4400; a WebSocket that
stays open while the NOC is killed (kill -9) and restarted (the gateway resumes its upstream),
and a client that reconnects across a gateway restart: nothing lost or repeated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import httpx
import pytest
from feedstack import WsClient, feed_stack, ws_frames


@pytest.fixture(scope="module")
async def fs(stack, tmp_path_factory):
    async with feed_stack(stack, tmp_path_factory.mktemp("feedstack")) as s:
        yield s


def uid() -> str:
    return uuid.uuid4().hex[:6].upper()


async def until(predicate, *, within: float = 60.0, what: str = "condition"):
    end = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def following(client: WsClient):
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def changes_of(client: WsClient, incident_id: str) -> list[str]:
    return [m["change"] for m in client.received if m["incident"]["id"] == incident_id]


async def test_websocket_feed_carries_the_incident_and_its_rest_lifecycle(fs):
    site = f"FE{uid()}-1"
    await fs.add_site(site, tenants=("acme",))
    client = WsClient(fs.ws_url, fs.token("viewer"), query=f"siteId={site}")
    async with following(client):
        await fs.anomaly(site, tenant_ids=("acme",))
        opened = await until(lambda: [m for m in client.received if m["change"] == "INCIDENT_CHANGE_OPENED"],
                             what="the opened incident on the WebSocket")
        inc = opened[0]["incident"]
        assert inc["siteIds"] == [site] and inc["state"] == "INCIDENT_STATE_OPEN"
        assert {i["tenantId"] for i in inc.get("impacts", [])} == {"acme"}
        r = await fs.rest("POST", f"/api/v1/incidents/{inc['id']}:acknowledge", body={"note": "on it"})
        assert r.status_code == 200, r.text
        await until(lambda: "INCIDENT_CHANGE_ACKNOWLEDGED" in changes_of(client, inc["id"]), what="acknowledged")
        r = await fs.rest("POST", f"/api/v1/incidents/{inc['id']}:resolve", body={"note": "mains back"})
        assert r.status_code == 200, r.text
        await until(lambda: "INCIDENT_CHANGE_RESOLVED" in changes_of(client, inc["id"]), what="resolved")
        last = [m for m in client.received if m["change"] == "INCIDENT_CHANGE_RESOLVED"][-1]
        assert last["incident"]["state"] == "INCIDENT_STATE_RESOLVED" and last["entry"]["actor"]
        await until(lambda: client.heartbeats >= 1, within=10, what="a heartbeat frame")
    seqs = client.sequences()
    assert seqs == sorted(set(seqs)) and client.connects == 1


async def _sse(url: str, token: str, n: int, headers: dict | None = None) -> list[dict]:
    events, cur = [], {}
    async with httpx.AsyncClient(timeout=60) as c, c.stream(
            "GET", url, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream",
                                 **(headers or {})}) as r:
        assert r.status_code == 200, await r.aread()
        async with asyncio.timeout(60):
            async for line in r.aiter_lines():
                if line == "":
                    if "data" in cur:
                        events.append(cur)
                        if len(events) >= n:
                            break
                    cur = {}
                    continue
                key, _, value = line.partition(":")
                cur[key or "comment"] = value[1:] if value.startswith(" ") else value
    return events


async def test_sse_feed_resumes_with_last_event_id(fs):
    site = f"FS{uid()}-1"
    await fs.add_site(site, tenants=("acme",))
    await fs.anomaly(site, tenant_ids=("acme",))
    inc = await fs.incident_of(site)
    url = f"{fs.gateway_url}/api/v1/incidents:watch?siteId={site}"
    first = await _sse(url, fs.token("viewer"), 1)
    assert json.loads(first[0]["data"])["change"] == "INCIDENT_CHANGE_OPENED"
    assert first[0]["id"] == json.loads(first[0]["data"])["sequence"]
    r = await fs.rest("POST", f"/api/v1/incidents/{inc['id']}:comment", body={"text": "crew dispatched"})
    assert r.status_code == 200, r.text
    # resume after the opened change: the comment, and not the opened change again
    [nxt] = await _sse(url, fs.token("viewer"), 1, headers={"Last-Event-ID": first[0]["id"]})
    data = json.loads(nxt["data"])
    assert int(nxt["id"]) > int(first[0]["id"]) and data["change"] == "INCIDENT_CHANGE_UPDATED"
    assert data["entry"]["text"] == "crew dispatched"


async def test_websocket_tenant_viewer_sees_only_its_incidents_and_tenancies(fs):
    u = uid()
    region = f"iso-{u.lower()}"
    shared, other, mine = f"FT{u}-1", f"FT{u}-2", f"FT{u}-3"
    await fs.add_site(shared, region=region, tenants=("acme", "beta"))
    await fs.add_site(other, region=region, tenants=("beta",))
    await fs.add_site(mine, region=region, tenants=("acme",))
    acme = WsClient(fs.ws_url, fs.token("tenant_viewer", "acme"), query=f"region={region}")
    beta = WsClient(fs.ws_url, fs.token("tenant_viewer", "beta"), query=f"region={region}")
    nosy = WsClient(fs.ws_url, fs.token("tenant_viewer", "acme"), query=f"region={region}&tenantId=beta")
    async with following(acme), following(beta), following(nosy):
        await fs.anomaly(shared, tenant_ids=("acme", "beta"), region=region)
        await fs.incident_of(shared)
        await fs.anomaly(other, tenant_ids=("beta",), region=region)
        await fs.incident_of(other)
        await fs.anomaly(mine, tenant_ids=("acme",), region=region)
        await until(lambda: any(mine in m["incident"]["siteIds"] for m in acme.received), what="acme's marker")
        await until(lambda: any(other in m["incident"]["siteIds"] for m in beta.received), what="beta's")
    sites_seen = {s for m in acme.received for s in m["incident"]["siteIds"]}
    assert sites_seen == {shared, mine}
    for m in acme.received:
        assert m["incident"]["tenantIds"] == ["acme"]
        assert {i["tenantId"] for i in m["incident"].get("impacts", [])} <= {"acme"}
    assert {s for m in beta.received for s in m["incident"]["siteIds"]} >= {shared, other}
    assert all(m["incident"]["tenantIds"] == ["beta"] for m in beta.received)
    assert nosy.received == []  # a tenant naming another tenant gets an empty feed


async def test_bad_input_is_an_error_frame_and_close_4400(fs):
    token = fs.token("viewer")
    frames, code, _ = await ws_frames(f"{fs.ws_url}?liveOnly=true&afterSequence=5", token=token)
    assert code == 4400 and frames[0]["error"]["code"] == 3
    fields = [v["field"] for d in frames[0]["error"]["details"] for v in d.get("fieldViolations", [])]
    assert "live_only" in fields
    frames, code, reason = await ws_frames(f"{fs.ws_url}?afterSequence=999999999", token=token)
    assert code == 4400 and frames[0]["error"]["code"] == 11  # OUT_OF_RANGE: re-list
    assert "re-list" in frames[0]["error"]["message"]
    reasons = [d.get("reason") for d in frames[0]["error"]["details"]]
    assert "CURSOR_AHEAD" in reasons
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(f"{fs.gateway_url}/api/v1/incidents:watch?afterSequence=-1",
                        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
    assert r.status_code == 400 and r.json()["code"] == 3
    frames, code, _ = await ws_frames(f"{fs.ws_url}?liveOnly=true", token="not-a-token")
    assert code == 4401


async def _storm(fs, sites: list[str], region: str, *, disrupt_after: int, disrupt) -> None:
    """One anomaly per site, paced; `disrupt()` runs after `disrupt_after` of them while the rest
    keep coming (the NOC's durable consumer picks them up when it is back)."""
    for k, s in enumerate(sites):
        if k == disrupt_after:
            await disrupt()
        await fs.anomaly(s, tenant_ids=("acme",), region=region)
        await asyncio.sleep(0.05)


async def _replay(fs, region: str, n: int) -> list[int]:
    """Every change of the region kept on the stream, read by a fresh client from the start."""
    truth = WsClient(fs.ws_url, fs.token("viewer"), query=f"region={region}")
    async with following(truth):
        await until(lambda: len(truth.received) >= n, within=60, what="the replay")
        await asyncio.sleep(0.5)
    return truth.sequences()


async def _nothing_lost_nor_repeated(fs, client: WsClient, sites: list[str], region: str) -> None:
    opened = lambda: {m["incident"]["siteIds"][0] for m in client.received  # noqa: E731
                      if m["change"] == "INCIDENT_CHANGE_OPENED"}
    await until(lambda: opened() >= set(sites), within=120, what="every site's incident on the resumed client")
    replay = await _replay(fs, region, len(client.received))
    got = client.sequences()
    assert got == sorted(set(got)), "a change arrived twice or out of order"
    assert got == replay[:len(got)], "the client's changes differ from the stream's"
    per_site = [m["incident"]["siteIds"][0] for m in client.received if m["change"] == "INCIDENT_CHANGE_OPENED"]
    assert sorted(per_site) == sorted(sites)  # one opened change per site, none twice


@pytest.mark.slow
async def test_client_stays_on_through_a_kill_9_of_the_noc_and_loses_nothing(fs):
    u = uid()
    region = f"kill-{u.lower()}"
    sites = [f"FK{u}-{k}" for k in range(24)]
    for s in sites:
        await fs.add_site(s, region=region, tenants=("acme",))
    client = WsClient(fs.ws_url, fs.token("viewer"), query=f"region={region}")

    async def kill_noc() -> None:
        await until(lambda: len(client.received) >= 3, what="changes before the kill")
        fs.procs["noc"].kill()

    async with following(client):
        await until(lambda: client.connects >= 1, what="the client connected")
        storm = asyncio.create_task(_storm(fs, sites, region, disrupt_after=8, disrupt=kill_noc))
        await until(lambda: fs.procs["noc"].p.poll() is not None, what="the NOC killed")
        await asyncio.sleep(1.0)  # anomalies pile up while the NOC is down
        await fs.restart("noc", kill=False)
        await storm
        await _nothing_lost_nor_repeated(fs, client, sites, region)
    # the gateway re-opened the NOC upstream from the last sequence it sent: the socket never closed
    assert client.connects == 1 and client.closes == [] and client.final is None
    assert client.heartbeats >= 1  # what the client saw while the NOC was down


@pytest.mark.slow
async def test_client_across_a_gateway_restart_loses_nothing(fs):
    u = uid()
    region = f"gw-{u.lower()}"
    sites = [f"FG{u}-{k}" for k in range(24)]
    for s in sites:
        await fs.add_site(s, region=region, tenants=("acme",))
    client = WsClient(fs.ws_url, fs.token("viewer"), query=f"region={region}")

    async def restart_gateway() -> None:
        await until(lambda: len(client.received) >= 3, what="changes before the restart")
        await fs.restart("gateway", kill=True)

    async with following(client):
        await until(lambda: client.connects >= 1, what="the client connected")
        await _storm(fs, sites, region, disrupt_after=8, disrupt=restart_gateway)
        await _nothing_lost_nor_repeated(fs, client, sites, region)
    assert client.connects >= 2 and client.final is None
