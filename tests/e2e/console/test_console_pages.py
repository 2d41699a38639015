"""The console in a real headless Chromium against a real `towerco up`: sign-in, the fleet map,
a site's power chain and zoomable telemetry charts, KPIs with the SLA statement and its
download, and a tenant viewer confined to its tenant. Every page is screenshotted to
test-artifacts/console/. (The incident board: test_console_board.py.)"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from console_support import await_until, shot, sign_in, wait_js

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def _sites(client: httpx.AsyncClient) -> list[dict]:
    r = await client.get("/api/v1/sites", params={"page.size": 1000})
    assert r.status_code == 200, r.text
    return r.json().get("sites", [])


async def test_sign_in_refuses_bad_tokens_keeps_the_good_one_for_the_tab_and_signs_out(up, browser_factory) -> None:
    page = await browser_factory()
    await page.wait_for_selector("#signin")
    await shot(page, "01-sign-in")
    await page.fill("#token", "not a token")
    await page.click("#signin-button")
    await wait_js(page, "document.querySelector('#signin-error').textContent.includes('not a token')")
    forged = up.tokens["admin"][:-6] + ("AAAAAA" if not up.tokens["admin"].endswith("AAAAAA") else "BBBBBB")
    await page.fill("#token", forged)
    await page.click("#signin-button")
    await wait_js(page, "document.querySelector('#signin-error').textContent.includes('refused')")
    assert await page.locator("#top").is_hidden()

    await sign_in(page, up.tokens["admin"])
    assert "dev-admin" in await page.locator("#who").inner_text()
    stored = await page.evaluate("sessionStorage.getItem('towerco.console.token')")
    assert stored == up.tokens["admin"]
    assert await page.evaluate("localStorage.length") == 0  # nothing outlives the tab
    await page.reload()
    await page.wait_for_selector("#board")  # the tab keeps its session
    await shot(page, "02-board")
    await page.click("#signout")
    await page.wait_for_selector("#signin")
    assert await page.evaluate("sessionStorage.getItem('towerco.console.token')") is None
    assert page.problems == []


async def test_fleet_map_plots_every_site_and_opens_its_site_view(up, browser_factory, api) -> None:
    sites = await _sites(api)
    placed = [s for s in sites if s.get("location", {}).get("latitude") or s.get("location", {}).get("longitude")]
    assert len(placed) == len(sites) > 0
    page = await browser_factory(up.tokens["admin"])
    await page.goto(up.base + "/#/map")
    await page.wait_for_selector("#fleet-map a.site-dot")
    dots = page.locator("#fleet-map a.site-dot")
    assert await dots.count() == len(placed)
    assert sorted(await dots.evaluate_all("els => els.map(e => e.dataset.id)")) == sorted(s["id"] for s in placed)
    assert await page.locator("#fleet-map polygon.outline").count() == 1  # the offline outline
    await shot(page, "03-fleet-map")

    # a site with telemetry: the simulator reports every 15 s
    target = sorted(s["id"] for s in placed)[0]

    async def has_snapshot():
        r = await api.get(f"/api/v1/sites/{target}/snapshot")
        return r.status_code == 200 and len(r.json().get("samples", [])) >= 8
    await await_until(has_snapshot, within=120, what=f"telemetry from {target}")
    await page.locator(f'#fleet-map a.site-dot[data-id="{target}"]').dispatch_event("click")
    await page.wait_for_url(re.compile(rf"#/sites/{target}$"))
    await page.wait_for_selector("#power-chain .card")
    parts = await page.locator("#power-chain .card").evaluate_all("els => els.map(e => e.dataset.part)")
    assert parts == ["grid", "dg", "rectifier", "battery", "fuel", "cabinet"]
    dc = next(s for s in (await api.get(f"/api/v1/sites/{target}/snapshot")).json()["samples"] if s["metric"] == "dc_bus_v")
    shown = await page.locator('#power-chain .card[data-part="rectifier"] .value').inner_text()
    assert re.match(r"^\d+\.\d V DC", shown), shown
    assert abs(float(shown.split(" ")[0]) - float(dc.get("value", 0))) < 3.0, (shown, dc)  # the same snapshot, give or take a report

    # the charts, drawn by the vendored uPlot; dragging zooms, double-click resets
    chart = page.locator('figure.chart[data-metrics="dc_bus_v,battery_v"]')
    await chart.locator("canvas").wait_for(timeout=30_000)
    before = await chart.evaluate("f => [f.uplot.scales.x.min, f.uplot.scales.x.max]")
    box = await chart.locator(".u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    await page.mouse.move(box["x"] + box["width"] * 0.3, y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=8)
    await page.mouse.up()
    zoomed = await chart.evaluate("f => [f.uplot.scales.x.min, f.uplot.scales.x.max]")
    assert before[0] < zoomed[0] < zoomed[1] < before[1], (before, zoomed)
    await page.locator('figure.chart[data-metrics="dc_bus_v,battery_v"] .u-over').dblclick()
    reset = await chart.evaluate("f => [f.uplot.scales.x.min, f.uplot.scales.x.max]")
    assert reset == before
    for section in ("#site-anomalies", "#site-predictions", "#site-windows", "#site-tenancies"):
        await wait_js(page, f"!document.querySelector('{section} .loading')")
    await shot(page, "04-site-view")
    assert page.problems == []


async def test_kpis_show_availability_worst_sites_and_the_statement_downloads(up, browser_factory, api) -> None:
    def month_so_far() -> dict[str, str]:
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        return {"range.startTime": now.replace(day=1, hour=0, minute=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "range.endTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}

    async def ranked():  # the kpi_calculator has folded the first minutes of telemetry
        r = await api.get("/api/v1/kpis/worst-sites", params={**month_so_far(), "limit": 10})
        return r.status_code == 200 and r.json().get("sites")
    await await_until(ranked, within=300, what="the first KPI rollups", interval=2.0)
    page = await browser_factory(up.tokens["admin"])
    await page.goto(up.base + "/#/kpis")
    await page.wait_for_selector("#tenant-availability", timeout=90_000)
    tenant = await page.locator("#k-tenant").input_value()
    assert tenant
    assert re.search(r"\d+\.\d{3} %|no measured minute", await page.locator("#tenant-availability").inner_text())
    assert await page.locator("#availability-breakdown tr").count() >= 10
    await page.wait_for_selector("#worst-table tbody tr", timeout=90_000)
    assert 0 < await page.locator("#worst-table tbody tr").count() <= 10
    await page.wait_for_selector("#statement-lines", timeout=120_000)
    month = await page.locator("#k-month").input_value()
    st = (await api.get(f"/api/v1/tenants/{tenant}/statements/{month}", params={"skipOutages": "true"})).json()
    assert await page.locator("#statement-lines tbody tr").count() == len(st["tenancies"]) > 0
    await shot(page, "05-kpis")

    async with page.expect_download(timeout=120_000) as info:
        await page.click('button.export[data-format="PDF"]')
    download = await info.value
    path = await download.path()
    assert path is not None
    content = await asyncio.to_thread(Path(path).read_bytes)
    assert content[:5] == b"%PDF-"
    # the export is filed: it shows in the tenant's files
    await page.wait_for_selector("#file-list li", timeout=60_000)
    assert page.problems == []


async def test_a_tenant_viewer_sees_only_its_tenant(up, browser_factory, api) -> None:
    every = await _sites(api)
    mine = [s for s in every if "safaricom" in s.get("tenantIds", [])]
    foreign = [s for s in every if "safaricom" not in s.get("tenantIds", [])]
    assert mine and foreign
    page = await browser_factory(up.tokens["tenant_viewer"])
    assert "safaricom" in await page.locator("#who").inner_text()
    assert await page.locator("#f-tenant").count() == 0  # no tenant picker: there is one tenant
    assert "safaricom" in await page.locator(".filter.fixed").inner_text()
    await page.goto(up.base + "/#/map")
    await page.wait_for_selector("#fleet-map a.site-dot")
    ids = await page.locator("#fleet-map a.site-dot").evaluate_all("els => els.map(e => e.dataset.id)")
    assert sorted(ids) == sorted(s["id"] for s in mine)
    await shot(page, "06-tenant-map")
    await page.goto(up.base + "/#/sites")
    await page.wait_for_selector("#sites tbody tr")
    assert await page.locator("#sites tbody tr").count() == len(mine)
    await page.goto(up.base + f"/#/sites/{foreign[0]['id']}")
    await page.wait_for_selector("text=No such site")
    await page.goto(up.base + "/#/kpis")
    await page.wait_for_selector("#tenant-availability", timeout=90_000)
    assert await page.locator("#k-tenant").count() == 0
    assert "safaricom" in await page.locator("#availability h2").inner_text()
    await shot(page, "07-tenant-kpis")
    assert page.problems == []


async def test_the_feed_applies_each_sequence_once_and_never_goes_back_in_time(up, browser_factory) -> None:
    """feed.js's bookkeeping, run in the browser on the module the console loads: a repeated or
    older sequence is dropped, and an incident is only replaced by a version at least as new
    (a list answer and a live change may cross)."""
    page = await browser_factory()
    result = await page.evaluate("""async () => {
      const { IncidentFeed } = await import('/console/js/feed.js');
      const feed = new IncidentFeed({ token: 'unused' });
      const frame = (seq, time, title) => JSON.stringify({ result: { sequence: String(seq),
        change: 'INCIDENT_CHANGE_UPDATED', incident: { id: 'i1', title, updateTime: time } } });
      feed._frame(frame(5, '2026-12-02T10:00:00.5Z', 'five'));
      feed._frame(frame(5, '2026-12-02T10:00:00.5Z', 'five again'));
      feed._frame(frame(4, '2026-12-02T10:00:09Z', 'four'));
      feed._frame(frame(9, '2026-12-02T10:00:01.25Z', 'nine'));
      feed._frame(JSON.stringify({ heartbeat: { time: '2026-12-02T10:00:02Z' } }));
      feed.offer({ id: 'i1', title: 'stale list', updateTime: '2026-12-02T10:00:01.2Z' });
      const kept = feed.incidents.get('i1').title;
      feed.offer({ id: 'i1', title: 'newer list', updateTime: '2026-12-02T10:00:01.250001Z' });
      return { lastSeq: feed.lastSeq, applied: feed.applied, dropped: feed.dropped, kept,
               now: feed.incidents.get('i1').title, recent: feed.recent.map((r) => r.seq) };
    }""")
    assert result == {"lastSeq": 9, "applied": 2, "dropped": 2, "kept": "nine", "now": "newer list", "recent": [9, 5]}
    assert page.problems == []
