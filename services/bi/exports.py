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
    """A workbook (openpyxl, write-only mode: rows streamed, ~3x faster than the default): the
    main table, each extra section, and an "About" sheet with the facts. Numbers stay numbers."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    wb = Workbook(write_only=True)
    bold = Font(bold=True)

    def sheet(section: Section) -> None:
        ws = wb.create_sheet(_sheet_name(section.heading))
        ws.freeze_panes = "A2"
        header = []
        for name in section.columns:
            cell = WriteOnlyCell(ws, value=name)
            cell.font = bold
            header.append(cell)
        ws.append(header)
        for row in section.rows:
            ws.append(list(row))

    sheet(report.main)
    for section in report.extra:
        sheet(section)
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
        return f"{v:,.6f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROW_H = 9.0  # points per table row at 7 pt


def _chart(c: Chart, width: float, height: float):  # noqa: ANN202 - a reportlab Drawing
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.shapes import Drawing, Line, String
    from reportlab.lib import colors

    d = Drawing(width, height + 16)
    bc = VerticalBarChart()
    bc.x, bc.y, bc.width, bc.height = 30, 24, width - 40, height - 14
    bc.data = [c.values]
    bc.categoryAxis.categoryNames = c.labels
    many = len(c.labels) > 8
    bc.categoryAxis.labels.angle = 45 if many else 0
    bc.categoryAxis.labels.fontSize = 5 if many else 7
    bc.categoryAxis.labels.boxAnchor = "ne" if many else "n"
    lo = min([*c.values, c.reference if c.reference is not None else max(c.values)])
    bc.valueAxis.valueMin = max(0.0, lo - (100.0 - lo) * 0.2 - 0.01) if lo < 100 else 0.0
    bc.valueAxis.valueMax = 100.0
    bc.valueAxis.labels.fontSize = 7
    bc.bars[0].fillColor = colors.HexColor("#2b6cb0")
    d.add(bc)
    if c.reference is not None:
        span = bc.valueAxis.valueMax - bc.valueAxis.valueMin
        y = bc.y + bc.height * (c.reference - bc.valueAxis.valueMin) / span if span else bc.y
        d.add(Line(bc.x, y, bc.x + bc.width, y, strokeColor=colors.red, strokeDashArray=[3, 2]))
    d.add(String(bc.x, height + 6, c.title, fontSize=10, fontName="Helvetica-Bold"))
    return d


def _table_header(c, y0: float, text: str, size: float, margin: float, usable: float) -> float:
    """The header row of a table at y0 (a grey band, bold names); returns the y below it, with
    the body font set."""
    from reportlab.lib import colors

    c.setFillColor(colors.HexColor("#e2e8f0"))
    c.rect(margin, y0 - ROW_H, usable, ROW_H, stroke=0, fill=1)
    c.setFillColor(colors.black)
    c.setFont("Courier-Bold", size)
    c.drawString(margin + 1.5, y0 - ROW_H + 2.2, text)
    c.setFont("Courier", size)
    return y0 - ROW_H


def render_pdf(report: Report) -> bytes:
    """A typeset landscape A4 document drawn straight on a canvas: the title and facts, the chart,
    then each section as a ruled table continued over pages with its header repeated, page
    numbers in the footer. (Straight drawing: ReportLab's flowable tables cost ~1.5 ms a row,
    ten times this.)"""
    from reportlab.graphics import renderPDF
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    width, height = landscape(A4)
    margin = 12 * mm
    usable = width - 2 * margin
    c = canvas.Canvas(buf, pagesize=(width, height), pageCompression=1)
    c.setTitle(report.title)
    c.setAuthor("Towerco AIOps")
    page = 1

    def footer() -> None:
        c.setFont("Helvetica", 7)
        c.setFillColor(colors.HexColor("#718096"))
        c.drawString(margin, margin / 2, report.title)
        c.drawRightString(width - margin, margin / 2, f"page {page}")
        c.setFillColor(colors.black)

    def new_page() -> float:
        nonlocal page
        footer()
        c.showPage()
        page += 1
        return height - margin

    y = height - margin
    c.setFont("Helvetica-Bold", 16)
    c.drawString(margin, y - 16, report.title)
    y -= 32
    for k, v in report.facts:
        c.setFont("Helvetica-Bold", 9)
        c.drawString(margin, y, k)
        c.setFont("Helvetica", 9)
        c.drawString(margin + 45 * mm, y, v)
        y -= 12
    y -= 6
    if report.chart is not None and report.chart.values:
        d = _chart(report.chart, usable, 60 * mm)
        renderPDF.draw(d, c, margin, y - d.height)
        y -= d.height + 10

    for n, section in enumerate([report.main, *report.extra]):
        if n or y < margin + 6 * ROW_H:
            y = new_page()
        c.setFont("Helvetica-Bold", 12)
        c.drawString(margin, y - 12, section.heading)
        y -= 22
        keep = list(section.pdf_columns) if section.pdf_columns is not None else list(range(len(section.columns)))
        rows = section.rows if section.pdf_max_rows is None else section.rows[:section.pdf_max_rows]
        data = [[str(section.columns[i]) for i in keep]] + [[_fmt(row[i]) for i in keep] for row in rows]
        if len(data) == 1:
            data.append(["(none)"] + [""] * (len(keep) - 1))
        # tabular figures: the body is set in Courier, one string per row with each column padded
        # to its width (text left, numbers right), so a row costs one text operation, not one
        # per cell (ReportLab is pure Python here: ~80 us per text operation)
        chars = [max(len(r[i]) for r in data) for i in range(len(keep))]
        line_chars = sum(chars) + 2 * (len(chars) - 1)
        size = min(7.0, usable / (line_chars * 0.6))

        def fmt_row(row: list[str], chars: list[int] = chars) -> str:
            cells = [row[0].ljust(chars[0])] + [v.rjust(w) for v, w in zip(row[1:], chars[1:], strict=True)]
            return "  ".join(cells)

        y = _table_header(c, y, fmt_row(data[0]), size, margin, usable)
        for i, row in enumerate(data[1:]):
            if y - ROW_H < margin:
                y = _table_header(c, new_page(), fmt_row(data[0]), size, margin, usable)
            if i % 2:
                c.setFillColor(colors.HexColor("#f7fafc"))
                c.rect(margin, y - ROW_H, usable, ROW_H, stroke=0, fill=1)
                c.setFillColor(colors.black)
            c.drawString(margin + 1.5, y - ROW_H + 2.2, fmt_row(row))
            y -= ROW_H
        c.setStrokeColor(colors.HexColor("#cbd5e0"))
        c.line(margin, y, margin + usable, y)
        c.setStrokeColor(colors.black)
        if len(rows) < len(section.rows):
            c.setFont("Helvetica-Oblique", 8)
            c.drawString(margin, y - 12, f"... and {len(section.rows) - len(rows):,} more rows: every row is in the "
                                         "XLSX and CSV exports.")
            y -= 14
    if report.note:
        if y < margin + 20:
            y = new_page()
        c.setFont("Helvetica-Oblique", 8)
        c.drawString(margin, y - 14, report.note)
    footer()
    c.save()
    return buf.getvalue()
