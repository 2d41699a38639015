// The live incident feed: WatchIncidents over the gateway's WebSocket bridge, with resume.
//
// Frames (gateway/live.py): {"result": WatchIncidentsResponse}, {"heartbeat": {...}},
// {"error": google.rpc.Status}; close 1000 when the stream ended, 4000 + HTTP status otherwise
// (4401 bad token, 4403, 4400 bad request or cursor out of range, 4503 NOC down, 4008 slow
// consumer). No frame at all for two heartbeat intervals means a dead link: reconnect. The
// token goes in the first frame ({"token": ...}), so it is never part of a URL.
//
// Nothing lost, nothing twice:
//  * the first connection asks for live changes only (liveOnly) and then loads the current
//    incidents with ListIncidents (twice: at once and a moment later, so a change that lands
//    between the list's snapshot and the stream's start is in the second list);
//  * every change carries its sequence; the feed keeps the last one applied, and a reconnect
//    asks for afterSequence=<last>, so the server replays exactly what was missed;
//  * a change whose sequence is not above the last one is dropped (counted in `dropped`);
//  * an incident is replaced only by a version at least as new (update_time), so a list answer
//    and a change crossing each other cannot move an incident back in time.
// Reconnects back off exponentially (0.5 s doubling to 15 s, ±20 % jitter); the connection
// state is an event the header shows.

import { api, listAll } from "./api.js";
import { tsKey } from "./format.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const RECONCILE_AFTER_MS = 2000;
const SILENCE_MS = 40000; // no frame, not even a heartbeat (every 15 s), for this long: the link is dead
const WATCH_PATH = "/api/v1/incidents:watch";

export class IncidentFeed extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.incidents = new Map(); // id -> Incident (as the caller may see it)
    this.state = "idle"; // idle | connecting | live | reconnecting | unavailable | denied | stopped
    this.detail = "";
    this.lastSeq = 0;
    this.applied = 0; // changes applied
    this.dropped = 0; // changes received again (sequence not above the last) and ignored
    this.connects = 0;
    this.attempt = 0;
    this.recent = []; // the latest changes, newest first: {seq, change, incident, entry, at}
    this.ws = null;
    this.retryTimer = 0;
    this.reconcileTimer = 0;
    this.loaded = false; // the first list arrived
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.reconcileTimer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
      this.ws = null;
    }
    this._set("stopped", "");
  }

  _set(state, detail) {
    this.state = state;
    this.detail = detail || "";
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail: this.detail } }));
  }

  _url() {
    const q = new URLSearchParams();
    if (this.lastSeq > 0) q.set("afterSequence", String(this.lastSeq));
    else q.set("liveOnly", "true");
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}${WATCH_PATH}?${q}`;
  }

  _connect() {
    if (this.stopped) return;
    const resuming = this.lastSeq > 0;
    this._set(this.connects ? "reconnecting" : "connecting", resuming ? `resuming after #${this.lastSeq}` : "");
    let ws;
    try {
      ws = new WebSocket(this._url());
    } catch (err) {
      this._retry(`cannot open the feed: ${err.message || err}`);
      return;
    }
    this.ws = ws;
    let opened = 0;
    ws.onopen = () => {
      opened = Date.now();
      this.connects += 1;
      ws.send(JSON.stringify({ token: this.session.token }));
      this._set("live", resuming ? `resumed after #${this.lastSeq}` : "");
      if (!resuming) {
        // a fresh start: what exists now comes from the list, what changes from the stream
        this.reconcile();
        clearTimeout(this.reconcileTimer);
        this.reconcileTimer = setTimeout(() => this.reconcile(), RECONCILE_AFTER_MS);
      }
    };
    let watchdog = 0;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { if (this.ws === ws) ws.close(4000, "no frame, not even a heartbeat"); }, SILENCE_MS);
    };
    arm();
    ws.onmessage = (ev) => { arm(); this._frame(ev.data); };
    ws.onerror = () => {}; // onclose follows with the code
    ws.onclose = (ev) => {
      clearTimeout(watchdog);
      this.ws = null;
      if (this.stopped) return;
      if (opened && Date.now() - opened > 10000) this.attempt = 0; // it was up for a while
      if (ev.code === 4401) {
        this._set("denied", "the token was refused: sign in again");
        this.dispatchEvent(new CustomEvent("denied"));
        return;
      }
      if (ev.code === 4403) {
        this._set("denied", "your role may not read the incident feed");
        return;
      }
      if (ev.code === 4400 && this.lastSeq > 0) {
        // OUT_OF_RANGE: the cursor left retention (CURSOR_EXPIRED) or belongs to a recreated
        // stream (CURSOR_AHEAD): start afresh, live first, then the list (docs/console.md)
        this.lastSeq = 0;
      }
      const why = ev.reason || (ev.code === 1000 ? "the feed ended" : `closed (${ev.code})`);
      this._retry(ev.code === 4503 || ev.code === 4404 ? `NOC unavailable: ${why}` : why);
    };
  }

  _retry(why) {
    if (this.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this._set(why.startsWith("NOC unavailable") ? "unavailable" : "reconnecting",
      `${why}; retry in ${(delay / 1000).toFixed(1)} s`);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.heartbeat) {
      this.attempt = 0;
      this.dispatchEvent(new CustomEvent("heartbeat", { detail: frame.heartbeat }));
      return;
    }
    if (frame.error) {
      this.detail = frame.error.message || "error";
      return; // the close that follows decides what to do
    }
    const r = frame.result;
    if (!r) return;
    this.attempt = 0;
    const seq = Number(r.sequence || 0);
    if (seq <= this.lastSeq) {
      this.dropped += 1;
      return;
    }
    this.lastSeq = seq;
    this.applied += 1;
    const inc = r.incident;
    if (inc && inc.id) this._merge(inc);
    const item = { seq, change: r.change, incident: inc, entry: r.entry, at: Date.now() };
    this.recent.unshift(item);
    if (this.recent.length > 50) this.recent.length = 50;
    this.dispatchEvent(new CustomEvent("change", { detail: item }));
  }

  /** Keep the newer of what we have and `inc`; true when `inc` was taken. The feed's own
   * incidents carry no timeline; a kept timeline survives. */
  _merge(inc) {
    const have = this.incidents.get(inc.id);
    if (have && tsKey(have.updateTime) > tsKey(inc.updateTime)) return false;
    this.incidents.set(inc.id, inc);
    return true;
  }

  /** Take an incident the page fetched (an action's answer, a detail) into the board. */
  offer(inc) {
    if (inc && inc.id && this._merge(inc)) {
      this.dispatchEvent(new CustomEvent("change", { detail: { seq: 0, change: "", incident: inc, local: true } }));
    }
  }

  /** Load the active incidents (and, with `query`, those a filter asks for) into the map. */
  async reconcile(query = { activeOnly: true }) {
    try {
      const list = await listAll("/api/v1/incidents", "incidents", query, 5000);
      let changed = 0;
      for (const inc of list) if (this._merge(inc)) changed += 1;
      this.loaded = true;
      this.dispatchEvent(new CustomEvent("loaded", { detail: { count: list.length, changed } }));
    } catch (err) {
      this.dispatchEvent(new CustomEvent("loaderror", { detail: err }));
    }
  }

  /** One incident with its timeline (GET /api/v1/incidents/{id}). */
  async fetch(id) {
    const inc = await api(`/api/v1/incidents/${encodeURIComponent(id)}`);
    this.offer(inc);
    return inc;
  }
}
