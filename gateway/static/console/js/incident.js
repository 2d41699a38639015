// One incident: root cause, impacted tenancies, its alarms and the audit timeline; an operator
// acknowledges, assigns, comments and resolves it here. The page follows the live feed: a change
// to this incident reloads it.

import { ApiError, api, listAll } from "./api.js";
import { h, replace, toast } from "./dom.js";
import { enumLabel, minutes, num, when } from "./format.js";
import { severityBadge, stateBadge } from "./board.js";

const OPEN = "INCIDENT_STATE_OPEN";
const ACK = "INCIDENT_STATE_ACKNOWLEDGED";

export async function render(root, [id], ctx) {
  const { feed, session } = ctx;
  const view = h("section", { class: "incident-detail", id: "incident", dataset: { id } });
  replace(root, view);
  let busy = false;

  let generation = 0; // only the latest load draws: an older answer arriving late is dropped
  const load = async () => {
    const mine = ++generation;
    const [inc, alarms] = await Promise.all([
      feed.fetch(id),
      listAll("/api/v1/alarms", "alarms", { incidentId: id }, 500).catch(() => []),
    ]);
    if (mine === generation) draw(inc, alarms);
  };

  const act = async (verb, body, done) => {
    if (busy) return;
    busy = true;
    for (const b of view.querySelectorAll("button.action")) b.disabled = true;
    try {
      const inc = await api(`/api/v1/incidents/${encodeURIComponent(id)}:${verb}`, { method: "POST", body });
      feed.offer(inc);
      toast(`${verb}: done`);
      if (done) done();
      await load();
    } catch (err) {
      toast(`${verb} failed: ${err instanceof ApiError ? err.describe() : err.message}`, "error");
    } finally {
      busy = false;
      for (const b of view.querySelectorAll("button.action")) b.disabled = false;
    }
  };

  const draw = (inc, alarms) => {
    view.dataset.state = inc.state || "";
    const rc = inc.rootCause || {};
    const chain = (rc.chain || []).map((step, i) => [i ? h("span", { class: "arrow" }, "→") : null,
      h("span", { class: "step" }, step.replace(/_/g, " "))]);
    const head = h("header", { class: "panel" },
      h("p", { class: "crumbs" }, h("a", { href: "#/board" }, "← incidents")),
      h("h1", { id: "incident-title" }, inc.title || inc.id),
      h("p", { class: "badges" }, severityBadge(inc.severity), " ", h("span", { id: "incident-state" }, stateBadge(inc.state)),
        " ", h("span", { class: "kind" }, enumLabel(inc.kind, "INCIDENT_KIND_")),
        inc.suppressed ? h("span", { class: "tag" }, "suppressed") : null,
        inc.flapping ? h("span", { class: "tag" }, "flapping") : null),
      h("dl", { class: "facts" },
        fact("sites", (inc.siteIds || []).map((s, i) => [i ? ", " : "", h("a", { href: `#/sites/${encodeURIComponent(s)}` }, s)])),
        fact("region", inc.region || "—"),
        fact("tenants", (inc.tenantIds || []).join(", ") || "—"),
        fact("first seen", when(inc.firstSeen)),
        fact("last alarm", when(inc.lastSeen)),
        fact("alarms", String(inc.alarmCount || 0)),
        fact("assignee", inc.assignee || "—"),
        fact("acknowledged", inc.acknowledgeTime ? `${when(inc.acknowledgeTime)} by ${inc.acknowledgedBy || "?"}` : "—"),
        fact("resolved", when(inc.resolveTime)),
        inc.parentId ? fact("part of", h("a", { href: `#/incidents/${encodeURIComponent(inc.parentId)}` }, inc.parentId)) : null,
        (inc.childIds || []).length ? fact("children", inc.childIds.map((c, i) => [i ? ", " : "",
          h("a", { href: `#/incidents/${encodeURIComponent(c)}` }, c.slice(0, 8))])) : null,
        inc.mergedInto ? fact("merged into", h("a", { href: `#/incidents/${encodeURIComponent(inc.mergedInto)}` }, inc.mergedInto)) : null));

    const cause = h("section", { class: "panel", id: "root-cause" }, h("h2", {}, "Root cause"),
      h("p", {}, rc.summary || "not determined yet"), chain.length ? h("p", { class: "chain" }, chain) : null,
      rc.code ? h("p", {}, h("small", {}, "code ", h("code", {}, rc.code))) : null);

    const impacts = h("section", { class: "panel", id: "impacts" }, h("h2", {}, "Impacted tenancies"),
      (inc.impacts || []).length ? h("table", {},
        h("thead", {}, h("tr", {}, ["tenant", "site", "service", "SLA target", "availability (month)", "budget left"]
          .map((c) => h("th", {}, c)))),
        h("tbody", {}, inc.impacts.map((t) => h("tr", { class: t.serviceDown ? "down" : "" },
          h("td", {}, t.tenantId), h("td", {}, t.siteId),
          h("td", {}, t.serviceDown ? "down" : "at risk"),
          h("td", { class: "num" }, `${num(t.slaTargetPercent, 2)} %`),
          h("td", { class: "num" }, t.availabilityPercent ? `${num(t.availabilityPercent, 3)} %` : "—"),
          h("td", { class: ["num", Number(t.budgetRemainingMinutes) < 0 && "bad"] },
            Number(t.budgetRemainingMinutes) < 0 ? `breached by ${minutes(Math.round(-t.budgetRemainingMinutes))}`
              : minutes(Math.round(Number(t.budgetRemainingMinutes || 0))))))))
        : h("p", {}, "No tenancy is affected."));

    const alarmTable = h("section", { class: "panel", id: "alarms" }, h("h2", {}, `Alarms (${alarms.length})`),
      alarms.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["severity", "probable cause", "source", "site", "state", "first seen", "count", "text"]
          .map((c) => h("th", {}, c)))),
        h("tbody", {}, alarms.map((a) => h("tr", { class: a.state === "ALARM_STATE_CLEARED" ? "cleared" : "" },
          h("td", {}, enumLabel(a.perceivedSeverity, "PERCEIVED_SEVERITY_")),
          h("td", {}, (a.probableCause || "").replace(/_/g, " ")),
          h("td", {}, a.source || "—"), h("td", {}, a.siteId || "—"),
          h("td", {}, enumLabel(a.state, "ALARM_STATE_")),
          h("td", {}, when(a.firstSeen)), h("td", { class: "num" }, String(a.count || 1)),
          h("td", {}, a.text || a.specificProblem || "")))))
        : h("p", {}, "No alarm listed."));

    const timeline = h("section", { class: "panel", id: "timeline" }, h("h2", {}, "Timeline"),
      h("ol", { class: "timeline" }, (inc.timeline || []).map((e) => h("li", { dataset: { kind: e.kind || "" } },
        h("time", {}, when(e.time)), " ", h("b", {}, enumLabel(e.kind, "TIMELINE_KIND_")),
        " by ", e.actor || "?", e.text ? h("p", {}, e.text) : null))));

    if (!view.firstChild) {
      // the skeleton is built once; later changes refill its boxes, and the actions panel is
      // never rebuilt, so a change arriving mid-click or mid-typing cannot swallow either
      replace(view, boxes.head, h("div", { class: "cols" }, h("div", {}, boxes.cause, boxes.impacts, boxes.alarms),
        h("div", {}, actionsPanel(), boxes.timeline)));
    }
    boxes.head.replaceWith(head);
    boxes.head = head;
    for (const [key, el] of [["cause", cause], ["impacts", impacts], ["alarms", alarmTable], ["timeline", timeline]]) {
      boxes[key].replaceWith(el);
      boxes[key] = el;
    }
    updateActions(inc);
  };
  const boxes = { head: h("header"), cause: h("section"), impacts: h("section"), alarms: h("section"), timeline: h("section") };

  let panel = null;
  let rows = null;
  const actionsPanel = () => {
    if (panel) return panel;
    if (!session.canOperate) {
      panel = h("section", { class: "panel", id: "actions" }, h("h2", {}, "Actions"),
        h("p", { class: "muted" }, session.staff ? "Your role reads incidents; noc_operator or admin act on them."
          : "Read-only for tenant users."));
      return panel;
    }
    const { note, assignee, comment, resolution } = inputs();
    rows = {
      ack: h("div", { class: "action-row" }, note,
        h("button", { class: "action", id: "ack", onclick: () => act("acknowledge", { note: note.value }, clearField("note")) }, "Acknowledge")),
      assign: h("div", { class: "action-row" }, assignee,
        h("button", { class: "action", id: "assign", onclick: () => act("assign", { assignee: assignee.value.trim() }) }, "Assign")),
      comment: h("div", { class: "action-row" }, comment,
        h("button", { class: "action", id: "comment-send", onclick: () => {
          if (!comment.value.trim()) { toast("write a comment first", "error"); return; }
          act("comment", { text: comment.value.trim() }, clearField("comment"));
        } }, "Comment")),
      resolve: h("div", { class: "action-row" }, resolution,
        h("button", { class: "action danger", id: "resolve", onclick: () => act("resolve", { note: resolution.value }, clearField("resolution")) }, "Resolve")),
    };
    panel = h("section", { class: "panel", id: "actions" }, h("h2", {}, "Actions"), rows.ack, rows.assign, rows.comment, rows.resolve);
    return panel;
  };
  let assigneeSeeded = false;
  const updateActions = (inc) => {
    if (!rows) return;
    const active = inc.state === OPEN || inc.state === ACK;
    rows.ack.hidden = inc.state !== OPEN;
    rows.assign.hidden = !active;
    rows.resolve.hidden = !active;
    if (!assigneeSeeded) {
      fields.assignee.value = inc.assignee || "";
      assigneeSeeded = true;
    }
    if (!busy) for (const b of panel.querySelectorAll("button.action")) b.disabled = false;
  };

  // the form fields live as long as the page: a change arriving while someone types redraws the
  // incident around them, never over what they typed
  let fields = null;
  const inputs = () => {
    if (!fields) {
      fields = {
        note: h("input", { id: "ack-note", placeholder: "note (optional)", maxlength: 2000 }),
        assignee: h("input", { id: "assignee", placeholder: "assignee", maxlength: 128 }),
        comment: h("textarea", { id: "comment", rows: 3, placeholder: "comment", maxlength: 4000 }),
        resolution: h("input", { id: "resolve-note", placeholder: "what fixed it", maxlength: 2000 }),
      };
    }
    return fields;
  };
  const clearField = (name) => () => { if (fields) fields[name].value = ""; };

  const onChange = (ev) => {
    if (ev.detail?.incident?.id === id && !ev.detail.local) load().catch(() => {});
  };
  feed.addEventListener("change", onChange);
  try {
    await load();
  } catch (err) {
    feed.removeEventListener("change", onChange);
    if (err instanceof ApiError && err.status === 404) {
      replace(view, h("section", { class: "panel" }, h("h1", {}, "No such incident"),
        h("p", {}, "It does not exist, or you may not see it."), h("a", { href: "#/board" }, "← incidents")));
      return null;
    }
    throw err;
  }
  return () => feed.removeEventListener("change", onChange);
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}
