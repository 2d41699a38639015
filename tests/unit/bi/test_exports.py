"""The renderers, opened back: CSV and XLSX keep every number as given, the PDF is typeset with
the facts, every table row up to its cap, and says what it left out."""

from __future__ import annotations

import csv
import io

from openpyxl import load_workbook
from pypdf import PdfReader

from services.bi import exports


def report(rows: int = 120, evidence: int = 30, cap: int | None = None) -> exports.Report:
    main = exports.Section("Tenancies", ("site_id", "availability", "penalty_minor", "capped"),
                           [(f"S-{i:04d}", 0.99 + i / 1e6, i * 100, i % 2 == 0) for i in range(rows)],
                           pdf_columns=(0, 1, 2))
    ev = exports.Section("Outage evidence", ("site_id", "minutes"), [(f"S-{i:04d}", 30 + i) for i in range(evidence)],
                         pdf_max_rows=cap)
    return exports.Report("SLA statement: acme, 2026-11", [("Tenant", "acme"), ("Total penalty (KES)", "KES 71.40")],
                          main, [ev], exports.Chart("Availability", ["S-0000", "S-0001"], [99.0, 99.5], 99.9),
                          note="formulas in docs/bi.md")


def test_csv_keeps_the_numbers():
    rows = list(csv.reader(io.StringIO(exports.render(report(), "csv").decode())))
    assert rows[0] == ["site_id", "availability", "penalty_minor", "capped"]
    assert len(rows) == 121
    assert float(rows[7][1]) == 0.99 + 6 / 1e6 and int(rows[7][2]) == 600 and rows[7][3] == "True"


def test_xlsx_sheets_and_values():
    wb = load_workbook(io.BytesIO(exports.render(report(), "xlsx")))
    assert wb.sheetnames == ["Tenancies", "Outage evidence", "About"]
    values = list(wb["Tenancies"].iter_rows(min_row=2, values_only=True))
    assert len(values) == 120 and values[7] == ("S-0007", 0.99 + 7 / 1e6, 700, False)
    assert [c.value for c in wb["About"][2]] == ["Tenant", "acme"]


def test_pdf_is_typeset_with_its_facts_rows_and_cap():
    data = exports.render(report(rows=300, evidence=500, cap=100), "pdf")
    assert data.startswith(b"%PDF-")
    pdf = PdfReader(io.BytesIO(data))
    assert pdf.metadata.title == "SLA statement: acme, 2026-11"
    text = "\n".join(p.extract_text() for p in pdf.pages)
    assert "acme" in text and "KES 71.40" in text and "formulas in docs/bi.md" in text
    assert "S-0299" in text  # the last line of the main table, on a later page
    assert "S-0099" in text and "S-0100  " not in text.split("Outage evidence")[1]
    assert "and 400 more rows" in text
    assert "capped" not in text.split("Outage evidence")[0]  # only the pdf_columns are typeset
    assert f"page {len(pdf.pages)}" in pdf.pages[-1].extract_text()


def test_statement_report_shows_the_noc_figures_or_says_they_are_unknown():
    from towerco.bi.v1 import bi_pb2

    from services.bi.servicer import statement_report

    st = bi_pb2.SlaStatement(tenant_id="acme", month="2026-11", noc=bi_pb2.NocSummary(
        known=True, incidents=3, acknowledged=2, resolved=1, mtta_seconds=600.0, mttr_seconds=5400.0))
    rep = statement_report(st)
    facts = dict(rep.facts)
    assert facts["NOC incidents"] == "3" and facts["NOC MTTA / MTTR"] == "10 min / 1 h 30 min"
    noc = next(s for s in rep.extra if s.heading == "NOC")
    assert noc.rows == [(True, 3, 2, 1, 600.0, 5400.0)]
    wb = load_workbook(io.BytesIO(exports.render(rep, "xlsx")))
    assert [c.value for c in wb["NOC"][2]] == [True, 3, 2, 1, 600.0, 5400.0]

    unknown = statement_report(bi_pb2.SlaStatement(tenant_id="acme", month="2026-11"))  # NOC not answering
    facts = dict(unknown.facts)
    assert facts["NOC incidents"].startswith("unknown") and "NOC MTTA / MTTR" not in facts
    assert next(s for s in unknown.extra if s.heading == "NOC").rows == [(False, "", "", "", "", "")]
