// The gateway's REST API from the browser: the bearer token (kept in sessionStorage, so it
// leaves with the tab), JSON in and out, google.rpc.Status errors as ApiError.

const TOKEN_KEY = "towerco.console.token";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.details = (body && body.details) || [];
  }

  /** "field: description" for each BadRequest violation. */
  violations() {
    const out = [];
    for (const d of this.details) {
      for (const v of d.fieldViolations || []) out.push(`${v.field}: ${v.description}`);
    }
    return out;
  }

  describe() {
    const v = this.violations();
    return v.length ? `${this.message} (${v.join("; ")})` : this.message;
  }
}

function b64urlJson(part) {
  const pad = "=".repeat((4 - (part.length % 4)) % 4);
  const text = atob(part.replace(/-/g, "+").replace(/_/g, "/") + pad);
  const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** The claims of a JWT, read without verifying it (the gateway verifies every call). */
export function decodeClaims(token) {
  const parts = String(token || "").trim().split(".");
  if (parts.length !== 3) throw new Error("this is not a token: a JWT has three dot-separated parts");
  let claims;
  try {
    claims = b64urlJson(parts[1]);
  } catch {
    throw new Error("this is not a token: its payload is not JSON");
  }
  const roles = Array.isArray(claims.roles) ? claims.roles.map(String) : [];
  return { sub: String(claims.sub || ""), tenant: String(claims.tenant || ""), roles, exp: Number(claims.exp || 0) };
}

/** Who is signed in: token, claims and what the console may offer them. */
export class Session {
  constructor(token) {
    this.token = token;
    this.claims = decodeClaims(token);
  }

  get staff() { return this.claims.tenant === "*"; }
  get tenant() { return this.claims.tenant; }
  get subject() { return this.claims.sub; }
  has(role) { return this.claims.roles.includes(role); }
  /** noc_operator and admin act on incidents (acknowledge, assign, comment, resolve). */
  get canOperate() { return this.staff && (this.has("noc_operator") || this.has("admin")); }
  get expired() { return this.claims.exp > 0 && this.claims.exp * 1000 < Date.now(); }
  get label() {
    const role = this.claims.roles.join(",") || "no role";
    return this.staff ? `${this.subject} · ${role}` : `${this.subject} · ${role} · ${this.tenant}`;
  }

  static load() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return null;
    try {
      const s = new Session(token);
      return s.expired ? null : s;
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
      return null;
    }
  }

  save() { sessionStorage.setItem(TOKEN_KEY, this.token); }
  static clear() { sessionStorage.removeItem(TOKEN_KEY); }
}

/** A query string from an object (nested keys as "a.b"; empty values left out). */
export function qs(params) {
  const out = new URLSearchParams();
  const add = (prefix, value) => {
    if (value === undefined || value === null || value === "" || value === false) return;
    if (Array.isArray(value)) {
      for (const v of value) add(prefix, v);
    } else if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) add(prefix ? `${prefix}.${k}` : k, v);
    } else {
      out.append(prefix, String(value));
    }
  };
  add("", params || {});
  const text = out.toString();
  return text ? `?${text}` : "";
}

let current = null;
let onUnauthenticated = () => {};

export function useSession(session, unauthenticated) {
  current = session;
  if (unauthenticated) onUnauthenticated = unauthenticated;
}

/** One REST call; resolves with the parsed JSON, rejects with ApiError. */
export async function api(path, { method = "GET", query, body, session = current, timeoutS } = {}) {
  const headers = { accept: "application/json" };
  if (session) headers.authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  if (timeoutS) headers["x-request-timeout"] = String(timeoutS);
  let resp;
  try {
    resp = await fetch(path + qs(query), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, { message: `the gateway is not reachable (${err.message || err})`, code: 14 });
  }
  const text = await resp.text();
  let data = {};
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text.slice(0, 200) };
    }
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data);
    if (resp.status === 401 && session === current) onUnauthenticated(err);
    throw err;
  }
  return data;
}

/** Every item of a paged list (page.size / page.nextToken), at most `max`. */
export async function listAll(path, key, query = {}, max = 2000) {
  const items = [];
  let token = "";
  do {
    const page = await api(path, { query: { ...query, page: { size: 500, token } } });
    items.push(...(page[key] || []));
    token = (page.page && page.page.nextToken) || "";
  } while (token && items.length < max);
  return items;
}
