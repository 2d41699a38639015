"""NOC decisions, pure (no I/O): the detector -> probable cause table, alarm correlation into
incidents (dedup, flapping, the site's power chain, regional outages, calendar suppression,
unreachable vs down, auto-resolve, recurrence), the incident lifecycle and the NOC statistics
(page tokens: mesh/paging). docs/noc.md explains every rule; tests/unit/noc/ exercises them.

The correlator works on plain records (AlarmRec, IncidentRec) of one site's working set (its
active and recent alarms and incidents, SiteView) and of its region (RegionView), as the store
loaded them under the site's (and region's) advisory lock. It mutates them and records what it
did in `Decisions`: the dirty records, the timeline entries, the alarm -> incident joins and the
incident changes to publish. The store writes exactly that back in the same transaction.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

# --------------------------------------------------------------------------- enums (noc.proto)

# PerceivedSeverity
CLEARED, INDETERMINATE, WARNING, MINOR, MAJOR, CRITICAL = 1, 2, 3, 4, 5, 6
# AlarmType
COMMUNICATIONS, QOS, PROCESSING, EQUIPMENT, ENVIRONMENTAL = 1, 2, 3, 4, 5
# AlarmState
ACTIVE, CLEARED_STATE = 1, 2
# IncidentSeverity
SEV_WARNING, SEV_MINOR, SEV_MAJOR, SEV_CRITICAL = 1, 2, 3, 4
# IncidentState
OPEN, ACKNOWLEDGED, RESOLVED, CLOSED = 1, 2, 3, 4
ACTIVE_STATES = (OPEN, ACKNOWLEDGED)
# IncidentKind
POWER, UNREACHABLE, ENVIRONMENT, FUEL, EQUIPMENT_KIND, TENANT_LINK, REGIONAL, EXTERNAL, ANOMALY = range(1, 10)
# TimelineKind
(T_OPENED, T_ALARM_JOINED, T_ALARM_CLEARED, T_ACKNOWLEDGED, T_ASSIGNED, T_COMMENTED, T_RESOLVED, T_AUTO_RESOLVED,
 T_CLOSED, T_REOPENED, T_MERGED, T_SPLIT, T_SUPPRESSED, T_UNSUPPRESSED, T_SEVERITY_CHANGED, T_ROOT_CAUSE_CHANGED,
 T_LINKED, T_FLAPPING) = range(1, 19)
# IncidentChange, by the subject's name (mesh.subjects.NOC_INCIDENT_CHANGES)
CHANGE_NUMBER = {"opened": 1, "updated": 2, "acknowledged": 3, "resolved": 4, "closed": 5, "reopened": 6}

CORRELATOR = "correlator"
DEFAULT_PAGE = 50
MAX_PAGE = 1000

# --------------------------------------------------------------------------- the cause table

# The power chain, root first: a site incident's root cause is its earliest steps.
CHAIN = ("mains_failure", "dg_fail_to_start", "rectifier_failure", "battery_low", "dc_low", "site_down",
         "tenant_link_down")
STEP_TEXT = {"mains_failure": "mains failure", "dg_fail_to_start": "DG failed to start",
             "rectifier_failure": "rectifier failure", "battery_low": "battery low", "dc_low": "DC bus low",
             "site_down": "site down", "tenant_link_down": "tenant link down"}
# steps that explain the others (the root cause is stated from these when present)
ROOT_STEPS = ("mains_failure", "dg_fail_to_start", "rectifier_failure")
DOWN_STEPS = ("dc_low", "site_down")  # every tenancy's service is down


@dataclass(frozen=True)
class Cause:
    """What a signal is: X.733 probable cause and event type, its default perceived severity, the
    incident kind it forms and its power-chain step ('' off the chain)."""

    probable_cause: str
    alarm_type: int
    severity: int
    kind: int
    step: str = ""
    text: str = ""


# AIOps detectors (workers/aiops_engine/domain.py, docs/aiops.md) -> cause. The one table.
DETECTORS: dict[str, Cause] = {
    "rule.mains_lost": Cause("mains_failure", ENVIRONMENTAL, MAJOR, POWER, "mains_failure", "mains failure"),
    "rule.dg_fail_to_start": Cause("dg_fail_to_start", EQUIPMENT, MAJOR, POWER, "dg_fail_to_start",
                                   "DG failed to start"),
    "rule.rectifier_fault": Cause("rectifier_failure", EQUIPMENT, MAJOR, POWER, "rectifier_failure",
                                  "rectifier failure"),
    "rule.battery_near_lvd": Cause("battery_low", EQUIPMENT, MAJOR, POWER, "battery_low", "battery near LVD"),
    "rule.battery_lvd": Cause("battery_low", EQUIPMENT, MAJOR, POWER, "battery_low", "battery at LVD"),
    "rule.dc_bus_low": Cause("dc_low", EQUIPMENT, CRITICAL, POWER, "dc_low", "DC bus low"),
    "rule.tenant_link_down": Cause("tenant_link_down", COMMUNICATIONS, MAJOR, TENANT_LINK, "tenant_link_down",
                                   "tenant link down"),
    "rule.dg_running_with_mains": Cause("dg_running_with_mains", EQUIPMENT, WARNING, EQUIPMENT_KIND, "",
                                        "DG running with mains present"),
    "rule.high_cabinet_temp": Cause("high_temperature", ENVIRONMENTAL, MAJOR, ENVIRONMENT, "",
                                    "cabinet temperature high"),
    "rule.door_open": Cause("enclosure_door_open", ENVIRONMENTAL, WARNING, ENVIRONMENT, "", "door open"),
    "rule.low_fuel": Cause("low_fuel", ENVIRONMENTAL, WARNING, FUEL, "", "fuel low"),
    "stat.fuel_theft": Cause("fuel_theft", ENVIRONMENTAL, CRITICAL, FUEL, "", "fuel theft suspected"),
    "stat.telemetry_gap": Cause("site_unreachable", COMMUNICATIONS, MAJOR, UNREACHABLE, "", "site unreachable"),
    "stat.baseline": Cause("threshold_crossed", QOS, WARNING, ANOMALY, "", "metric off its baseline"),
}
MODEL_CAUSE = Cause("multivariate_anomaly", QOS, WARNING, ANOMALY, "", "multivariate anomaly")
# Probable causes correlation knows (external alarms name these; others are EXTERNAL).
CAUSES: dict[str, Cause] = {c.probable_cause: c for c in DETECTORS.values()}
CAUSES["multivariate_anomaly"] = MODEL_CAUSE
CAUSES["site_down"] = Cause("site_down", EQUIPMENT, CRITICAL, POWER, "site_down", "site down")
CAUSES["dc_low"] = DETECTORS["rule.dc_bus_low"]
CAUSES["battery_low"] = DETECTORS["rule.battery_near_lvd"]
CAUSES["door_open"] = DETECTORS["rule.door_open"]

# AIOps Severity (aiops.proto: INFO 1, WARNING 2, MAJOR 3, CRITICAL 4) -> X.733 perceived severity
AIOPS_SEVERITY = {1: WARNING, 2: WARNING, 3: MAJOR, 4: CRITICAL}
# X.733 perceived severity -> incident severity
INCIDENT_SEVERITY = {CLEARED: SEV_WARNING, INDETERMINATE: SEV_WARNING, WARNING: SEV_WARNING, MINOR: SEV_MINOR,
                     MAJOR: SEV_MAJOR, CRITICAL: SEV_CRITICAL}


def detector_cause(detector: str) -> Cause:
    """The cause of an AIOps detector (model.* share one; an unknown detector is an anomaly)."""
    hit = DETECTORS.get(detector)
    if hit is not None:
        return hit
    if detector.startswith("model."):
        return MODEL_CAUSE
    return Cause(detector.replace(".", "_") or "anomaly", QOS, WARNING, ANOMALY, "", detector)


def cause_of(probable_cause: str, alarm_type: int = 0) -> Cause:
    """The cause of an external alarm's probable cause code (unknown: an EXTERNAL incident)."""
    hit = CAUSES.get(probable_cause)
    if hit is not None:
        return hit
    return Cause(probable_cause, alarm_type or PROCESSING, WARNING, EXTERNAL, "", probable_cause.replace("_", " "))


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """Correlation knobs (mesh.config.NocSettings, TOWERCO_NOC_*; docs/noc.md)."""

    dedup_window_s: float = 300.0       # a repeat of a cleared alarm's key within this is the same alarm
    flap_window_s: float = 600.0        # transitions counted over this window; also the calm needed to stop
    flap_threshold: int = 4             # transitions within the window that make an incident flapping
    regional_window_s: float = 300.0    # mains failures of one region within this are one outage
    regional_min_sites: int = 3         # sites needed for a regional outage
    auto_resolve_hold_s: float = 300.0  # every alarm cleared this long: auto-resolved
    reopen_window_s: float = 3600.0     # a recurrence this soon after resolution reopens the incident
    link_window_s: float = 86400.0      # a later recurrence opens a new incident linked to the earlier


# --------------------------------------------------------------------------- site facts


@dataclass(frozen=True)
class Tenancy:
    tenancy_id: str
    tenant_id: str
    sla_target: float  # fraction, e.g. 0.9995


@dataclass(frozen=True)
class SiteFacts:
    """What the Sites register says of a site (region, tenancies, calendar windows)."""

    site_id: str
    region: str = ""
    tenancies: tuple[Tenancy, ...] = ()
    windows: tuple[tuple[float, float], ...] = ()  # [start, end) epoch seconds

    @property
    def tenant_ids(self) -> list[str]:
        return sorted({t.tenant_id for t in self.tenancies})

    def window_end(self, t: float) -> float | None:
        """The end of the calendar window covering t (windows that chain on are followed), or None."""
        end: float | None = None
        probe = t
        for _ in range(len(self.windows) + 1):
            hit = max((e for s, e in self.windows if s <= probe < e), default=None)
            if hit is None:
                break
            end = hit
            probe = hit
        return end


@dataclass(frozen=True)
class Sla:
    """A tenancy's availability this month so far (from the KPI service)."""

    availability: float  # fraction
    period_minutes: int
    known: bool = True


def month_minutes(t: float) -> int:
    d = datetime.fromtimestamp(t, tz=UTC)
    return _month_minutes(d.year, d.month)


@functools.lru_cache(maxsize=64)
def _month_minutes(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1] * 1440


def month_start(t: float) -> float:
    d = datetime.fromtimestamp(t, tz=UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


def budget_minutes(target: float, sla: Sla | None, t: float) -> float:
    """Minutes of further outage this month before the target is breached (negative: breached).
    Allowed = (1 - target) x the month; used = (1 - availability) x the minutes measured so far."""
    allowed = (1.0 - target) * month_minutes(t)
    if sla is None or not sla.known:
        return round(allowed, 1)
    return round(allowed - (1.0 - sla.availability) * sla.period_minutes, 1)


# --------------------------------------------------------------------------- records


@dataclass
class Signal:
    """One raw raise or clear, from an AIOps anomaly event or PostAlarm."""

    source: str
    source_alarm_id: str
    site_id: str
    time: float
    probable_cause: str
    alarm_type: int
    severity: int  # X.733; CLEARED clears
    dedup_key: str
    clear_key: str
    specific_problem: str = ""
    tenant_id: str = ""
    text: str = ""
    kind: int = 0  # incident kind; 0: from the cause table
    step: str = ""
    explicit_time: bool = True  # the source gave the time (else "now": not part of the content)

    @property
    def clears(self) -> bool:
        return self.severity == CLEARED

    def content_hash(self) -> str:
        """What makes a (source, source_alarm_id) the same alarm when posted again."""
        raw = "\x1f".join(map(str, (self.site_id, self.probable_cause, self.alarm_type, self.severity,
                                       self.dedup_key, self.clear_key, self.specific_problem, self.tenant_id,
                                       self.text, round(self.time, 3) if self.explicit_time else None)))
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def signal_from_external(*, source: str, source_alarm_id: str, site_id: str, time: float, probable_cause: str,
                         alarm_type: int, severity: int, dedup_key: str = "", clear_key: str = "",
                         specific_problem: str = "", tenant_id: str = "", text: str = "",
                         explicit_time: bool = True) -> Signal:
    """A PostAlarm signal with its defaults: dedup key source/site/probable cause(/tenant), clear
    key = the dedup key."""
    cause = cause_of(probable_cause, alarm_type)
    dedup = dedup_key or "/".join(p for p in (source, site_id, probable_cause, tenant_id) if p)
    return Signal(source=source, source_alarm_id=source_alarm_id, site_id=site_id, time=time,
                  probable_cause=probable_cause, alarm_type=alarm_type or cause.alarm_type, severity=severity,
                  dedup_key=dedup, clear_key=clear_key or dedup, specific_problem=specific_problem,
                  tenant_id=tenant_id, text=text or cause.text, kind=cause.kind, step=cause.step,
                  explicit_time=explicit_time)


def signal_from_anomaly(*, anomaly_id: str, site_id: str, detector: str, metrics: Sequence[str], tenant_id: str,
                        severity: int, time: float, summary: str, cleared: bool) -> Signal:
    """An AIOps anomaly's detection (or clearing) as a signal; its dedup and clear key name the
    detector instance (site, detector, metrics, tenant), so repeats of one problem are one alarm."""
    cause = detector_cause(detector)
    key = "aiops/" + "/".join([site_id, detector, ",".join(metrics) if detector == "stat.baseline" else "",
                               tenant_id])
    return Signal(source="aiops", source_alarm_id=anomaly_id + ("/cleared" if cleared else ""), site_id=site_id,
                  time=time, probable_cause=cause.probable_cause, alarm_type=cause.alarm_type,
                  severity=CLEARED if cleared else AIOPS_SEVERITY.get(severity, cause.severity), dedup_key=key,
                  clear_key=key, specific_problem=detector, tenant_id=tenant_id, text=summary or cause.text,
                  kind=cause.kind, step=cause.step)


@dataclass
class AlarmRec:
    id: str
    source: str
    source_alarm_id: str
    site_id: str
    region: str
    alarm_type: int
    probable_cause: str
    specific_problem: str
    severity: int
    dedup_key: str
    clear_key: str
    state: int
    first_seen: float
    last_seen: float
    clear_time: float | None = None
    count: int = 1
    incident_id: str = ""
    tenant_ids: list[str] = field(default_factory=list)
    tenant_id: str = ""
    text: str = ""
    suppressed: bool = False
    transitions: int = 0
    flap_times: list[float] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    @property
    def step(self) -> str:
        return cause_of(self.probable_cause).step


@dataclass
class Impact:
    tenant_id: str
    tenancy_id: str
    site_id: str
    service_down: bool = False
    sla_target_percent: float = 0.0
    availability_percent: float = 0.0
    budget_remaining_minutes: float = 0.0

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Impact:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})  # type: ignore[arg-type]


@dataclass
class IncidentRec:
    id: str
    title: str
    kind: int
    severity: int
    state: int
    site_id: str
    region: str
    first_seen: float
    last_seen: float
    site_ids: list[str] = field(default_factory=list)
    root_code: str = ""
    root_summary: str = ""
    chain: list[str] = field(default_factory=list)
    impacts: list[Impact] = field(default_factory=list)
    tenant_ids: list[str] = field(default_factory=list)
    parent_id: str = ""
    child_ids: list[str] = field(default_factory=list)
    alarm_count: int = 0
    assignee: str = ""
    acknowledge_time: float | None = None
    acknowledged_by: str = ""
    resolve_time: float | None = None
    close_time: float | None = None
    suppressed: bool = False
    suppressed_until: float | None = None
    flapping: bool = False
    flap_last: float | None = None
    recurrence_of: str = ""
    reopen_count: int = 0
    merged_into: str = ""
    clear_since: float | None = None
    mains_time: float | None = None
    update_time: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES and not self.merged_into


@dataclass
class Entry:
    """One timeline entry of an incident."""

    incident_id: str
    time: float
    actor: str
    kind: int
    text: str = ""
    alarm_id: str = ""
    related_incident_id: str = ""


@dataclass
class Decisions:
    """What correlation (or an operator) did, for the store to write in one transaction."""

    alarms: dict[str, AlarmRec] = field(default_factory=dict)
    incidents: dict[str, IncidentRec] = field(default_factory=dict)
    new_alarms: set[str] = field(default_factory=set)
    new_incidents: set[str] = field(default_factory=set)
    joins: list[tuple[str, str, float, str]] = field(default_factory=list)  # incident, alarm, time, rule
    timeline: list[Entry] = field(default_factory=list)
    changes: list[tuple[str, str, Entry]] = field(default_factory=list)  # incident id, change, entry
    # records changed only by repeats (count, last seen): the store updates just those columns
    bumped_alarms: dict[str, AlarmRec] = field(default_factory=dict)
    bumped_incidents: dict[str, IncidentRec] = field(default_factory=dict)

    def touch(self, inc: IncidentRec, now: float) -> None:
        inc.update_time = max(inc.update_time, now)
        self.incidents[inc.id] = inc
        self.bumped_incidents.pop(inc.id, None)

    def dirty(self, alarm: AlarmRec) -> None:
        self.alarms[alarm.id] = alarm
        self.bumped_alarms.pop(alarm.id, None)

    def bump_alarm(self, alarm: AlarmRec) -> None:
        if alarm.id not in self.alarms:
            self.bumped_alarms[alarm.id] = alarm

    def bump(self, alarm: AlarmRec, inc: IncidentRec, now: float) -> None:
        """A repeat: the alarm's count and last seen, the incident's alarm count and last seen."""
        if alarm.id not in self.alarms:
            self.bumped_alarms[alarm.id] = alarm
        inc.update_time = max(inc.update_time, now)
        if inc.id not in self.incidents:
            self.bumped_incidents[inc.id] = inc

    def log(self, inc: IncidentRec, entry: Entry, change: str | None = None) -> Entry:
        self.timeline.append(entry)
        if change is not None:
            self.changes.append((inc.id, change, entry))
        self.touch(inc, entry.time)
        return entry

    def events(self) -> list[tuple[str, str, Entry]]:
        """The changes to publish, in order, per incident: an "updated" right after another change
        of the same incident in this batch says nothing new and is dropped (its timeline entry is
        kept); every other change is kept."""
        out: list[tuple[str, str, Entry]] = []
        last: dict[str, str] = {}
        for iid, change, entry in self.changes:
            if change == "updated" and iid in last:
                continue
            out.append((iid, change, entry))
            last[iid] = change
        return out


@dataclass
class SiteView:
    """A site's working set: its facts, its latest alarm per dedup key (active, or cleared
    recently) and its active and recent incidents."""

    facts: SiteFacts
    alarms: dict[str, AlarmRec] = field(default_factory=dict)
    incidents: list[IncidentRec] = field(default_factory=list)

    def by_clear_key(self, key: str) -> AlarmRec | None:
        hits = [a for a in self.alarms.values() if a.clear_key == key and a.active]
        return max(hits, key=lambda a: a.last_seen) if hits else None


@dataclass
class RegionView:
    """A region's active regional outage (if any) and its site power incidents that saw a mains
    failure recently (candidates for a regional outage)."""

    region: str
    parent: IncidentRec | None = None
    incidents: list[IncidentRec] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    alarm: AlarmRec | None
    incident_id: str
    rule: str


IdFactory = Callable[[], str]


# --------------------------------------------------------------------------- root cause and impact


def ordered_chain(steps: Iterable[str]) -> list[str]:
    have = set(steps)
    return [s for s in CHAIN if s in have]


def root_cause(chain: Sequence[str]) -> tuple[str, str]:
    """(code, summary) of a power chain: its root steps (mains, DG, rectifier) when present, else
    its first step. ("mains_failure+dg_fail_to_start", "mains failure, DG failed to start")."""
    steps = ordered_chain(chain)
    if not steps:
        return "", ""
    roots = [s for s in steps if s in ROOT_STEPS] or steps[:1]
    return "+".join(roots), ", ".join(STEP_TEXT.get(s, s.replace("_", " ")) for s in roots)


def title_of(inc: IncidentRec, text: str = "") -> str:
    where = inc.site_id or inc.region
    if inc.kind == REGIONAL:
        return f"{inc.region}: regional grid outage ({len(inc.site_ids)} sites)"
    if inc.root_summary:
        return f"{where}: {inc.root_summary}"
    return f"{where}: {text}" if text else where


def impacts_of(facts: SiteFacts, *, down_all: bool, down_tenants: Iterable[str], sla: Mapping[str, Sla], t: float,
               only_tenants: Iterable[str] | None = None) -> list[Impact]:
    """The site's tenancies with their SLA exposure; `only_tenants` limits them (a tenant's link)."""
    down = set(down_tenants)
    only = set(only_tenants) if only_tenants is not None else None
    out = []
    for ten in sorted(facts.tenancies, key=lambda x: (x.tenant_id, x.tenancy_id)):
        if only is not None and ten.tenant_id not in only:
            continue
        s = sla.get(ten.tenancy_id)
        out.append(Impact(tenant_id=ten.tenant_id, tenancy_id=ten.tenancy_id, site_id=facts.site_id,
                          service_down=down_all or ten.tenant_id in down,
                          sla_target_percent=round(ten.sla_target * 100.0, 4),
                          availability_percent=round(s.availability * 100.0, 4) if s and s.known else 0.0,
                          budget_remaining_minutes=budget_minutes(ten.sla_target, s, t)))
    return out


def _severity_of(alarms: Iterable[AlarmRec], floor: int = SEV_WARNING) -> int:
    return max([floor, *(INCIDENT_SEVERITY.get(a.severity, SEV_WARNING) for a in alarms)])


def refresh_incident(inc: IncidentRec, alarms: Sequence[AlarmRec], facts: SiteFacts, sla: Mapping[str, Sla],
                     now: float, out: Decisions) -> None:
    """Recompute root cause, title, severity and impact of a site incident from its alarms (the
    active ones decide who is down; every alarm ever joined keeps its step in the chain)."""
    mine = [a for a in alarms if a.incident_id == inc.id]
    active = [a for a in mine if a.active]
    if inc.kind == POWER:
        chain = ordered_chain([*inc.chain, *(a.step for a in mine if a.step)])
        code, summary = root_cause(chain)
        if chain != inc.chain:
            inc.chain = chain
        if code != inc.root_code and code:
            if inc.root_code:
                out.log(inc, Entry(inc.id, now, CORRELATOR, T_ROOT_CAUSE_CHANGED,
                                   f"root cause {inc.root_summary} -> {summary}"), "updated")
            inc.root_code, inc.root_summary = code, summary
    elif not inc.root_code and mine:
        first = min(mine, key=lambda a: a.first_seen)
        inc.root_code, inc.root_summary = first.probable_cause, cause_of(first.probable_cause).text or first.text
    sev = _severity_of(active or mine)
    if inc.kind == POWER and any(s in inc.chain for s in DOWN_STEPS):
        sev = SEV_CRITICAL
    if sev > inc.severity:
        if inc.alarm_count > 1 or inc.id not in out.new_incidents:
            out.log(inc, Entry(inc.id, now, CORRELATOR, T_SEVERITY_CHANGED, f"severity {inc.severity} -> {sev}"),
                    "updated")
        inc.severity = sev
    down_all = inc.kind == POWER and any(a.step in DOWN_STEPS for a in active)
    down_tenants = [a.tenant_id for a in active if a.step == "tenant_link_down" and a.tenant_id]
    # an incident made only of per-tenant signals (a tenant's link, a tenant's own equipment) is
    # that tenant's alone: only its tenancies are impacted and only it may see the incident
    only = {a.tenant_id for a in mine} if mine and all(a.tenant_id for a in mine) else None
    impacts = impacts_of(facts, down_all=down_all, down_tenants=down_tenants, sla=sla, t=now, only_tenants=only)
    inc.impacts = impacts
    inc.tenant_ids = sorted(only if only is not None else {i.tenant_id for i in impacts} | set(facts.tenant_ids))
    inc.title = title_of(inc, mine[0].text if mine else "")
    out.touch(inc, now)


# --------------------------------------------------------------------------- correlation


def _group(kind: int, step: str, view: SiteView) -> int:
    """The incident kind an alarm joins: a tenant link going down on a site with an active power
    incident is part of that power incident (the link fell because the site went dark)."""
    if kind == TENANT_LINK and any(i.kind == POWER and i.active for i in view.incidents):
        return POWER
    return kind


def _prune(times: list[float], now: float, window: float) -> list[float]:
    return [x for x in times if x > now - window]


def correlate(view: SiteView, sig: Signal, *, params: Params, out: Decisions, new_id: IdFactory,
              sla: Mapping[str, Sla] | None = None, region: RegionView | None = None) -> Outcome:
    """Apply one signal to its site's working set. Returns the alarm it made or changed and the
    incident it belongs to (no alarm: a clear that found nothing active)."""
    sla = sla or {}
    if sig.clears:
        return _clear(view, sig, params=params, out=out, sla=sla)
    return _raise(view, sig, params=params, out=out, new_id=new_id, sla=sla, region=region)


def _clear(view: SiteView, sig: Signal, *, params: Params, out: Decisions, sla: Mapping[str, Sla]) -> Outcome:
    alarm = view.by_clear_key(sig.clear_key)
    if alarm is None:
        return Outcome(None, "", "nothing active to clear")
    t = max(sig.time, alarm.last_seen)
    alarm.state, alarm.clear_time = CLEARED_STATE, t
    alarm.transitions += 1
    alarm.flap_times = _prune([*alarm.flap_times, t], t, params.flap_window_s)
    out.dirty(alarm)
    inc = next((i for i in view.incidents if i.id == alarm.incident_id), None)
    if inc is None:
        return Outcome(alarm, alarm.incident_id, "cleared")
    inc.flap_last = t
    out.log(inc, Entry(inc.id, t, CORRELATOR, T_ALARM_CLEARED, f"{alarm.probable_cause} cleared", alarm.id),
            "updated")
    if not any(a.active and a.incident_id == inc.id for a in view.alarms.values()):
        inc.clear_since = t
    refresh_incident(inc, list(view.alarms.values()), view.facts, sla, t, out)
    return Outcome(alarm, inc.id, "cleared")


def _raise(view: SiteView, sig: Signal, *, params: Params, out: Decisions, new_id: IdFactory,
           sla: Mapping[str, Sla], region: RegionView | None) -> Outcome:
    t = sig.time
    kind = sig.kind or cause_of(sig.probable_cause, sig.alarm_type).kind
    step = sig.step or cause_of(sig.probable_cause, sig.alarm_type).step
    window_end = view.facts.window_end(t)
    alarm = view.alarms.get(sig.dedup_key)
    rule = ""
    was_active = alarm is not None and alarm.active
    if alarm is not None and alarm.active:
        alarm.count += 1
        alarm.last_seen = max(alarm.last_seen, t)
        alarm.severity = max(alarm.severity, sig.severity)
        rule = "dedup: repeat of an active alarm"
    elif alarm is not None and alarm.clear_time is not None and (
            t - alarm.clear_time <= params.flap_window_s or t - alarm.last_seen <= params.dedup_window_s):
        alarm.state, alarm.clear_time = ACTIVE, None
        alarm.count += 1
        alarm.transitions += 1
        alarm.last_seen = max(alarm.last_seen, t)
        alarm.flap_times = _prune([*alarm.flap_times, t], t, params.flap_window_s)
        alarm.suppressed = alarm.suppressed or window_end is not None
        rule = "dedup: raised again within the flapping window"
    else:
        alarm = AlarmRec(id=new_id(), source=sig.source, source_alarm_id=sig.source_alarm_id, site_id=sig.site_id,
                         region=view.facts.region, alarm_type=sig.alarm_type, probable_cause=sig.probable_cause,
                         specific_problem=sig.specific_problem, severity=sig.severity, dedup_key=sig.dedup_key,
                         clear_key=sig.clear_key, state=ACTIVE, first_seen=t, last_seen=t,
                         tenant_ids=view.facts.tenant_ids, tenant_id=sig.tenant_id, text=sig.text,
                         suppressed=window_end is not None)
        view.alarms[sig.dedup_key] = alarm
        out.new_alarms.add(alarm.id)
    if not was_active:
        out.dirty(alarm)

    inc = next((i for i in view.incidents if i.id == alarm.incident_id and i.active), None)
    if inc is None and was_active and alarm.incident_id:
        # a re-send of an alarm that stayed active while an operator resolved (or closed) its
        # incident: counted, but it reopens nothing (only a raise after a clear is a recurrence)
        out.bump_alarm(alarm)
        return Outcome(alarm, alarm.incident_id, "repeat of an alarm of a resolved incident")
    group = _group(kind, step, view)
    if inc is None:
        inc = next((i for i in view.incidents if i.active and i.kind == group), None)
        if inc is not None:
            rule = rule or _join_rule(group, step)
    if inc is not None:
        joined_now = alarm.incident_id != inc.id
        if joined_now:
            alarm.incident_id = inc.id
            out.joins.append((inc.id, alarm.id, t, rule))
        inc.alarm_count += 1
        inc.last_seen = max(inc.last_seen, t)
        if joined_now:
            out.log(inc, Entry(inc.id, t, CORRELATOR, T_ALARM_JOINED, f"{alarm.probable_cause}: {rule}", alarm.id),
                    "updated")
        elif was_active:  # a repeat of an active alarm of the incident: counts only (no entry, no event)
            out.bump(alarm, inc, t)
            return Outcome(alarm, inc.id, rule)
        else:
            out.touch(inc, t)
        if was_active:
            out.dirty(alarm)
    else:
        out.dirty(alarm)
        inc = _recurrence(view, group, t, params, out, alarm)
        if inc is None:
            inc = _open(view, sig, group, t, params, out, new_id, alarm, window_end)
            rule = "opened"
        else:
            rule = "recurrence within the reopen window"
        alarm.incident_id = inc.id
        out.joins.append((inc.id, alarm.id, t, rule))
    inc.clear_since = None
    if inc.suppressed and window_end is None:
        inc.suppressed, inc.suppressed_until = False, None
        out.log(inc, Entry(inc.id, t, CORRELATOR, T_UNSUPPRESSED, "raised: an alarm outside any calendar window",
                           alarm.id), "updated")
    elif inc.suppressed and window_end is not None:
        inc.suppressed_until = max(inc.suppressed_until or 0.0, window_end)
    if len(alarm.flap_times) >= params.flap_threshold:
        inc.flap_last = t
        if not inc.flapping:
            inc.flapping = True
            out.log(inc, Entry(inc.id, t, CORRELATOR, T_FLAPPING,
                               f"flapping: {len(alarm.flap_times)} transitions of {alarm.probable_cause} within "
                               f"{params.flap_window_s:.0f}s", alarm.id), "updated")
    if step == "mains_failure" and inc.mains_time is None:
        inc.mains_time = t
    refresh_incident(inc, list(view.alarms.values()), view.facts, sla, t, out)
    if step == "mains_failure" and region is not None and inc.kind == POWER:
        regional(region, inc, t, params=params, out=out, new_id=new_id)
    return Outcome(alarm, inc.id, rule)


def _join_rule(group: int, step: str) -> str:
    if group == POWER and step:
        return f"power chain: {STEP_TEXT.get(step, step)} on the site's open power incident"
    return "same site and class as an open incident"


def _same_problem(inc: IncidentRec, alarm: AlarmRec) -> bool:
    """Whether an alarm recurs an earlier incident's problem: its power-chain step was in that
    incident's chain, or (off the chain) its probable cause was that incident's root cause."""
    step = alarm.step
    if step:
        return step in inc.chain
    return alarm.probable_cause == inc.root_code


def _recurrence(view: SiteView, group: int, t: float, params: Params, out: Decisions,
                alarm: AlarmRec) -> IncidentRec | None:
    """A resolved incident of the same site and class resolved within the reopen window is
    reopened (and returned)."""
    cands = [i for i in view.incidents if i.kind == group and i.state == RESOLVED and not i.merged_into
             and i.resolve_time is not None and t - i.resolve_time <= params.reopen_window_s
             and _same_problem(i, alarm)]
    if not cands:
        return None
    inc = max(cands, key=lambda i: i.resolve_time or 0.0)
    inc.state, inc.resolve_time = OPEN, None
    inc.reopen_count += 1
    inc.alarm_count += 1
    inc.last_seen = max(inc.last_seen, t)
    out.log(inc, Entry(inc.id, t, CORRELATOR, T_REOPENED,
                       f"recurrence of {alarm.probable_cause} within {params.reopen_window_s:.0f}s of resolution",
                       alarm.id), "reopened")
    return inc


def _open(view: SiteView, sig: Signal, group: int, t: float, params: Params, out: Decisions, new_id: IdFactory,
          alarm: AlarmRec, window_end: float | None) -> IncidentRec:
    earlier = [i for i in view.incidents if i.kind == group and not i.merged_into and not i.active
               and t - (i.resolve_time or i.close_time or i.last_seen) <= params.link_window_s
               and _same_problem(i, alarm)]
    inc = IncidentRec(id=new_id(), title="", kind=group, severity=SEV_WARNING, state=OPEN, site_id=view.facts.site_id,
                      site_ids=[view.facts.site_id], region=view.facts.region, first_seen=t, last_seen=t,
                      alarm_count=1, suppressed=window_end is not None, suppressed_until=window_end, update_time=t)
    if earlier:
        inc.recurrence_of = max(earlier, key=lambda i: i.last_seen).id
    view.incidents.append(inc)
    out.new_incidents.add(inc.id)
    alarm.incident_id = inc.id
    refresh_incident(inc, list(view.alarms.values()), view.facts, {}, t, out)
    text = f"opened by {alarm.probable_cause} ({sig.source})"
    if inc.recurrence_of:
        text += "; recurs an earlier incident"
    out.log(inc, Entry(inc.id, t, CORRELATOR, T_OPENED, text, alarm.id, inc.recurrence_of), "opened")
    if inc.suppressed:
        out.log(inc, Entry(inc.id, t, CORRELATOR, T_SUPPRESSED, "inside a calendar window of the site", alarm.id))
    return inc


def regional(region: RegionView, inc: IncidentRec, t: float, *, params: Params, out: Decisions,
             new_id: IdFactory) -> IncidentRec | None:
    """The regional rule: a site incident with a mains failure joins its region's active regional
    outage; or, when `regional_min_sites` sites of the region lost mains within the regional
    window, a regional outage opens with them as children. Returns the parent, if any."""
    if inc.parent_id:
        return region.parent if region.parent and region.parent.id == inc.parent_id else None
    if inc not in region.incidents:
        region.incidents.append(inc)
    parent = region.parent if region.parent is not None and region.parent.active else None
    if parent is None:
        cands = [i for i in region.incidents if i.active and not i.parent_id and i.kind == POWER
                 and i.mains_time is not None and t - i.mains_time <= params.regional_window_s]
        if len({i.site_id for i in cands}) < params.regional_min_sites:
            return None
        parent = IncidentRec(id=new_id(), title="", kind=REGIONAL, severity=SEV_MAJOR, state=OPEN, site_id="",
                             region=region.region, first_seen=min(i.first_seen for i in cands), last_seen=t,
                             root_code="regional_grid_outage", root_summary="regional grid outage",
                             chain=["mains_failure"], update_time=t)
        region.parent = parent
        out.new_incidents.add(parent.id)
        out.log(parent, Entry(parent.id, t, CORRELATOR, T_OPENED,
                              f"{len(cands)} sites of {region.region} lost mains within "
                              f"{params.regional_window_s:.0f}s"), "opened")
        children = cands
    else:
        children = [inc]
    for child in children:
        child.parent_id = parent.id
        out.log(child, Entry(child.id, t, CORRELATOR, T_LINKED, f"part of the regional grid outage of {region.region}",
                             related_incident_id=parent.id), "updated")
        out.timeline.append(Entry(parent.id, t, CORRELATOR, T_LINKED, f"{child.site_id} joined",
                                  related_incident_id=child.id))
    refresh_parent(parent, [c for c in region.incidents if c.parent_id == parent.id], t, out)
    return parent


def refresh_parent(parent: IncidentRec, children: Sequence[IncidentRec], now: float, out: Decisions) -> None:
    """A regional outage's figures from its children: sites, tenants, impacts, alarm count,
    severity, first/last seen."""
    kids = [c for c in children if not c.merged_into]
    parent.child_ids = sorted(c.id for c in kids)
    parent.site_ids = sorted({s for c in kids for s in c.site_ids})
    parent.tenant_ids = sorted({t for c in kids for t in c.tenant_ids})
    parent.impacts = [i for c in sorted(kids, key=lambda c: c.site_id) for i in c.impacts]
    parent.alarm_count = sum(c.alarm_count for c in kids)
    if kids:
        parent.first_seen = min(parent.first_seen, *(c.first_seen for c in kids))
        parent.last_seen = max(parent.last_seen, *(c.last_seen for c in kids))
        parent.severity = max(parent.severity, *(c.severity for c in kids))
        parent.suppressed = all(c.suppressed for c in kids)
    parent.title = title_of(parent)
    out.touch(parent, now)


# --------------------------------------------------------------------------- the periodic task


def tick(inc: IncidentRec, now: float, *, params: Params, facts: SiteFacts | None, out: Decisions,
         children: Sequence[IncidentRec] = ()) -> None:
    """Timers of one active incident at `now`: a calendar window that ended raises it; flapping
    stops after a calm flapping window; auto-resolve once every alarm stayed clear for the hold
    (never while flapping); a regional outage resolves when none of its children is active."""
    if not inc.active:
        return
    if inc.suppressed and inc.suppressed_until is not None and inc.suppressed_until <= now:
        later = facts.window_end(now) if facts is not None else None
        if later is not None:
            inc.suppressed_until = later
            out.touch(inc, now)
        else:
            inc.suppressed, inc.suppressed_until = False, None
            out.log(inc, Entry(inc.id, now, CORRELATOR, T_UNSUPPRESSED,
                               "raised: the calendar window ended with the incident still open"), "updated")
    if inc.flapping and (inc.flap_last is None or inc.flap_last + params.flap_window_s <= now):
        inc.flapping = False
        out.log(inc, Entry(inc.id, now, CORRELATOR, T_FLAPPING,
                           f"no longer flapping: no transition for {params.flap_window_s:.0f}s"), "updated")
    if inc.kind == REGIONAL:
        if children and not any(c.active for c in children):
            _auto_resolve(inc, now, "every site of the regional outage resolved", out)
        return
    if inc.clear_since is not None and not inc.flapping and inc.clear_since + params.auto_resolve_hold_s <= now:
        _auto_resolve(inc, now, f"every alarm clear for {params.auto_resolve_hold_s:.0f}s", out)


def _auto_resolve(inc: IncidentRec, now: float, why: str, out: Decisions) -> None:
    inc.state, inc.resolve_time, inc.clear_since = RESOLVED, now, None
    out.log(inc, Entry(inc.id, now, CORRELATOR, T_AUTO_RESOLVED, why), "resolved")


# --------------------------------------------------------------------------- lifecycle


class IllegalTransition(Exception):
    """An operator action the incident's state does not allow; `reason` is the ErrorInfo reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


ACTIONS: dict[str, tuple[tuple[int, ...], int, int, str]] = {
    # action: (allowed from, to, timeline kind, change)
    "acknowledge": ((OPEN,), ACKNOWLEDGED, T_ACKNOWLEDGED, "acknowledged"),
    "resolve": ((OPEN, ACKNOWLEDGED), RESOLVED, T_RESOLVED, "resolved"),
    "close": ((RESOLVED,), CLOSED, T_CLOSED, "closed"),
    "reopen": ((RESOLVED, CLOSED), OPEN, T_REOPENED, "reopened"),
}
STATE_NAMES = {OPEN: "open", ACKNOWLEDGED: "acknowledged", RESOLVED: "resolved", CLOSED: "closed"}


def _refuse_merged(inc: IncidentRec, action: str) -> None:
    if inc.merged_into:
        raise IllegalTransition(f"cannot {action} incident {inc.id}: it was merged into {inc.merged_into}",
                                "INCIDENT_MERGED")


def transition(inc: IncidentRec, action: str, *, actor: str, now: float, note: str, out: Decisions) -> Entry:
    """open -> acknowledged -> resolved -> closed, reopen from resolved or closed. Anything else
    raises IllegalTransition (FAILED_PRECONDITION) with a reason such as INCIDENT_CLOSED."""
    allowed, to, kind, change = ACTIONS[action]
    _refuse_merged(inc, action)
    if inc.state not in allowed:
        state = STATE_NAMES.get(inc.state, str(inc.state))
        raise IllegalTransition(
            f"cannot {action} a {state} incident (allowed from: {', '.join(STATE_NAMES[s] for s in allowed)})",
            f"INCIDENT_{state.upper()}")
    inc.state = to
    if action == "acknowledge":
        inc.acknowledge_time, inc.acknowledged_by = now, actor
    elif action == "resolve":
        inc.resolve_time, inc.clear_since = now, None
    elif action == "close":
        inc.close_time = now
    elif action == "reopen":
        inc.resolve_time = inc.close_time = None
        inc.reopen_count += 1
    return out.log(inc, Entry(inc.id, now, actor, kind, note), change)


def assign(inc: IncidentRec, assignee: str, *, actor: str, now: float, out: Decisions) -> Entry:
    _refuse_merged(inc, "assign")
    if inc.state == CLOSED:
        raise IllegalTransition("cannot assign a closed incident (reopen it first)", "INCIDENT_CLOSED")
    inc.assignee = assignee
    text = f"assigned to {assignee}" if assignee else "unassigned"
    return out.log(inc, Entry(inc.id, now, actor, T_ASSIGNED, text), "updated")


def comment(inc: IncidentRec, text: str, *, actor: str, now: float, out: Decisions) -> Entry:
    return out.log(inc, Entry(inc.id, now, actor, T_COMMENTED, text), "updated")


def merge(target: IncidentRec, sources: Sequence[IncidentRec], alarms: Sequence[AlarmRec], *, actor: str, now: float,
          out: Decisions) -> Entry:
    """Merge `sources` into `target`: their alarms move to it, they are closed as merged."""
    _refuse_merged(target, "merge into")
    if target.state == CLOSED:
        raise IllegalTransition("cannot merge into a closed incident (reopen it first)", "INCIDENT_CLOSED")
    ids = [s.id for s in sources]
    if target.id in ids:
        raise IllegalTransition("an incident cannot be merged into itself", "MERGE_INTO_SELF")
    if len(set(ids)) != len(ids):
        raise IllegalTransition("an incident is named twice", "MERGE_DUPLICATE")
    for s in sources:
        _refuse_merged(s, "merge")
        if s.kind == REGIONAL or target.kind == REGIONAL:
            raise IllegalTransition("regional outages are not merged; their children are linked", "MERGE_REGIONAL")
    for a in alarms:
        if a.incident_id in ids:
            a.incident_id = target.id
            out.dirty(a)
            out.joins.append((target.id, a.id, now, f"merged by {actor}"))
    for s in sources:
        target.alarm_count += s.alarm_count
        target.first_seen = min(target.first_seen, s.first_seen)
        target.last_seen = max(target.last_seen, s.last_seen)
        target.site_ids = sorted(set(target.site_ids) | set(s.site_ids))
        target.tenant_ids = sorted(set(target.tenant_ids) | set(s.tenant_ids))
        have = {(i.tenancy_id, i.site_id) for i in target.impacts}
        target.impacts += [i for i in s.impacts if (i.tenancy_id, i.site_id) not in have]
        target.severity = max(target.severity, s.severity)
        if target.kind == POWER and s.chain:
            target.chain = ordered_chain([*target.chain, *s.chain])
        was_closed = s.state == CLOSED
        s.merged_into = target.id
        s.state = CLOSED
        s.close_time = now
        out.log(s, Entry(s.id, now, actor, T_MERGED, f"merged into {target.id}", related_incident_id=target.id),
                "updated" if was_closed else "closed")
    if target.kind == POWER:
        code, summary = root_cause(target.chain)
        if code:
            target.root_code, target.root_summary = code, summary
    target.title = title_of(target)
    return out.log(target, Entry(target.id, now, actor, T_MERGED, f"merged {', '.join(ids)}"), "updated")


def split(inc: IncidentRec, alarm_ids: Sequence[str], alarms: Sequence[AlarmRec], *, title: str, actor: str,
          now: float, new_id: IdFactory, facts: SiteFacts, out: Decisions) -> tuple[IncidentRec, Entry]:
    """Move the named alarms (some, not all, of the incident's) into a new incident."""
    _refuse_merged(inc, "split")
    if inc.state == CLOSED:
        raise IllegalTransition("cannot split a closed incident (reopen it first)", "INCIDENT_CLOSED")
    mine = {a.id: a for a in alarms if a.incident_id == inc.id}
    wanted = list(dict.fromkeys(alarm_ids))
    missing = [a for a in wanted if a not in mine]
    if missing:
        raise IllegalTransition(f"alarm {missing[0]} is not an alarm of incident {inc.id}", "ALARM_NOT_IN_INCIDENT")
    if len(wanted) >= len(mine):
        raise IllegalTransition("a split must leave at least one alarm in the incident", "SPLIT_ALL_ALARMS")
    moved = [mine[a] for a in wanted]
    kinds = {cause_of(a.probable_cause, a.alarm_type).kind for a in moved}
    kind = kinds.pop() if len(kinds) == 1 else inc.kind
    new = IncidentRec(id=new_id(), title="", kind=kind, severity=SEV_WARNING, state=OPEN, site_id=inc.site_id,
                      site_ids=sorted({a.site_id for a in moved}), region=inc.region,
                      first_seen=min(a.first_seen for a in moved), last_seen=max(a.last_seen for a in moved),
                      alarm_count=sum(a.count for a in moved), update_time=now)
    out.new_incidents.add(new.id)
    for a in moved:
        a.incident_id = new.id
        out.dirty(a)
        out.joins.append((new.id, a.id, now, f"split by {actor}"))
    inc.alarm_count = max(0, inc.alarm_count - new.alarm_count)
    rest = [a for a in mine.values() if a.incident_id == inc.id]
    if inc.kind == POWER:
        inc.chain = ordered_chain(a.step for a in rest if a.step)
        inc.root_code = ""
    refresh_incident(inc, rest, facts, {}, now, out)
    refresh_incident(new, moved, facts, {}, now, out)
    if title:
        new.title = title
    if not any(a.active for a in moved):
        new.clear_since = now
    if not any(a.active for a in rest) and inc.active:
        inc.clear_since = now
    out.log(new, Entry(new.id, now, actor, T_OPENED, f"split out of {inc.id}", related_incident_id=inc.id), "opened")
    out.timeline.append(Entry(new.id, now, actor, T_SPLIT, f"{len(moved)} alarms from {inc.id}",
                              related_incident_id=inc.id))
    entry = out.log(inc, Entry(inc.id, now, actor, T_SPLIT, f"{len(moved)} alarms split into {new.id}",
                               related_incident_id=new.id), "updated")
    return new, entry



def page_size(size: int) -> int:
    return min(size or DEFAULT_PAGE, MAX_PAGE)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class StatIncident:
    id: str
    site_ids: tuple[str, ...]
    region: str
    tenant_ids: tuple[str, ...]
    first_seen: float
    acknowledge_time: float | None
    resolve_time: float | None


@dataclass(frozen=True)
class StatAlarms:
    site_id: str
    region: str
    tenant_ids: tuple[str, ...]
    occurrences: int


@dataclass
class Stats:
    key: str = ""
    incidents: int = 0
    raw_alarms: int = 0
    alarms_per_incident: float = 0.0
    noise_reduction: float = 0.0
    mtta_seconds: float = 0.0
    mttr_seconds: float = 0.0
    mtbf_seconds: float = 0.0
    acknowledged: int = 0
    resolved: int = 0


def _keys(group_by: int, site_ids: Iterable[str], region: str, tenant_ids: Iterable[str]) -> list[str]:
    if group_by == 1:
        return sorted(set(site_ids))
    if group_by == 2:
        return [region]
    if group_by == 3:
        return sorted(set(tenant_ids))
    return [""]


def noc_stats(incidents: Sequence[StatIncident], alarms: Sequence[StatAlarms], *, range_s: float,
              group_by: int = 0) -> tuple[Stats, list[Stats]]:
    """The overall figures and the groups (group_by: 0 none, 1 site, 2 region, 3 tenant).

    incidents: the top-level incidents first seen in the range (a regional outage stands for its
    children; merged ones are left out); alarms: the raw alarm occurrences of the range. MTBF =
    range x sites / site-incidents (per site: range / its incidents)."""
    def build(key: str, incs: Sequence[StatIncident], occ: int) -> Stats:
        s = Stats(key=key, incidents=len(incs), raw_alarms=occ)
        if incs:
            s.alarms_per_incident = round(occ / len(incs), 4)
        if occ:
            s.noise_reduction = round(max(0.0, 1.0 - len(incs) / occ), 6)
        acks = [i.acknowledge_time - i.first_seen for i in incs if i.acknowledge_time is not None]
        res = [i.resolve_time - i.first_seen for i in incs if i.resolve_time is not None]
        s.acknowledged, s.resolved = len(acks), len(res)
        s.mtta_seconds = round(sum(acks) / len(acks), 3) if acks else 0.0
        s.mttr_seconds = round(sum(res) / len(res), 3) if res else 0.0
        site_incidents = sum(len(i.site_ids) or 1 for i in incs)
        sites = len({x for i in incs for x in i.site_ids}) or (1 if incs else 0)
        s.mtbf_seconds = round(range_s * sites / site_incidents, 3) if site_incidents else 0.0
        return s

    overall = build("", incidents, sum(a.occurrences for a in alarms))
    if not group_by:
        return overall, []
    by_inc: dict[str, list[StatIncident]] = {}
    for i in incidents:
        for k in _keys(group_by, i.site_ids, i.region, i.tenant_ids):
            by_inc.setdefault(k, []).append(i)
    by_occ: dict[str, int] = {}
    for a in alarms:
        for k in _keys(group_by, [a.site_id], a.region, a.tenant_ids):
            by_occ[k] = by_occ.get(k, 0) + a.occurrences
    groups = [build(k, by_inc.get(k, []), by_occ.get(k, 0)) for k in sorted(set(by_inc) | set(by_occ))]
    if group_by == 1:
        for g in groups:  # per site: the range over that site's incidents
            g.mtbf_seconds = round(range_s / g.incidents, 3) if g.incidents else 0.0
    return overall, groups


def copy_incident(inc: IncidentRec) -> IncidentRec:
    return replace(inc, site_ids=list(inc.site_ids), chain=list(inc.chain), impacts=[replace(i) for i in inc.impacts],
                   tenant_ids=list(inc.tenant_ids), child_ids=list(inc.child_ids))
