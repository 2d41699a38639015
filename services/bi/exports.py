"""Rendering reports as files: CSV, XLSX (openpyxl) and a typeset PDF (ReportLab, with a chart).
Pure: a Report in, bytes out; the servicer builds the Report and stores the bytes in Files."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPES = {
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}


@dataclass
class Section:
    """A table: a heading, column names, rows (numbers stay numbers)."""

    heading: str
    columns: Sequence[str]
    rows: list[Sequence[Any]]
    pdf_columns: Sequence[int] | None = None  # the columns a page has room for (None: all)
    pdf_max_rows: int | None = None  # a typeset page count a reader can use (the CSV/XLSX have all)


@dataclass
class Chart:
    """Bars (one per label) against a reference line, e.g. availability against the target."""

    title: str
    labels: list[str]
    values: list[float]
    reference: float | None = None
    value_label: str = ""


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]]  # the header block: ("Tenant", "safaricom"), ("Month", "2026-11") ...
    main: Section  # the CSV and the first sheet
    extra: list[Section] = field(default_factory=list)  # more sheets / PDF sections
    chart: Chart | None = None
    note: str = ""


def render(report: Report, fmt: str) -> bytes:
    if fmt == "csv":
        return render_csv(report)
    if fmt == "xlsx":
        return render_xlsx(report)
    if fmt == "pdf":
        return render_pdf(report)
    raise ValueError(f"unknown format {fmt}")


def render_csv(report: Report) -> bytes:
    """The main table, one header row; numbers as Python writes them (full precision)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(report.main.columns)
    for row in report.main.rows:
        w.writerow(row)
    return buf.getvalue().encode("utf-8")


def _sheet_name(name: str) -> str:
    bad = set('[]:*?/\\')
    return "".join(c for c in name if c not in bad)[:31] or "Sheet"


def render_xlsx(report: Report) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = _sheet_name(report.main.heading)
    ws.append(list(report.main.columns))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in report.main.rows:
        ws.append(list(row))
    ws.freeze_panes = "A2"
    for section in report.extra:
        s = wb.create_sheet(_sheet_name(section.heading))
        s.append(list(section.columns))
        for cell in s[1]:
            cell.font = Font(bold=True)
        for row in section.rows:
            s.append(list(row))
    info = wb.create_sheet("About")
    info.append([report.title])
    for k, v in report.facts:
        info.append([k, v])
    if report.note:
        info.append([report.note])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_pdf(report: Report) -> bytes:
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.shapes import Drawing, Line, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        LongTable,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    buf = io.BytesIO()
    page = landscape(A4)
    doc = SimpleDocTemplate(buf, pagesize=page, leftMargin=12 * mm, rightMargin=12 * mm, topMargin=12 * mm,
                            bottomMargin=12 * mm, title=report.title, author="Towerco AIOps")
    story: list[Any] = [Paragraph(report.title, styles["Title"])]
    facts = Table([[k, v] for k, v in report.facts], hAlign="LEFT", colWidths=[45 * mm, 120 * mm])
    facts.setStyle(TableStyle([("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"), ("FONTSIZE", (0, 0), (-1, -1), 9)]))
    story += [facts, Spacer(1, 5 * mm)]

    if report.chart is not None and report.chart.values:
        c = report.chart
        width, height = page[0] - 30 * mm, 60 * mm
        d = Drawing(width, height + 12 * mm)
        bc = VerticalBarChart()
        bc.x, bc.y, bc.width, bc.height = 30, 20, width - 40, height - 10
        bc.data = [c.values]
        bc.categoryAxis.categoryNames = c.labels
        bc.categoryAxis.labels.angle = 45 if len(c.labels) > 8 else 0
        bc.categoryAxis.labels.fontSize = 6
        bc.categoryAxis.labels.boxAnchor = "ne" if len(c.labels) > 8 else "n"
        lo = min([*c.values, c.reference if c.reference is not None else max(c.values)])
        bc.valueAxis.valueMin = max(0.0, lo - (100.0 - lo) * 0.2 - 0.01) if lo < 100 else 0.0
        bc.valueAxis.valueMax = 100.0
        bc.bars[0].fillColor = colors.HexColor("#2b6cb0")
        d.add(bc)
        if c.reference is not None:
            span = bc.valueAxis.valueMax - bc.valueAxis.valueMin
            y = bc.y + bc.height * (c.reference - bc.valueAxis.valueMin) / span if span else bc.y
            d.add(Line(bc.x, y, bc.x + bc.width, y, strokeColor=colors.red, strokeDashArray=[3, 2]))
        d.add(String(bc.x, height + 5 * mm, c.title, fontSize=10, fontName="Helvetica-Bold"))
        story += [d, Spacer(1, 4 * mm)]

    for n, section in enumerate([report.main, *report.extra]):
        if n:
            story.append(PageBreak())
        story.append(Paragraph(section.heading, styles["Heading2"]))
        keep = list(section.pdf_columns) if section.pdf_columns is not None else list(range(len(section.columns)))
        rows = section.rows if section.pdf_max_rows is None else section.rows[:section.pdf_max_rows]
        data = [[section.columns[i] for i in keep]] + [[_fmt(row[i]) for i in keep] for row in rows]
        if len(data) == 1:
            data.append(["(none)"] + [""] * (len(keep) - 1))
        t = LongTable(data, repeatRows=1)
        t.setStyle(TableStyle([
            ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"), ("FONTSIZE", (0, 0), (-1, -1), 7),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e2e8f0")),
            ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7fafc")]),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#cbd5e0")), ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
        ]))
        story.append(t)
        if len(rows) < len(section.rows):
            story.append(Paragraph(f"… and {len(section.rows) - len(rows):,} more rows: every row is in the "
                                   "XLSX and CSV exports.", styles["Italic"]))
    if report.note:
        story += [Spacer(1, 4 * mm), Paragraph(report.note, styles["Italic"])]
    doc.build(story)
    return buf.getvalue()
