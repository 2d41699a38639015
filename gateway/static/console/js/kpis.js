// KPIs and SLA: a tenant's contract availability with its breakdown, the worst sites, the fleet
// by region and tenant, and the monthly SLA statement with its downloads (BI and Files).

import { ApiError, api } from "./api.js";
import { h, replace, toast } from "./dom.js";
import { enumLabel, isoMinute, minutes, money, monthKey, monthStart, num, pct, when } from "./format.js";
import { tenants } from "./board.js";

const PERIODS = {
  month: ["this month", () => [monthStart(), new Date()]],
  last: ["last month", () => { const m = monthStart(); return [new Date(Date.UTC(m.getUTCFullYear(), m.getUTCMonth() - 1, 1)), m]; }],
  d7: ["last 7 days", () => [new Date(Date.now() - 7 * 86400e3), new Date()]],
  d1: ["last 24 hours", () => [new Date(Date.now() - 86400e3), new Date()]],
};
const choice = { period: "month", tenant: "", month: "" };

const err = (e) => h("p", { class: "error" }, e instanceof ApiError ? e.describe() : String(e.message || e));

export async function render(root, _params, ctx) {
  const { session } = ctx;
  const ts = await tenants(ctx);
  if (!session.staff) choice.tenant = session.tenant;
  if (!choice.tenant && ts.length) choice.tenant = ts[0].id;
  if (!choice.month) choice.month = monthKey(new Date());

  const availability = h("section", { class: "panel", id: "availability" });
  const worst = h("section", { class: "panel", id: "worst-sites" });
  const fleet = h("section", { class: "panel", id: "fleet-kpis" });
  const statement = h("section", { class: "panel", id: "statement" });
  const files = h("section", { class: "panel", id: "files" });
  const controls = h("div", { class: "filters" });
  replace(root, h("section", { class: "kpis", id: "kpis" }, h("h1", {}, "KPIs and SLA"), controls,
    h("div", { class: "cols" }, h("div", {}, availability, statement), h("div", {}, worst, fleet, files))));

  const range = () => {
    const [a, b] = PERIODS[choice.period][1]();
    return { startTime: isoMinute(a), endTime: isoMinute(b) };
  };
  const months = [];
  for (let i = 0; i < 6; i += 1) {
    const m = monthStart();
    months.push(monthKey(new Date(Date.UTC(m.getUTCFullYear(), m.getUTCMonth() - i, 1))));
  }
  const drawControls = () => replace(controls,
    h("label", { class: "filter" }, "period", h("select", { id: "k-period", onchange: (e) => { choice.period = e.target.value; reload(); } },
      Object.entries(PERIODS).map(([k, [label]]) => h("option", { value: k, selected: k === choice.period }, label)))),
    session.staff ? h("label", { class: "filter" }, "tenant", h("select", { id: "k-tenant", onchange: (e) => { choice.tenant = e.target.value; reload(); } },
      ts.map((t) => h("option", { value: t.id, selected: t.id === choice.tenant }, t.name ? `${t.id} (${t.name})` : t.id))))
      : h("span", { class: "filter fixed" }, "tenant ", h("b", {}, session.tenant)),
    h("label", { class: "filter" }, "statement month", h("select", { id: "k-month", onchange: (e) => { choice.month = e.target.value; loadStatement(); } },
      months.map((m) => h("option", { value: m, selected: m === choice.month }, m)))));

  const loadAvailability = async () => {
    replace(availability, h("h2", {}, `Availability · ${choice.tenant}`), h("p", { class: "loading" }, "Computing…"));
    try {
      const first = await api(`/api/v1/tenants/${encodeURIComponent(choice.tenant)}/availability`,
        { query: { range: range(), skipOutages: true, page: { size: 500 } }, timeoutS: 60 });
      const lines = [...(first.tenancies || [])];
      let token = first.page?.nextToken;
      while (token && lines.length < 5000) {
        const next = await api(`/api/v1/tenants/${encodeURIComponent(choice.tenant)}/availability`,
          { query: { range: range(), skipOutages: true, page: { size: 500, token } }, timeoutS: 60 });
        lines.push(...(next.tenancies || []));
        token = next.page?.nextToken;
      }
      const a = first.availability || {};
      lines.sort((x, y) => (x.availability?.availability ?? 1) - (y.availability?.availability ?? 1));
      replace(availability, h("h2", {}, `Availability · ${choice.tenant}`),
        h("div", { class: ["big", a.slaMet === false ? "bad" : "good"], id: "tenant-availability" },
          a.defined === false ? "no measured minute" : pct(a.availability, 3),
          h("small", {}, ` target ${pct(a.slaTarget, 2)} · ${a.slaMet ? "met" : "missed"} · ${first.sites || 0} sites · ${lines.length} tenancies`)),
        breakdown(a),
        h("h3", {}, "Tenancies, worst first"),
        h("table", { id: "tenancy-availability" }, h("thead", {}, h("tr", {}, ["site", "region", "availability", "target", "outage", "unknown"].map((c) => h("th", {}, c)))),
          h("tbody", {}, lines.slice(0, 100).map((t) => h("tr", { class: t.availability?.slaMet === false ? "down" : "" },
            h("td", {}, h("a", { href: `#/sites/${encodeURIComponent(t.siteId)}` }, t.siteId)), h("td", {}, t.region || ""),
            h("td", { class: "num" }, t.availability?.defined === false ? "—" : pct(t.availability?.availability, 3)),
            h("td", { class: "num" }, pct(t.availability?.slaTarget, 2)),
            h("td", { class: "num" }, minutes(t.availability?.outage?.total)),
            h("td", { class: "num" }, minutes(t.availability?.unknownMinutes)))))));
    } catch (e) {
      replace(availability, h("h2", {}, `Availability · ${choice.tenant}`), err(e));
    }
  };

  const loadWorst = async () => {
    replace(worst, h("h2", {}, "Worst sites"), h("p", { class: "loading" }, "…"));
    try {
      const r = await api("/api/v1/kpis/worst-sites", { query: { range: range(), limit: 10,
        tenantId: session.staff ? "" : session.tenant }, timeoutS: 60 });
      const rows = r.sites || [];
      replace(worst, h("h2", {}, "Worst sites"), rows.length ? h("table", { id: "worst-table" },
        h("thead", {}, h("tr", {}, ["#", "site", "tenant", "region", "availability", "outage"].map((c) => h("th", {}, c)))),
        h("tbody", {}, rows.map((x) => h("tr", {}, h("td", {}, String(x.rank)),
          h("td", {}, h("a", { href: `#/sites/${encodeURIComponent(x.siteId)}` }, x.siteId)), h("td", {}, x.tenantId || ""),
          h("td", {}, x.region || ""), h("td", { class: "num" }, pct(x.value, 3)),
          h("td", { class: "num" }, minutes(x.availability?.outage?.total)))))) : h("p", { class: "muted" }, "No data."));
    } catch (e) {
      replace(worst, h("h2", {}, "Worst sites"), err(e));
    }
  };

  const loadFleet = async () => {
    replace(fleet, h("h2", {}, "Fleet"), h("p", { class: "loading" }, "…"));
    try {
      const r = await api("/api/v1/kpis/fleet", { query: { range: range() }, timeoutS: 60 });
      const table = (title, groups) => [h("h3", {}, title), h("table", {},
        h("thead", {}, h("tr", {}, ["", "sites", "availability", "power", "grid", "fuel used"].map((c) => h("th", {}, c)))),
        h("tbody", {}, (groups || []).map((g) => h("tr", {}, h("td", {}, g.key), h("td", { class: "num" }, String(g.sites || 0)),
          h("td", { class: "num" }, pct(g.availability?.availability, 3)), h("td", { class: "num" }, pct(g.powerAvailability, 2)),
          h("td", { class: "num" }, pct(g.gridAvailability, 1)), h("td", { class: "num" }, `${num(g.fuelConsumedL, 0)} L`)))))];
      replace(fleet, h("h2", {}, "Fleet"), table("By region", r.regions), table("By tenant", r.tenants));
    } catch (e) {
      replace(fleet, h("h2", {}, "Fleet"), err(e));
    }
  };

  const exportAs = async (format) => {
    try {
      const r = await api(`/api/v1/tenants/${encodeURIComponent(choice.tenant)}/statements/${choice.month}:export`,
        { method: "POST", body: { format: `EXPORT_FORMAT_${format}` }, timeoutS: 120 });
      download(r.downloadUrl, r.file?.name);
      toast(`${format} ready: ${r.file?.name || "download"}`);
      loadFiles();
    } catch (e) {
      toast(`export failed: ${e instanceof ApiError ? e.describe() : e.message}`, "error");
    }
  };

  const loadStatement = async () => {
    const title = h("h2", {}, `SLA statement · ${choice.tenant} · ${choice.month}`);
    replace(statement, title, h("p", { class: "loading" }, "Computing…"));
    try {
      const st = await api(`/api/v1/tenants/${encodeURIComponent(choice.tenant)}/statements/${choice.month}`,
        { query: { skipOutages: true }, timeoutS: 120 });
      const lines = st.tenancies || [];
      replace(statement, title,
        h("p", {}, h("b", {}, enumLabel(st.status, "STATEMENT_STATUS_")), ` · rule set v${st.ruleSetVersion || 0} · `,
          `${st.tenanciesBelowSla || 0} of ${lines.length} tenancies below SLA · computed ${when(st.computeTime)}`,
          st.closeTime ? ` · closed ${when(st.closeTime)} by ${st.closedBy}` : ""),
        h("p", { class: "totals" }, (st.totals || []).map((t) => h("span", {}, `fees ${money(t.feeMinor, t.currencyCode)} · penalties ${money(t.penaltyMinor, t.currencyCode)} `))),
        h("p", { class: "downloads" }, "Download: ", ["PDF", "XLSX", "CSV"].map((f) =>
          h("button", { type: "button", class: "export", dataset: { format: f }, onclick: () => exportAs(f) }, f))),
        h("table", { id: "statement-lines" },
          h("thead", {}, h("tr", {}, ["site", "availability", "target", "met", "shortfall", "band", "penalty", "fee"].map((c) => h("th", {}, c)))),
          h("tbody", {}, lines.map((x) => h("tr", { class: x.slaMet === false ? "down" : "" },
            h("td", {}, h("a", { href: `#/sites/${encodeURIComponent(x.siteId)}` }, x.siteId)),
            h("td", { class: "num" }, x.defined === false ? "—" : pct(x.availability, 3)), h("td", { class: "num" }, pct(x.slaTarget, 2)),
            h("td", {}, x.slaMet ? "yes" : "no"), h("td", { class: "num" }, num(x.shortfallPoints, 3)),
            h("td", { class: "num" }, x.band ? `${x.band} (${num(x.bandPercent, 1)} %)` : "—"),
            h("td", { class: "num" }, money(x.penaltyMinor, x.currencyCode)),
            h("td", { class: "num" }, money(x.proratedFeeMinor, x.currencyCode)))))),
        (st.adjustments || []).length ? [h("h3", {}, "Adjustments after closing"), h("ul", {}, st.adjustments.map((a) =>
          h("li", {}, `${a.siteId}: ${money(a.penaltyDeltaMinor, a.currencyCode)} — ${a.reason}`)))] : null);
    } catch (e) {
      replace(statement, title, err(e));
    }
  };

  const loadFiles = async () => {
    replace(files, h("h2", {}, `Files · ${choice.tenant}`), h("p", { class: "loading" }, "…"));
    try {
      const r = await api("/api/v1/files", { query: { tenantId: choice.tenant, limit: 30 } });
      const list = r.files || [];
      replace(files, h("h2", {}, `Files · ${choice.tenant}`), list.length ? h("ul", { class: "items", id: "file-list" }, list.map((f) =>
        h("li", { dataset: { id: f.id } }, h("button", { type: "button", class: "link", onclick: () => openFile(f) }, f.name),
          h("small", {}, ` ${enumLabel(f.kind, "FILE_KIND_")} · ${Math.max(1, Math.round(Number(f.sizeBytes || 0) / 1024))} KiB · ${when(f.createTime)}`))))
        : h("p", { class: "muted" }, "No file yet: export a statement above."));
    } catch (e) {
      replace(files, h("h2", {}, `Files · ${choice.tenant}`), err(e));
    }
  };

  const reload = () => { drawControls(); loadAvailability(); loadWorst(); loadFleet(); loadStatement(); loadFiles(); };
  reload();
  return null;
}

async function openFile(file) {
  try {
    const link = await api(`/api/v1/files/${encodeURIComponent(file.id)}:link`, { method: "POST", body: {} });
    download(link.url, file.name);
  } catch (e) {
    toast(`download failed: ${e instanceof ApiError ? e.describe() : e.message}`, "error");
  }
}

/** Follow a signed download link (a one-file token in its query: no header needed). */
function download(url, name) {
  const a = h("a", { href: url, download: name || "", class: "hidden-link" });
  document.body.append(a);
  a.click();
  a.remove();
}

function breakdown(a) {
  const o = a.outage || {};
  const x = a.excluded || {};
  const row = (label, value) => h("tr", {}, h("td", {}, label), h("td", { class: "num" }, minutes(value)));
  return h("table", { class: "breakdown", id: "availability-breakdown" }, h("tbody", {},
    row("period (tenancy-minutes)", a.periodMinutes), row("up", a.upMinutes), row("unknown (no telemetry)", a.unknownMinutes),
    row("outage, total", o.total), row("· DC below band", o.dcLow), row("· DC above band", o.dcHigh), row("· tenant link down", o.linkDown),
    row("· unknown counted as down", o.unknownAsDown), row("short outages ignored", o.ignoredShort),
    row("excluded, total", x.total), row("· planned maintenance", x.plannedMaintenance), row("· force majeure", x.forceMajeure),
    row("· tenant caused", x.tenantCaused), row("· access denied", x.accessDenied), row("· unknown (policy)", x.unknown)),
  h("caption", {}, `unknown-minute policy: ${enumLabel(a.unknownPolicy, "UNKNOWN_POLICY_")}`));
}
