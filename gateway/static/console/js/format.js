// Formatting shared by the pages: enum names, times, numbers.

/** "INCIDENT_SEVERITY_CRITICAL" -> "critical" (prefix removed, lower case, spaces). */
export function enumLabel(value, prefix) {
  if (!value) return "—";
  let text = String(value);
  if (prefix && text.startsWith(prefix)) text = text.slice(prefix.length);
  return text.toLowerCase().replace(/_/g, " ");
}

export const SEVERITIES = ["INCIDENT_SEVERITY_WARNING", "INCIDENT_SEVERITY_MINOR", "INCIDENT_SEVERITY_MAJOR",
  "INCIDENT_SEVERITY_CRITICAL"];
export const STATES = ["INCIDENT_STATE_OPEN", "INCIDENT_STATE_ACKNOWLEDGED", "INCIDENT_STATE_RESOLVED",
  "INCIDENT_STATE_CLOSED"];

export function severityRank(sev) {
  return SEVERITIES.indexOf(sev) + 1; // 0 when unknown
}

export const sev = (v) => enumLabel(v, "INCIDENT_SEVERITY_");
export const state = (v) => enumLabel(v, "INCIDENT_STATE_");

/** A Timestamp (RFC 3339 text) as "2026-12-02 16:24:11 UTC"; "—" when unset. */
export function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace("Z", " UTC");
}

/** "3 min ago", "2 h ago". */
export function ago(ts) {
  if (!ts) return "—";
  const s = (Date.now() - new Date(ts).getTime()) / 1000;
  if (!Number.isFinite(s)) return "—";
  if (s < 0) return "in " + span(-s);
  if (s < 45) return "just now";
  return span(s) + " ago";
}

export function span(seconds) {
  const s = Math.abs(seconds);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** An RFC 3339 timestamp to compare lexicographically: fraction padded to nanoseconds. */
export function tsKey(ts) {
  if (!ts) return "";
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(ts);
  if (!m) return new Date(ts).toISOString();
  return `${m[1]}.${(m[2] || "").padEnd(9, "0")}Z`;
}

export function pct(x, digits = 3) {
  if (x === undefined || x === null || Number.isNaN(Number(x))) return "—";
  return `${(Number(x) * 100).toFixed(digits)} %`;
}

export function num(x, digits = 1) {
  if (x === undefined || x === null || x === "") return "—";
  const n = Number(x);
  return Number.isFinite(n) ? n.toFixed(digits) : String(x);
}

/** Minor currency units ("15500000", KES) as "155,000.00 KES". */
export function money(minor, currency) {
  const n = Number(minor || 0) / 100;
  return `${n.toLocaleString("en-GB", { minimumFractionDigits: 2, maximumFractionDigits: 2 })} ${currency || ""}`.trim();
}

export function minutes(m) {
  const n = Number(m || 0);
  if (n < 120) return `${n} min`;
  return `${(n / 60).toFixed(1)} h`;
}

/** Whole-minute RFC 3339 (the KPI API wants ranges on whole minutes). */
export function isoMinute(d) {
  const c = new Date(d);
  c.setUTCSeconds(0, 0);
  return c.toISOString().replace(".000Z", "Z");
}

export function monthStart(d = new Date()) {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
}

export function monthKey(d) {
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
}
