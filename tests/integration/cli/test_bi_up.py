"""Issue 14's "done when", end to end: after `towerco up`, a tenant's user downloads this month's
statement as PDF and XLSX through REST, sees the penalty rules and the statement's lines, and
staff list the recommendations; every BI process is part of the stack."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import httpx
import pytest

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]


async def test_after_up_a_tenant_downloads_this_months_statement(towerco_embedded) -> None:
    from openpyxl import load_workbook
    from pypdf import PdfReader

    t = towerco_embedded
    up = t.run("up", "-d", "--sites", "12", "--no-simulate", "--timeout", "180", timeout=360)
    assert up.returncode == 0, up.stdout + up.stderr
    recorded = json.loads((t.home / "stack.json").read_text())
    for name in ("bi", "files", "bi_engine"):
        assert recorded["processes"][name]["status"] == "running", recorded["processes"][name]
    assert recorded["seed"]["penalty_rule_sets_created"] == 3
    tenant = {"authorization": f"Bearer {recorded['tokens']['tenant_viewer']}"}  # safaricom's viewer
    admin = {"authorization": f"Bearer {recorded['tokens']['admin']}"}
    month = datetime.now(UTC).strftime("%Y-%m")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.port('gateway')}", timeout=60) as http:
        r = await http.get(f"/api/v1/tenants/safaricom/statements/{month}", headers=tenant)
        assert r.status_code == 200, r.text
        st = r.json()
        assert st["status"] == "STATEMENT_STATUS_OPEN" and st["ruleSetVersion"] == 1
        lines = st["tenancies"]
        assert lines
        # the seed created the tenancies today: each is measured and billed from today's start
        now = datetime.now(UTC)
        today = int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
        lo = int(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())
        hi = int(datetime.fromisoformat(st["range"]["endTime"].replace("Z", "+00:00")).timestamp())
        for x in lines:
            start = int(datetime.fromisoformat(x["measuredRange"]["startTime"].replace("Z", "+00:00")).timestamp())
            assert start == today, x
            assert int(x["proratedFeeMinor"]) == round(int(x["monthlyFeeMinor"]) * (hi - today) / (hi - lo)), x
        r = await http.get("/api/v1/tenants/safaricom/penalty-rule-sets", headers=tenant)
        assert r.status_code == 200 and r.json()["ruleSets"][0]["bands"], r.text
        files = {}
        for fmt in ("PDF", "XLSX"):
            r = await http.post(f"/api/v1/tenants/safaricom/statements/{month}:export", headers=tenant,
                                json={"format": f"EXPORT_FORMAT_{fmt}"})
            assert r.status_code == 200, r.text
            d = await http.get(r.json()["downloadUrl"])
            assert d.status_code == 200, d.text
            files[fmt] = d.content
        r = await http.get("/api/v1/recommendations", headers=admin)
        assert r.status_code == 200, r.text
        r = await http.get(f"/api/v1/tenants/airtel/statements/{month}", headers=tenant)
        assert r.status_code == 404, r.text
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(files["PDF"])).pages)
    assert "safaricom" in text and month in text and "Total penalty" in text
    sheet = load_workbook(io.BytesIO(files["XLSX"]))["Tenancies"]
    assert sheet.max_row - 1 == len(lines)
