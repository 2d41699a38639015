// The console's shell: sign-in, the header (pages, feed state, who), and a hash router.
// Pages: #/board, #/incidents/<id>, #/map, #/sites, #/sites/<id>, #/kpis, #/signin.

import { ApiError, api, Session, useSession } from "./api.js";
import { h, replace, toast } from "./dom.js";
import { IncidentFeed } from "./feed.js";
import * as board from "./board.js";
import * as incident from "./incident.js";
import * as fleet from "./fleet.js";
import * as site from "./site.js";
import * as kpis from "./kpis.js";

const ROUTES = [
  [/^#\/board$/, board.render, "board"],
  [/^#\/incidents\/([^/]+)$/, incident.render, "board"],
  [/^#\/map$/, fleet.render, "map"],
  [/^#\/sites$/, site.renderList, "sites"],
  [/^#\/sites\/([^/]+)$/, site.render, "sites"],
  [/^#\/kpis$/, kpis.render, "kpis"],
];

const ctx = { session: null, feed: null, cache: new Map() };
let cleanup = null;

/** A value fetched once per sign-in (the site register, the tenants). */
ctx.once = (key, load) => {
  if (!ctx.cache.has(key)) {
    const p = load().catch((err) => {
      ctx.cache.delete(key);
      throw err;
    });
    ctx.cache.set(key, p);
  }
  return ctx.cache.get(key);
};

function signOut(reason) {
  if (ctx.feed) ctx.feed.stop();
  ctx.feed = null;
  ctx.session = null;
  ctx.cache.clear();
  Session.clear();
  useSession(null);
  if (reason) toast(reason, "error");
  location.hash = "#/signin";
  route();
}

function startSession(session) {
  ctx.session = session;
  ctx.cache.clear();
  useSession(session, () => signOut("Your token was refused (expired or revoked): sign in again."));
  document.getElementById("who").textContent = session.label;
  document.getElementById("top").hidden = false;
  document.body.dataset.role = session.staff ? "staff" : "tenant";
  const feed = new IncidentFeed(session);
  const conn = document.getElementById("conn");
  feed.addEventListener("state", (ev) => {
    conn.dataset.state = ev.detail.state;
    conn.textContent = `feed: ${ev.detail.state}`;
    conn.title = ev.detail.detail || "live incident feed";
  });
  feed.addEventListener("denied", () => signOut("The feed refused your token: sign in again."));
  ctx.feed = feed;
  feed.start();
}

function renderSignIn(root) {
  document.getElementById("top").hidden = true;
  const input = h("textarea", { id: "token", rows: 5, placeholder: "eyJhbGciOi…", spellcheck: "false",
    autocomplete: "off", required: true });
  const error = h("p", { class: "error", id: "signin-error", role: "alert" });
  const button = h("button", { type: "submit", id: "signin-button" }, "Sign in");
  const form = h("form", { class: "signin", id: "signin" },
    h("h1", {}, "Towerco NOC console"),
    h("p", {}, "Paste a token: ", h("code", {}, "make up"), " prints an admin and a tenant viewer token; ",
      h("code", {}, "towerco token --role noc_operator --sub you"), " mints others."),
    h("label", { for: "token" }, "Token"), input, error, button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    let session;
    try {
      session = new Session(input.value.trim());
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    if (session.expired) {
      error.textContent = "This token has expired.";
      return;
    }
    button.disabled = true;
    try {
      // one cheap call proves the gateway accepts the token
      await api("/api/v1/sites", { query: { page: { size: 1 } }, session });
    } catch (err) {
      button.disabled = false;
      error.textContent = err instanceof ApiError && err.status === 401
        ? `The gateway refused this token: ${err.message}` : `Sign-in failed: ${err.message}`;
      return;
    }
    session.save();
    startSession(session);
    location.hash = "#/board";
  });
  replace(root, form);
  input.focus();
}

async function route() {
  const root = document.getElementById("view");
  if (cleanup) {
    try { cleanup(); } catch { /* a page's cleanup must not stop navigation */ }
    cleanup = null;
  }
  const hash = location.hash || "#/board";
  if (!ctx.session || hash === "#/signin") {
    if (ctx.session && hash === "#/signin") {
      location.hash = "#/board";
      return;
    }
    renderSignIn(root);
    return;
  }
  for (const [re, render, page] of ROUTES) {
    const m = re.exec(hash);
    if (!m) continue;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
    document.body.dataset.page = page;
    replace(root, h("p", { class: "loading" }, "Loading…"));
    try {
      cleanup = (await render(root, m.slice(1).map(decodeURIComponent), ctx)) || null;
    } catch (err) {
      replace(root, h("section", { class: "panel" }, h("h2", {}, "Could not load this page"),
        h("p", { class: "error" }, err instanceof ApiError ? err.describe() : String(err.message || err))));
    }
    return;
  }
  location.hash = "#/board";
}

document.getElementById("signout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", route);
const saved = Session.load();
if (saved) startSession(saved);
route();
