// The live incident board: every incident the feed knows, filtered by severity, region, state
// and tenant, updated as changes arrive; the latest changes beside it.

import { api, listAll } from "./api.js";
import { h, replace } from "./dom.js";
import { ago, enumLabel, isoMinute, SEVERITIES, sev, severityRank, span, state, STATES, tsKey } from "./format.js";

const ACTIVE = new Set(["INCIDENT_STATE_OPEN", "INCIDENT_STATE_ACKNOWLEDGED"]);
const filters = { minSeverity: "", region: "", state: "active", tenant: "" }; // kept across visits

export function sites(ctx) {
  return ctx.once("sites", () => listAll("/api/v1/sites", "sites", {}, 20000));
}

export function tenants(ctx) {
  if (!ctx.session.staff) return Promise.resolve([{ id: ctx.session.tenant, name: ctx.session.tenant }]);
  return ctx.once("tenants", () => listAll("/api/v1/tenants", "tenants"));
}

function matches(inc, f) {
  if (f.minSeverity && severityRank(inc.severity) < severityRank(f.minSeverity)) return false;
  if (f.region && inc.region !== f.region) return false;
  if (f.state === "active" && !ACTIVE.has(inc.state)) return false;
  if (f.state && f.state !== "active" && f.state !== "all" && inc.state !== f.state) return false;
  if (f.tenant && !(inc.tenantIds || []).includes(f.tenant)) return false;
  return true;
}

function order(a, b) {
  const byState = Number(ACTIVE.has(b.state)) - Number(ACTIVE.has(a.state));
  if (byState) return byState;
  const bySev = severityRank(b.severity) - severityRank(a.severity);
  if (bySev) return bySev;
  return tsKey(b.lastSeen || b.updateTime) < tsKey(a.lastSeen || a.updateTime) ? -1 : 1;
}

function select(id, label, options, value, onchange) {
  return h("label", { class: "filter" }, label,
    h("select", { id, onchange: (ev) => onchange(ev.target.value) },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
}

export function severityBadge(value) {
  return h("span", { class: ["sev", `sev-${sev(value)}`] }, sev(value));
}

export function stateBadge(value) {
  return h("span", { class: ["state", `state-${state(value)}`] }, state(value));
}

export async function render(root, _params, ctx) {
  const { feed, session } = ctx;
  if (!session.staff) filters.tenant = "";
  const tbody = h("tbody", { id: "incident-rows" });
  const summary = h("p", { class: "summary", id: "board-summary" });
  const stats = h("p", { class: "stats", id: "noc-stats" });
  const recent = h("ol", { class: "recent", id: "recent-changes" });
  const regionOptions = [["", "all regions"]];
  const tenantOptions = [["", "all tenants"]];
  const bar = h("div", { class: "filters" });
  const table = h("table", { class: "incidents" },
    h("thead", {}, h("tr", {}, ["severity", "incident", "state", "site", "region", "tenants", "alarms",
      "first seen", "changed", "assignee"].map((c) => h("th", {}, c)))), tbody);
  const boardEl = h("section", { class: "board", id: "board" },
    h("div", { class: "board-main" }, h("div", { class: "panel-head" }, h("h1", {}, "Incidents"), stats), bar, summary, table),
    h("aside", { class: "board-side panel" }, h("h2", {}, "Latest changes"), recent));
  replace(root, boardEl);

  const flashed = new Set();
  let frame = 0;
  const draw = () => {
    frame = 0;
    const rows = [...feed.incidents.values()].filter((i) => matches(i, filters)).sort(order);
    replace(tbody, rows.length ? rows.map((inc) => row(inc, flashed.has(inc.id))) :
      h("tr", {}, h("td", { colspan: 10, class: "empty" },
        feed.loaded ? "No incident matches these filters." : "Loading incidents…")));
    flashed.clear();
    const active = [...feed.incidents.values()].filter((i) => ACTIVE.has(i.state)).length;
    summary.textContent = `${rows.length} shown · ${active} active · feed ${feed.state}` +
      (feed.lastSeq ? ` · last change #${feed.lastSeq}` : "");
    Object.assign(boardEl.dataset, { lastSeq: feed.lastSeq, applied: feed.applied, dropped: feed.dropped,
      count: rows.length, loaded: feed.loaded, connects: feed.connects });
    replace(recent, feed.recent.slice(0, 20).map((c) => h("li", {},
      h("a", { href: `#/incidents/${encodeURIComponent(c.incident?.id || "")}` },
        h("span", { class: "seq" }, `#${c.seq}`), " ", enumLabel(c.change, "INCIDENT_CHANGE_"), " · ",
        c.incident?.title || c.incident?.id || ""), h("small", {}, " ", ago(new Date(c.at).toISOString())))));
  };
  const schedule = () => { if (!frame) frame = requestAnimationFrame(draw); };

  const refill = () => {
    replace(bar,
      select("f-severity", "severity ≥", [["", "any"], ...SEVERITIES.map((v) => [v, sev(v)])], filters.minSeverity,
        (v) => { filters.minSeverity = v; schedule(); }),
      select("f-region", "region", regionOptions, filters.region, (v) => { filters.region = v; fetchMatching(); schedule(); }),
      select("f-state", "state", [["active", "active (open, acknowledged)"], ...STATES.map((v) => [v, state(v)]),
        ["all", "all"]], filters.state, (v) => { filters.state = v; fetchMatching(); schedule(); }),
      session.staff ? select("f-tenant", "tenant", tenantOptions, filters.tenant,
        (v) => { filters.tenant = v; fetchMatching(); schedule(); }) : h("span", { class: "filter fixed" },
        "tenant ", h("b", {}, session.tenant)));
  };
  // incidents that are not active are not all in memory: ask the server for what a filter shows
  const fetchMatching = () => {
    if (filters.state === "active") return;
    const query = { region: filters.region, tenantId: filters.tenant };
    if (filters.state !== "all") query.state = filters.state;
    feed.reconcile(query);
  };
  refill();
  fetchMatching();

  const onChange = (ev) => {
    if (ev.detail?.incident?.id) flashed.add(ev.detail.incident.id);
    schedule();
  };
  for (const name of ["change", "loaded", "state"]) feed.addEventListener(name, name === "change" ? onChange : schedule);
  draw();
  const ticker = setInterval(schedule, 30000); // keep "x min ago" fresh
  // the last 24 hours in figures (GetNocStats: MTTA, MTTR, noise reduction)
  const loadStats = async () => {
    try {
      const now = new Date(Date.now() + 60000);
      const r = await api("/api/v1/noc/stats", { query: { range: {
        startTime: isoMinute(new Date(now.getTime() - 86400e3)), endTime: isoMinute(now) } } });
      const o = r.overall || {};
      const n = Number(o.incidents || 0);
      stats.textContent = `last 24 h: ${n} incidents from ${Number(o.rawAlarms || 0)} alarms` +
        (n ? ` · noise reduction ${(100 * Number(o.noiseReduction || 0)).toFixed(0)} %` : "") +
        (o.mttaSeconds ? ` · MTTA ${span(o.mttaSeconds)}` : "") + (o.mttrSeconds ? ` · MTTR ${span(o.mttrSeconds)}` : "");
    } catch {
      stats.textContent = "";
    }
  };
  loadStats();
  const statsTimer = setInterval(loadStats, 60000);

  Promise.all([sites(ctx).catch(() => []), tenants(ctx).catch(() => [])]).then(([all, ts]) => {
    const regions = [...new Set(all.map((s) => s.region).filter(Boolean))].sort();
    regionOptions.push(...regions.map((r) => [r, r]));
    tenantOptions.push(...ts.map((t) => [t.id, t.name ? `${t.id} (${t.name})` : t.id]));
    refill();
  });

  return () => {
    clearInterval(ticker);
    clearInterval(statsTimer);
    if (frame) cancelAnimationFrame(frame);
    feed.removeEventListener("change", onChange);
    feed.removeEventListener("loaded", schedule);
    feed.removeEventListener("state", schedule);
  };
}

function row(inc, flash) {
  const href = `#/incidents/${encodeURIComponent(inc.id)}`;
  const sitesCell = (inc.siteIds || []).slice(0, 3).map((id, i) => [i ? ", " : "",
    h("a", { href: `#/sites/${encodeURIComponent(id)}` }, id)]);
  if ((inc.siteIds || []).length > 3) sitesCell.push(` +${inc.siteIds.length - 3}`);
  return h("tr", { class: ["incident", flash && "flash", inc.suppressed && "suppressed"],
    dataset: { id: inc.id, state: inc.state || "", severity: inc.severity || "" } },
  h("td", {}, severityBadge(inc.severity)),
  h("td", { class: "title" }, h("a", { href }, inc.title || inc.id),
    inc.rootCause?.summary ? h("small", {}, inc.rootCause.summary) : null,
    inc.suppressed ? h("small", { class: "tag" }, "suppressed (calendar window)") : null,
    inc.flapping ? h("small", { class: "tag" }, "flapping") : null),
  h("td", {}, stateBadge(inc.state)),
  h("td", {}, sitesCell),
  h("td", {}, inc.region || "—"),
  h("td", {}, (inc.tenantIds || []).join(", ") || "—"),
  h("td", { class: "num" }, String(inc.alarmCount || 0)),
  h("td", { title: inc.firstSeen || "" }, ago(inc.firstSeen)),
  h("td", { title: inc.updateTime || "" }, ago(inc.updateTime)),
  h("td", {}, inc.assignee || "—"));
}
