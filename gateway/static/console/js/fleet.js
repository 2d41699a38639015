// The fleet map: every site at its latitude/longitude on a plain SVG outline (no tiles, works
// offline), coloured by its worst active incident, else by an open anomaly, else OK. It follows
// the live feed.

import { listAll } from "./api.js";
import { h, replace, s } from "./dom.js";
import { enumLabel, sev, severityRank } from "./format.js";
import { sites } from "./board.js";

// Kenya's border, simplified by hand to a few dozen points (lon, lat): an orientation aid, not a
// survey. The demo fleet is Kenyan; sites anywhere else are still drawn, on a graticule.
const KENYA = [[33.99, 4.22], [34.39, 4.61], [35.30, 5.00], [35.92, 4.62], [36.04, 4.45], [36.85, 4.45],
  [38.12, 3.60], [39.07, 3.52], [39.56, 3.42], [40.77, 4.26], [41.17, 3.92], [41.86, 3.92], [40.99, 2.78],
  [40.99, -0.86], [41.56, -1.67], [40.90, -2.27], [40.64, -2.55], [40.24, -2.75], [40.12, -3.27], [39.80, -3.68],
  [39.67, -4.05], [39.20, -4.68], [37.76, -3.68], [37.70, -3.10], [34.07, -1.06], [33.90, -1.00], [33.95, 0.10],
  [34.11, 0.37], [34.48, 1.05], [34.80, 1.22], [34.95, 2.00], [34.45, 3.60]];
const STATUS_ORDER = ["ok", "anomaly", "warning", "minor", "major", "critical"];
const ACTIVE = new Set(["INCIDENT_STATE_OPEN", "INCIDENT_STATE_ACKNOWLEDGED"]);

export async function render(root, _params, ctx) {
  const { feed } = ctx;
  const [all, anomalies] = await Promise.all([
    sites(ctx),
    listAll("/api/v1/anomalies", "anomalies", { state: "ANOMALY_STATE_OPEN" }, 5000).catch(() => []),
  ]);
  const anomalous = new Set(anomalies.map((a) => a.siteId));
  const placed = all.filter((x) => x.location && Number.isFinite(x.location.latitude) && Number.isFinite(x.location.longitude)
    && !(x.location.latitude === 0 && x.location.longitude === 0));
  const mapBox = h("div", { class: "map-box" });
  const legend = h("ul", { class: "legend" }, STATUS_ORDER.slice().reverse().map((st) => h("li", {},
    h("span", { class: ["dot", `m-${st}`] }), st === "ok" ? "no incident" : st === "anomaly" ? "open anomaly" : `${st} incident`)));
  const counts = h("p", { class: "summary", id: "map-summary" });
  const hot = h("ol", { class: "items", id: "map-hot" });
  replace(root, h("section", { class: "fleet", id: "fleet" },
    h("div", { class: "panel map-panel" }, h("h1", {}, "Fleet map"), counts, mapBox,
      h("small", { class: "muted" }, "Outline simplified for orientation. Click a site to open it.")),
    h("aside", { class: "panel" }, h("h2", {}, "Legend"), legend, h("h2", {}, "Sites with active incidents"), hot)));

  const statusOf = () => {
    const worst = new Map();
    for (const inc of feed.incidents.values()) {
      if (!ACTIVE.has(inc.state)) continue;
      for (const id of inc.siteIds || []) {
        const have = worst.get(id);
        if (!have || severityRank(inc.severity) > severityRank(have.severity)) worst.set(id, inc);
      }
    }
    return worst;
  };

  const draw = () => {
    const worst = statusOf();
    const svg = drawMap(placed, (site) => {
      const inc = worst.get(site.id);
      if (inc) return sev(inc.severity);
      return anomalous.has(site.id) ? "anomaly" : "ok";
    }, (site) => {
      const inc = worst.get(site.id);
      return `${site.id} ${site.name || ""} (${site.region})` + (inc ? ` — ${inc.title || enumLabel(inc.severity, "INCIDENT_SEVERITY_")}`
        : anomalous.has(site.id) ? " — open anomaly" : "");
    });
    replace(mapBox, svg);
    const tally = {};
    for (const site of placed) {
      const st = worst.has(site.id) ? sev(worst.get(site.id).severity) : anomalous.has(site.id) ? "anomaly" : "ok";
      tally[st] = (tally[st] || 0) + 1;
    }
    counts.textContent = `${placed.length} sites · ` + STATUS_ORDER.slice().reverse().filter((k) => tally[k])
      .map((k) => `${tally[k]} ${k}`).join(" · ");
    const rows = [...worst.entries()].sort((a, b) => severityRank(b[1].severity) - severityRank(a[1].severity)).slice(0, 30);
    replace(hot, rows.length ? rows.map(([id, inc]) => h("li", {}, h("span", { class: ["dot", `m-${sev(inc.severity)}`] }), " ",
      h("a", { href: `#/sites/${encodeURIComponent(id)}` }, id), " · ",
      h("a", { href: `#/incidents/${encodeURIComponent(inc.id)}` }, inc.title || "incident"))) : h("li", { class: "muted" }, "none"));
  };
  let frame = 0;
  const schedule = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); };
  feed.addEventListener("change", schedule);
  feed.addEventListener("loaded", schedule);
  draw();
  return () => {
    feed.removeEventListener("change", schedule);
    feed.removeEventListener("loaded", schedule);
    if (frame) cancelAnimationFrame(frame);
  };
}

function bounds(points) {
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [lon, lat] of points) {
    x0 = Math.min(x0, lon); x1 = Math.max(x1, lon); y0 = Math.min(y0, lat); y1 = Math.max(y1, lat);
  }
  return [x0, y0, x1, y1];
}

/** The SVG: an equirectangular projection fitted to the sites (and Kenya, when they are near). */
export function drawMap(placed, statusOf, titleOf) {
  const sitePts = placed.map((x) => [x.location.longitude, x.location.latitude]);
  let [x0, y0, x1, y1] = sitePts.length ? bounds(sitePts) : bounds(KENYA);
  const [kx0, ky0, kx1, ky1] = bounds(KENYA);
  const nearKenya = !sitePts.length || (x1 > kx0 - 10 && x0 < kx1 + 10 && y1 > ky0 - 10 && y0 < ky1 + 10);
  if (nearKenya) [x0, y0, x1, y1] = [Math.min(x0, kx0), Math.min(y0, ky0), Math.max(x1, kx1), Math.max(y1, ky1)];
  const pad = Math.max(0.3, 0.05 * Math.max(x1 - x0, y1 - y0));
  [x0, y0, x1, y1] = [x0 - pad, y0 - pad, x1 + pad, y1 + pad];
  const k = Math.cos((((y0 + y1) / 2) * Math.PI) / 180); // keep shapes true at the mid latitude
  const W = 1000;
  const scale = W / ((x1 - x0) * k);
  const H = Math.max(200, Math.round((y1 - y0) * scale));
  const px = (lon) => ((lon - x0) * k * scale).toFixed(1);
  const py = (lat) => ((y1 - lat) * scale).toFixed(1);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "map", id: "fleet-map", role: "img", "aria-label": "fleet map" });
  const grid = s("g", { class: "graticule" });
  for (let lon = Math.ceil(x0); lon <= x1; lon += 1) grid.append(s("line", { x1: px(lon), x2: px(lon), y1: 0, y2: H }));
  for (let lat = Math.ceil(y0); lat <= y1; lat += 1) grid.append(s("line", { x1: 0, x2: W, y1: py(lat), y2: py(lat) }));
  svg.append(grid);
  if (nearKenya) {
    svg.append(s("polygon", { class: "outline", points: KENYA.map(([lon, lat]) => `${px(lon)},${py(lat)}`).join(" ") }));
    if (y0 <= 0 && y1 >= 0) svg.append(s("text", { class: "equator", x: 6, y: Number(py(0)) - 4 }, "equator"));
  }
  const dots = s("g", { class: "sites" });
  const ordered = placed.map((site) => [site, statusOf(site)])
    .sort((a, b) => STATUS_ORDER.indexOf(a[1]) - STATUS_ORDER.indexOf(b[1])); // worst drawn last, on top
  for (const [site, st] of ordered) {
    const link = s("a", { href: `#/sites/${encodeURIComponent(site.id)}`, class: "site-dot", "data-id": site.id, "data-status": st });
    link.append(s("circle", { cx: px(site.location.longitude), cy: py(site.location.latitude), r: st === "ok" ? 5 : 8,
      class: `m-${st}` }, s("title", {}, titleOf(site))));
    dots.append(link);
  }
  svg.append(dots);
  return svg;
}
