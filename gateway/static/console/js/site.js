// Sites: the register (searchable list) and one site's view: the power chain from the latest
// telemetry snapshot, telemetry charts (uPlot: drag to zoom, double-click to reset), open
// anomalies and predictions, active incidents, tenancies and calendar windows.

import { ApiError, api, listAll } from "./api.js";
import { h, replace } from "./dom.js";
import { ago, enumLabel, isoMinute, num, when } from "./format.js";
import { severityBadge, sites, stateBadge } from "./board.js";

const STALE_S = 15 * 60;
const CHARTS = [
  { title: "DC bus and battery (V)", metrics: ["dc_bus_v", "battery_v"], colors: ["#2f7ed8", "#8e44ad"] },
  { title: "Battery state of charge (%)", metrics: ["battery_soc_pct"], colors: ["#27ae60"] },
  { title: "Load (A)", metrics: ["load_a"], colors: ["#e67e22"] },
  { title: "Fuel (L)", metrics: ["fuel_level_l"], colors: ["#c0392b"] },
  { title: "Cabinet temperature (°C)", metrics: ["cabinet_temp_c"], colors: ["#d35400"] },
  { title: "Mains and DG (on = 1)", metrics: ["mains_present", "dg_running"], colors: ["#16a085", "#7f8c8d"], step: true },
];
const RANGES = { "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400 };
let chosenRange = "24h";

export async function renderList(root, _params, ctx) {
  const all = await sites(ctx);
  const search = h("input", { id: "site-search", type: "search", placeholder: "filter by id, name or region" });
  const tbody = h("tbody", {});
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const shown = all.filter((s) => !q || `${s.id} ${s.name} ${s.region}`.toLowerCase().includes(q)).slice(0, 500);
    replace(tbody, shown.map((s) => h("tr", { dataset: { id: s.id } },
      h("td", {}, h("a", { href: `#/sites/${encodeURIComponent(s.id)}` }, s.id)), h("td", {}, s.name || ""),
      h("td", {}, s.region || ""), h("td", {}, enumLabel(s.type, "SITE_TYPE_")),
      h("td", {}, enumLabel(s.status, "SITE_STATUS_")), h("td", {}, (s.tenantIds || []).join(", ")))));
  };
  search.addEventListener("input", draw);
  replace(root, h("section", { class: "panel", id: "sites" }, h("h1", {}, `Sites (${all.length})`), search,
    h("table", {}, h("thead", {}, h("tr", {}, ["site", "name", "region", "type", "status", "tenants"].map((c) => h("th", {}, c)))), tbody)));
  draw();
  search.focus();
}

export async function render(root, [id], ctx) {
  let site;
  try {
    site = await api(`/api/v1/sites/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      replace(root, h("section", { class: "panel" }, h("h1", {}, "No such site"),
        h("p", {}, "It does not exist, or you may not see it."), h("a", { href: "#/sites" }, "← sites")));
      return null;
    }
    throw err;
  }
  const power = site.power || {};
  const chain = h("div", { class: "chain-cards", id: "power-chain" }, h("p", { class: "loading" }, "Loading snapshot…"));
  const charts = h("div", { class: "charts", id: "charts" });
  const rangeButtons = h("div", { class: "ranges" }, Object.keys(RANGES).map((r) => h("button", {
    type: "button", class: r === chosenRange ? "active" : "", dataset: { range: r },
    onclick: () => { chosenRange = r; for (const b of rangeButtons.children) b.classList.toggle("active", b.dataset.range === r); drawCharts(); },
  }, r)));
  const anomalies = h("section", { class: "panel", id: "site-anomalies" }, h("h2", {}, "Open anomalies"), h("p", { class: "loading" }, "…"));
  const predictions = h("section", { class: "panel", id: "site-predictions" }, h("h2", {}, "Predictions"), h("p", { class: "loading" }, "…"));
  const incidents = h("section", { class: "panel", id: "site-incidents" }, h("h2", {}, "Active incidents"), h("p", { class: "loading" }, "…"));
  const windows = h("section", { class: "panel", id: "site-windows" }, h("h2", {}, "Calendar windows"), h("p", { class: "loading" }, "…"));
  const tenancies = h("section", { class: "panel", id: "site-tenancies" }, h("h2", {}, "Tenancies"), h("p", { class: "loading" }, "…"));
  const loc = site.location || {};
  replace(root, h("section", { class: "site-view", id: "site", dataset: { id: site.id } },
    h("header", { class: "panel" },
      h("p", { class: "crumbs" }, h("a", { href: "#/sites" }, "← sites"), " · ", h("a", { href: "#/map" }, "fleet map")),
      h("h1", {}, `${site.id} · ${site.name || ""}`),
      h("p", {}, `${site.region || "—"} · ${enumLabel(site.type, "SITE_TYPE_")} · ${enumLabel(site.status, "SITE_STATUS_")} · `,
        `${num(loc.latitude, 4)}, ${num(loc.longitude, 4)}`)),
    h("section", { class: "panel" }, h("h2", {}, "Power chain (latest snapshot)"), chain),
    h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "Telemetry"), rangeButtons,
      h("small", { class: "muted" }, "drag across a chart to zoom, double-click to reset")), charts),
    h("div", { class: "cols" }, h("div", {}, incidents, anomalies, predictions), h("div", {}, tenancies, windows))));

  const plots = [];
  const drawCharts = async () => {
    for (const p of plots.splice(0)) p.destroy();
    replace(charts, h("p", { class: "loading" }, "Loading telemetry…"));
    const seconds = RANGES[chosenRange];
    const end = new Date(Date.now() + 60000);
    const start = new Date(end.getTime() - seconds * 1000);
    const step = Math.max(60, Math.round(seconds / 360 / 60) * 60);
    let data;
    try {
      data = await api(`/api/v1/sites/${encodeURIComponent(id)}/samples`, { query: {
        metrics: CHARTS.flatMap((c) => c.metrics), range: { startTime: isoMinute(start), endTime: isoMinute(end) },
        step: `${step}s`, aggregation: "AGGREGATION_AVG" } });
    } catch (err) {
      replace(charts, h("p", { class: "error" }, err instanceof ApiError ? err.describe() : err.message));
      return;
    }
    const series = new Map((data.series || []).filter((s) => !s.tenantId).map((s) => [s.metric, s.points || []]));
    clearChildren(charts);
    const lo = start.getTime() / 1000;
    const hi = end.getTime() / 1000;
    for (const spec of CHARTS) {
      if (spec.metrics.includes("fuel_level_l") && !Number(power.fuelTankL || 0)) continue; // no tank, no fuel
      const box = h("figure", { class: "chart", dataset: { metrics: spec.metrics.join(",") } }, h("figcaption", {}, spec.title));
      charts.append(box);
      const xs = [...new Set(spec.metrics.flatMap((m) => (series.get(m) || []).map((p) => Date.parse(p.time) / 1000)))].sort((a, b) => a - b);
      if (!xs.length) {
        box.append(h("p", { class: "muted" }, "no samples in this range"));
        continue;
      }
      const columns = spec.metrics.map((m) => {
        const byTime = new Map((series.get(m) || []).map((p) => [Date.parse(p.time) / 1000, Number(p.value || 0)]));
        return xs.map((x) => (byTime.has(x) ? byTime.get(x) : null));
      });
      if (typeof window.uPlot !== "function") {
        box.append(h("p", { class: "error" }, "the chart library did not load"));
        continue;
      }
      const width = Math.max(300, box.clientWidth || charts.clientWidth / 2 - 20);
      const opts = {
        width, height: 180, tzDate: (t) => window.uPlot.tzDate(new Date(t * 1e3), "Etc/UTC"), // UTC, as the rest
        cursor: { drag: { x: true, y: false } }, legend: { show: true },
        // auto-ranging (uPlot asks with exactly the data's extent) shows the chosen window
        // whatever the data covers, and so does the double-click reset; a zoom is kept as dragged
        scales: { x: { time: true, range: (_u, min, max) =>
          (min === xs[0] && max === xs[xs.length - 1] ? [lo, hi] : [min, max]) } },
        series: [{}, ...spec.metrics.map((m, i) => ({ label: m, stroke: spec.colors[i], width: 1.5,
          paths: spec.step && window.uPlot.paths?.stepped ? window.uPlot.paths.stepped({ align: 1 }) : undefined }))],
        axes: [{}, { size: 64 }],
      };
      const plot = new window.uPlot(opts, [xs, ...columns], box);
      box.uplot = plot; // for the browser tests (zoom) and the curious, from devtools
      plots.push(plot);
    }
  };

  const loadSnapshot = async () => {
    try {
      const snap = await api(`/api/v1/sites/${encodeURIComponent(id)}/snapshot`);
      replace(chain, powerChain(site, power, snap.samples || []));
    } catch (err) {
      replace(chain, h("p", { class: "error" }, err instanceof ApiError ? err.describe() : err.message));
    }
  };

  const section = async (el, title, load) => {
    try {
      replace(el, h("h2", {}, title), await load());
    } catch (err) {
      const text = err instanceof ApiError && err.status === 503 ? `the service is unavailable just now (${err.message})`
        : err instanceof ApiError ? err.describe() : err.message;
      replace(el, h("h2", {}, title), h("p", { class: "error" }, text));
    }
  };

  loadSnapshot();
  drawCharts();
  section(anomalies, "Open anomalies", async () => {
    const list = await listAll("/api/v1/anomalies", "anomalies", { siteId: id, state: "ANOMALY_STATE_OPEN" }, 200);
    return list.length ? h("ul", { class: "items" }, list.map((a) => h("li", { dataset: { id: a.id } },
      h("span", { class: ["sev", `sev-${enumLabel(a.severity, "SEVERITY_")}`] }, enumLabel(a.severity, "SEVERITY_")), " ",
      h("b", {}, a.detector), a.tenantId ? ` (${a.tenantId})` : "", " · ", ago(a.startTime),
      h("p", {}, a.explanation?.summary || ""),
      (a.explanation?.features || []).length ? h("small", {}, a.explanation.features.map((f) =>
        `${f.name}: ${num(f.observed, 2)} (expected ${num(f.expected, 2)}${f.threshold !== undefined ? `, threshold ${num(f.threshold, 2)}` : ""})`).join(" · ")) : null)))
      : h("p", { class: "muted" }, "None open.");
  });
  section(predictions, "Predictions", async () => {
    const list = await listAll("/api/v1/predictions", "predictions", { siteId: id }, 100);
    return list.length ? h("ul", { class: "items" }, list.slice(0, 20).map((p) => h("li", { dataset: { id: p.id } },
      h("b", {}, enumLabel(p.kind, "PREDICTION_KIND_")), ` expected ${when(p.expectedTime)} (${ago(p.expectedTime)})`,
      ` · confidence ${num((p.confidence || 0) * 100, 0)} % · ${enumLabel(p.outcome, "PREDICTION_OUTCOME_")}`)))
      : h("p", { class: "muted" }, "None.");
  });
  section(incidents, "Active incidents", async () => {
    const list = await listAll("/api/v1/incidents", "incidents", { siteId: id, activeOnly: true }, 100);
    return list.length ? h("ul", { class: "items" }, list.map((i) => h("li", {}, severityBadge(i.severity), " ",
      stateBadge(i.state), " ", h("a", { href: `#/incidents/${encodeURIComponent(i.id)}` }, i.title || i.id))))
      : h("p", { class: "muted" }, "None.");
  });
  section(tenancies, "Tenancies", async () => {
    const list = await listAll(`/api/v1/sites/${encodeURIComponent(id)}/tenancies`, "tenancies", {}, 50);
    return list.length ? h("table", {}, h("thead", {}, h("tr", {}, ["tenant", "SLA target", "DC band"].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.map((t) => h("tr", {}, h("td", {}, t.tenantId), h("td", { class: "num" }, `${num((t.slaAvailabilityTarget || 0) * 100, 2)} %`),
        h("td", {}, t.dcVoltageMinV || t.dcVoltageMaxV ? `${num(t.dcVoltageMinV, 1)}–${num(t.dcVoltageMaxV, 1)} V` : "—")))))
      : h("p", { class: "muted" }, "No tenancy.");
  });
  section(windows, "Calendar windows", async () => {
    const list = await listAll(`/api/v1/sites/${encodeURIComponent(id)}/windows`, "windows", {}, 100);
    const now = Date.now();
    return list.length ? h("ul", { class: "items" }, list.map((w) => h("li", { class: Date.parse(w.endTime) < now ? "past" : "" },
      h("b", {}, enumLabel(w.category, "WINDOW_CATEGORY_")), ` ${when(w.startTime)} → ${when(w.endTime)}`,
      Date.parse(w.startTime) <= now && now < Date.parse(w.endTime) ? h("span", { class: "tag" }, "now") : null,
      w.description ? h("p", {}, w.description) : null, (w.tenantIds || []).length ? h("small", {}, `tenants: ${w.tenantIds.join(", ")}`) : null)))
      : h("p", { class: "muted" }, "No window.");
  });
  const refresh = setInterval(loadSnapshot, 30000);
  return () => {
    clearInterval(refresh);
    for (const p of plots.splice(0)) p.destroy();
  };
}

function clearChildren(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** The power chain's cards from the snapshot: each {label, value, status: ok|warn|bad|off|unknown}. */
export function powerChain(site, power, samples) {
  const latest = new Map();
  let newest = 0;
  for (const s of samples) {
    if (s.tenantId) continue;
    latest.set(s.metric, { value: Number(s.value || 0), time: s.time });
    newest = Math.max(newest, Date.parse(s.time) || 0);
  }
  if (!latest.size) return h("p", { class: "muted", id: "no-snapshot" }, "No telemetry from this site yet.");
  const v = (m) => (latest.has(m) ? latest.get(m).value : undefined);
  const stale = (Date.now() - newest) / 1000 > STALE_S;
  const hasGrid = power.grid && power.grid !== "GRID_CONNECTION_NONE";
  const hasDg = Number(power.dgCapacityKva || 0) > 0;
  const tank = Number(power.fuelTankL || 0);
  const mains = v("mains_present");
  const dg = v("dg_running");
  const cards = [];
  cards.push(!hasGrid ? card("Grid", "not connected", "off", "off-grid site")
    : mains === undefined ? card("Grid", "unknown", "unknown")
      : mains >= 1 ? card("Grid", "mains present", "ok") : card("Grid", "mains lost", "bad"));
  cards.push(!hasDg ? card("DG", "none", "off", "no generator on site")
    : dg === undefined ? card("DG", "unknown", "unknown")
      : dg >= 1 ? card("DG", "running", mains >= 1 ? "warn" : "ok", `${num(power.dgCapacityKva, 0)} kVA`)
        : card("DG", "stopped", hasGrid && mains === 0 ? "bad" : "ok", mains === 0 ? "mains lost and DG not running" : "standby"));
  const dc = v("dc_bus_v");
  const fault = v("rectifier_fault");
  cards.push(dc === undefined ? card("Rectifier", "unknown", "unknown")
    : card("Rectifier", `${num(dc, 1)} V DC${fault >= 1 ? " · fault" : ""}`,
      fault >= 1 || dc < 44 ? "bad" : dc < 47 ? "warn" : "ok", `load ${num(v("load_a"), 1)} A`));
  const soc = v("battery_soc_pct");
  cards.push(soc === undefined ? card("Battery", "unknown", "unknown")
    : card("Battery", `${num(soc, 0)} %`, soc < 20 ? "bad" : soc < 50 ? "warn" : "ok",
      `${num(v("battery_v"), 1)} V${mains === 0 && !(dg >= 1) ? " · discharging" : ""}`));
  const fuel = v("fuel_level_l");
  cards.push(!tank ? card("Fuel", "no tank", "off")
    : fuel === undefined ? card("Fuel", "unknown", "unknown")
      : card("Fuel", `${num(fuel, 0)} L`, fuel / tank < 0.1 ? "bad" : fuel / tank < 0.25 ? "warn" : "ok",
        `${num((100 * fuel) / tank, 0)} % of ${num(tank, 0)} L`));
  const temp = v("cabinet_temp_c");
  const door = v("door_open");
  cards.push(card("Cabinet", temp === undefined ? "unknown" : `${num(temp, 1)} °C`,
    temp === undefined ? "unknown" : temp > 45 ? "bad" : temp > 38 ? "warn" : "ok", door >= 1 ? "door open" : "door closed"));
  return h("div", { class: "chain-wrap", dataset: { stale } },
    h("div", { class: "chain-row" }, cards),
    h("p", { class: ["muted", stale && "bad"] }, `snapshot ${ago(new Date(newest).toISOString())}`,
      stale ? " — stale: the site has not reported recently" : ""));
}

function card(label, value, status, note) {
  return h("div", { class: ["card", `st-${status}`], dataset: { part: label.toLowerCase(), status } },
    h("span", { class: "label" }, label), h("span", { class: "value" }, value), note ? h("small", {}, note) : null);
}
