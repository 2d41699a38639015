"""The tenant isolation matrix of issue 9, generated from the descriptors.

Every read RPC of the sites, telemetry, KPI, AIOps, BI and Files services (an http rule that is a GET, or a
server-streaming RPC) is called by every caller for every target over every transport:

* callers: admin, viewer and noc_operator for "*"; tenant_viewer for acme; and two combinations
  the auth rule refuses (tenant_viewer for "*", viewer for acme), signed validly with the stack's
  key, which must be UNAUTHENTICATED (HTTP 401) everywhere;
* targets: the RPC's request built from field-name conventions (site_id, tenant_id, tenancy_id,
  window_id, anomaly_id, prediction_id, file_id, region, month, range, step, metrics, page,
  limit) for acme's own resources ("own": SEC-A, its anomaly, prediction and document, region
  sec-region-0), acme's resources on the shared site ("shared": SEC-AB), beta's ("other": SEC-B,
  region sec-region-1 that holds no site of acme), beta's next to acme on the shared site
  ("other@shared": SEC-AB with tenant beta, beta's SEC-AB tenancy and document, beta's own
  link anomaly on SEC-AB, the SEC-N window and prediction), and the unscoped form (no id at all:
  lists, fleet figures, the change and anomaly feeds);
* transports: gRPC straight to the service (token in metadata); REST through the gateway (every
  binding: the template's path with the ids filled in, the other fields as proto3 JSON query
  parameters; Authorization header) for unary RPCs; SSE (Authorization header) and WebSocket
  (?access_token=) through the gateway for server-streaming ones. While the streaming cells
  read, a pump ingests samples of every leased site and renames SEC-A, SEC-AB and SEC-B as admin,
  and a stream that answers data must carry a change made after its first frame (it is live).

The documented answer: staff get data, foreign rows included; tenant_viewer acme gets NOT_FOUND
(404, never PERMISSION_DENIED) when a required id of the request is another tenant's, NOT_FOUND
or an answer without foreign rows when only a filter is, and data otherwise. No successful answer
to acme (proto as JSON text, REST body, every stream frame) may contain a string of another
tenant: beta, gamma, SEC-B, SEC-N, beta's tenancy ids, the SEC-B and SEC-N window ids, or the
region that holds only foreign sites, the anomalies, predictions and files acme may not see.
Nothing may answer 5xx / INTERNAL / UNKNOWN. Figures-only answers (AGGREGATES) get the leak check
only; staff-only reads (STAFF_ONLY) must answer a tenant nothing. Product defects the matrix found
are listed in KNOWN_DEFECTS (their cells must still fail; they are printed, not hidden). Signed
download links (the file_download role) have their own test.

An RPC whose request the conventions cannot build (a required field without a convention) fails
the matrix by name. The matrix size and a table are printed by the last test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import grpc
import httpx
import jwt
import orjson
import pytest
import websockets
from google.api import field_behavior_pb2
from google.protobuf import json_format, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from secstack import inject_aiops
from towerco.noc.v1 import noc_pb2, noc_pb2_grpc
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from towerco.validate.v1 import validate_pb2

from gateway.transcode import routes as gw_routes
from gateway.transcode.pattern import LITERAL, Template
from mesh import auth

SERVICES = ("sites", "telemetry", "kpi", "aiops", "bi", "files", "noc")
# Reads built on another branch and not served yet (none now: WatchIncidents, the NOC live feed,
# landed with services/noc/feed.py).
PENDING: frozenset[str] = frozenset()
F = FieldDescriptor

UNARY_TIMEOUT_S = 15.0
STREAM_FIRST_S = 8.0  # a streaming cell waits this long at most for its first frame
STREAM_AFTER_FIRST_S = 3.0  # then reads this long (several live-change rounds arrive meanwhile;
# a staff stream replays every change and anomaly of the session first)
STREAM_MAX_FRAMES = 5000
PUMP_EVERY_S = 0.25  # the live-change pump during the streaming tests
CONCURRENCY = 8


# ------------------------------------------------------------------------------------ callers


@dataclass(frozen=True)
class Caller:
    role: str
    tenant: str

    @property
    def label(self) -> str:
        return f"{self.role}@{self.tenant}"

    @property
    def refused(self) -> bool:
        return auth.claims_problem(self.tenant, [self.role]) is not None

    @property
    def staff(self) -> bool:
        return not self.refused and self.tenant == auth.STAFF_TENANT


OWN_TENANT = "acme"
CALLERS = (
    Caller("admin", "*"),
    Caller("viewer", "*"),
    Caller("noc_operator", "*"),
    Caller("tenant_viewer", OWN_TENANT),
    Caller("tenant_viewer", "*"),  # refused: a tenant-scoped role for every tenant
    Caller("viewer", OWN_TENANT),  # refused: a staff role for one tenant
)


def token_for(sec, caller: Caller) -> str:
    if not caller.refused:
        return sec.token(caller.role, caller.tenant)
    # mint_token refuses these combinations; sign the claims ourselves, validly
    s = sec.settings
    now = int(time.time())
    claims = {"sub": f"sec-forged-{caller.role}-{caller.tenant}", "tenant": caller.tenant, "roles": [caller.role],
              "iss": s.jwt_issuer, "aud": s.jwt_audience, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, s.jwt_secret, algorithm="HS256")


# ------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    name: str
    site: str = ""
    tenant: str = ""
    tenancy: str = ""
    window: str = ""
    anomaly: str = ""
    prediction: str = ""
    file: str = ""
    region: str = ""
    incident: str = ""
    alarm: str = ""

    def value(self, kind: str) -> str:
        return getattr(self, kind)


ID_FIELDS = {"site_id": "site", "tenant_id": "tenant", "tenancy_id": "tenancy", "window_id": "window",
             "anomaly_id": "anomaly", "prediction_id": "prediction", "file_id": "file", "region": "region",
             "incident_id": "incident", "alarm_id": "alarm"}


def targets_of(sec) -> list[Target]:
    t, w, a, p, f = sec.tenancies, sec.windows, sec.anomalies, sec.predictions, sec.files
    i, al = sec.incidents, sec.alarms
    return [
        Target("own", "SEC-A", "acme", t[("SEC-A", "acme")], w["SEC-A"], a["SEC-A"], p["SEC-A"],
               f[("SEC-A", "acme")], sec.region_of("SEC-A"), i["SEC-A"], al["SEC-A"]),
        Target("shared", "SEC-AB", "acme", t[("SEC-AB", "acme")], w["SEC-AB"], a["SEC-AB"], p["SEC-AB"],
               f[("SEC-AB", "acme")], "", i["SEC-AB"], al["SEC-AB"]),
        Target("other", "SEC-B", "beta", t[("SEC-B", "beta")], w["SEC-B"], a["SEC-B"], p["SEC-B"],
               f[("SEC-B", "beta")], sec.region_of("SEC-B"), i["SEC-B"], al["SEC-B"]),
        # beta next to acme: beta's own anomaly on the shared site (its link), the SEC-N prediction
        # and window (a site nobody leases), beta's document of the shared site, beta's own NOC
        # incident and alarm on the shared site
        Target("other@shared", "SEC-AB", "beta", t[("SEC-AB", "beta")], w["SEC-N"], a["SEC-AB/beta"], p["SEC-N"],
               f[("SEC-AB", "beta")], "", i["SEC-AB/beta"], al["SEC-AB/beta"]),
        Target("unscoped"),
    ]


def leases(sec) -> dict[str, tuple[str, ...]]:
    """site -> tenants, read back from the seeded tenancies."""
    out: dict[str, list[str]] = {site: [] for site in sec.windows}
    for (site, tenant) in sec.tenancies:
        out.setdefault(site, []).append(tenant)
    return {s: tuple(ts) for s, ts in out.items()}


def foreign_to_acme(sec, kind: str, value: str) -> bool:
    """Is this id another tenant's (invisible to tenant acme)?"""
    lease = leases(sec)
    if kind == "site":
        return OWN_TENANT not in lease.get(value, ())
    if kind == "tenant":
        return value != OWN_TENANT
    if kind == "tenancy":
        return not any(tid == value and tenant == OWN_TENANT for (_, tenant), tid in sec.tenancies.items())
    if kind == "window":
        site = next(s for s, wid in sec.windows.items() if wid == value)
        return OWN_TENANT not in lease.get(site, ())
    if kind == "anomaly":
        # a site's anomaly is its tenants'; one of a single tenant (its link, Anomaly.tenant_id) is
        # that tenant's alone, even on a shared site
        key = next(k for k, aid in sec.anomalies.items() if aid == value)
        site, _, tenant = key.partition("/")
        return OWN_TENANT not in lease.get(site, ()) or (tenant not in ("", OWN_TENANT))
    if kind == "prediction":
        site = next(s for s, pid in sec.predictions.items() if pid == value)
        return OWN_TENANT not in lease.get(site, ())
    if kind == "file":
        return not any(fid == value and tenant == OWN_TENANT for (_, tenant), fid in sec.files.items())
    if kind == "region":
        return all(OWN_TENANT not in ts for s, ts in lease.items() if sec.region_of(s) == value)
    if kind in ("incident", "alarm"):
        # a site's NOC incident or alarm is its tenants'; beta's own (tenant_id beta) is beta's alone
        ids = sec.incidents if kind == "incident" else sec.alarms
        key = next(k for k, v in ids.items() if v == value)
        site, _, tenant = key.partition("/")
        return OWN_TENANT not in lease.get(site, ()) or (tenant not in ("", OWN_TENANT))
    raise AssertionError(kind)


def foreign_markers(sec) -> list[str]:
    """Strings that identify another tenant than acme, lower-cased (the answers are searched
    case-insensitively, so a tenant's display name "Beta" counts too)."""
    lease = leases(sec)
    markers = {"beta", "gamma"}
    markers |= {s for s, ts in lease.items() if OWN_TENANT not in ts}  # SEC-B, SEC-N
    markers |= {tid for (_, tenant), tid in sec.tenancies.items() if tenant != OWN_TENANT}
    markers |= {wid for s, wid in sec.windows.items() if OWN_TENANT not in lease[s]}
    markers |= {v for v in sec.anomalies.values() if foreign_to_acme(sec, "anomaly", v)}
    markers |= {v for v in sec.predictions.values() if foreign_to_acme(sec, "prediction", v)}
    markers |= {fid for (_, tenant), fid in sec.files.items() if tenant != OWN_TENANT}
    markers |= {v for v in sec.incidents.values() if foreign_to_acme(sec, "incident", v)}
    markers |= {v for v in sec.alarms.values() if foreign_to_acme(sec, "alarm", v)}
    # a region holding only foreign sites (secstack: region sec-region-<i % 2>)
    regions: dict[str, set[str]] = defaultdict(set)
    for i, site in enumerate(lease):
        regions[f"sec-region-{i % 2}"].add(site)
    markers |= {r for r, sites in regions.items() if all(OWN_TENANT not in lease[s] for s in sites)}
    return sorted(m.lower() for m in markers)


OWN_MARKERS = ("acme", "sec-a")  # "sec-a" also matches SEC-AB, acme's shared site

# Unscoped answers that are figures only, naming no row (detector counts and model facts; the
# fleet's energy total without a region or site): no row to look for, own or foreign. The leak
# check still applies to them.
AGGREGATES = frozenset({"GetDetectorStatus", "GetEnergyReport"})
# Figures-only answers whatever the target (NOC statistics: counts and means, no row named): the
# leak check only, on every target.
FIGURES = frozenset({"GetNocStats"})
# Reads a tenant is answered nothing by, by rule (services/bi/servicer.py: the recommendations are
# the towerco's own work): a tenant's answer must have no row at all.
STAFF_ONLY = frozenset({"ListRecommendations"})

# Product defects this matrix found, kept visible rather than failing every run until they are
# fixed: each (RPC, target, caller) cell MUST still show a problem (a cell of the list that
# passes fails the test: the defect is gone, take it off the list), its problems are printed by
# the summary, and any other failing cell fails as usual.
KNOWN_DEFECTS: dict[tuple[str, str, str], str] = {
    # empty: AIOPS-TENANT-ANOMALY (another tenant's own anomaly on a shared site shown) and
    # BI-RULESETS-NOT-FOUND (tenants/{other}/penalty-rule-sets answered an empty list) are fixed
}


# ------------------------------------------------------------------------------ the read RPCs


@dataclass
class Op:
    service: str
    method: MethodDescriptor
    routes: list[gw_routes.Route]  # its GET bindings (none for a stream without an http rule)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request_cls(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_cls(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def read_ops() -> list[Op]:
    services = gw_routes.discover_services(SERVICES)
    found = sorted(gw_routes.short_name(s) for s in services)
    assert found == sorted(SERVICES), f"discovered services {found}, want {sorted(SERVICES)}"
    all_routes = gw_routes.build_routes(services)
    ops = []
    for svc in services:
        for m in svc.methods:
            gets = [r for r in all_routes if r.method.full_name == m.full_name and r.http_method == "GET"]
            if (gets or m.server_streaming) and m.name not in PENDING:
                ops.append(Op(gw_routes.short_name(svc), m, gets))
    return ops


def is_required(fd: FieldDescriptor) -> bool:
    opts = fd.GetOptions()
    if field_behavior_pb2.REQUIRED in opts.Extensions[field_behavior_pb2.field_behavior]:
        return True
    return opts.HasExtension(validate_pb2.field) and opts.Extensions[validate_pb2.field].required


class Unbuildable(Exception):
    """The conventions do not say how to fill a required field of this RPC's request."""


class NotApplicable(Exception):
    """This target has no value for a field the request requires (e.g. unscoped GetSite)."""


@dataclass
class Built:
    msg: Message
    ids: list[tuple[str, str, str, bool]]  # (field, kind, value, required)


def build_request(sec, op: Op, target: Target) -> Built:
    """The request for `target`, from field-name conventions; every required field is filled."""
    if op.method.client_streaming:
        raise Unbuildable(f"{op.method.full_name}: a client-streaming read RPC has no single request")
    msg = op.request_cls()
    ids: list[tuple[str, str, str, bool]] = []
    for fd in op.method.input_type.fields:
        required = is_required(fd)
        if fd.name in ID_FIELDS and fd.type == F.TYPE_STRING and not fd.is_repeated:
            kind = ID_FIELDS[fd.name]
            value = target.value(kind)
            if not value:
                if required:
                    raise NotApplicable(fd.name)
                continue
            setattr(msg, fd.name, value)
            ids.append((fd.name, kind, value, required))
            continue
        if fd.type == F.TYPE_MESSAGE and not fd.is_repeated:
            tname = fd.message_type.full_name
            if tname == "towerco.common.v1.TimeRange":
                if required:  # the seeded two hours, on whole hours
                    sub = getattr(msg, fd.name)
                    sub.start_time.seconds = sec.hour0
                    sub.end_time.seconds = sec.hour0 + 7200
                continue
            if tname == "google.protobuf.Duration" and fd.name == "step":
                if required:
                    getattr(msg, fd.name).seconds = 3600
                continue
            if tname == "towerco.common.v1.PageRequest":
                getattr(msg, fd.name).size = 1000  # one page shows every row
                continue
        if fd.name == "limit" and fd.type in (F.TYPE_INT32, F.TYPE_INT64) and not fd.is_repeated:
            msg.limit = 1000
            continue
        if fd.name == "month" and fd.type == F.TYPE_STRING and not fd.is_repeated:
            msg.month = sec.month  # the seeded hours' month (statements, energy reports)
            continue
        if fd.name == "metrics" and fd.is_repeated and fd.type == F.TYPE_STRING:
            if required:
                msg.metrics.extend(["dc_bus_v", "mains_present", "tenant_link_up"])
            continue
        if required:
            raise Unbuildable(f"{op.method.full_name}: no convention for the required field {fd.name!r}")
    return Built(msg, ids)


# ------------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    transport: str  # grpc | rest | sse | ws
    op: Op
    route: gw_routes.Route | None
    caller: Caller
    target: Target
    built: Built | None
    expect: str  # UNAUTHENTICATED | OK | NOT_FOUND | NOT_FOUND|FILTERED
    build_error: str = ""
    got: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        where = f"{self.route.http_method} {self.route.template.text}" if self.route else self.op.name
        return f"[{self.transport}] {where} as {self.caller.label} on {self.target.name}"


def expectation(sec, caller: Caller, built: Built) -> str:
    if caller.refused:
        return "UNAUTHENTICATED"
    if caller.staff:
        return "OK"
    if any(req and foreign_to_acme(sec, kind, v) for _, kind, v, req in built.ids):
        return "NOT_FOUND"
    if any(foreign_to_acme(sec, kind, v) for _, kind, v, _ in built.ids):
        return "NOT_FOUND|FILTERED"
    return "OK"


_CELLS: dict[str, list[Cell]] = {}
LIVE: list[tuple[float, tuple[str, ...]]] = []  # (monotonic time, markers) of each live change
_ROUNDS = itertools.count(1)


def live_since(t: float) -> list[str]:
    return [m for at, ms in LIVE if at > t for m in ms]
RESULTS: dict[str, list[Cell]] = {}


def cells_for(sec, transport: str) -> list[Cell]:
    """Every cell of one transport: op x caller x target (x binding for the gateway)."""
    key = transport
    if key in _CELLS:
        return _CELLS[key]
    cells: list[Cell] = []
    for op in read_ops():
        if transport == "rest" and op.streaming:
            continue  # a streaming GET is SSE
        if transport in ("sse", "ws") and not op.streaming:
            continue
        bindings: list[gw_routes.Route | None] = [None] if transport == "grpc" else list(op.routes)
        if not bindings:
            continue  # a stream without an http rule: gRPC only
        seen: set[tuple[int, bytes]] = set()
        for target in targets_of(sec):
            try:
                built = build_request(sec, op, target)
            except NotApplicable:
                continue
            except Unbuildable as exc:
                for caller in CALLERS:
                    cells.append(Cell(transport, op, None, caller, target, None, "", build_error=str(exc)))
                break
            if not built.ids and target.name != "unscoped":
                continue  # no id to aim with: the unscoped target is this request
            for i, route in enumerate(bindings):
                if route is not None and any(not _path_value(built.msg, v.field_path) for v in route.template.variables):
                    continue  # this binding needs an id the target does not have
                wire = (i, built.msg.SerializeToString(deterministic=True))
                if wire in seen:
                    continue  # the same request as another target's
                seen.add(wire)
                for caller in CALLERS:
                    cells.append(Cell(transport, op, route, caller, target, built, expectation(sec, caller, built)))
    _CELLS[key] = cells
    return cells


def _path_value(msg: Message, dotted: str) -> str:
    value: Any = msg
    for part in dotted.split("."):
        value = getattr(value, part)
    return str(value)


# ------------------------------------------------------------------------------ judging cells


def judge(sec, cell: Cell, code: str, text: str, http_status: int | None = None,
          live: list[str] | None = None) -> None:
    """Compare what came back with the documented answer; add every problem to the cell.

    `live` (streams): the markers of the changes made after the stream was established; a
    stream that answers data must carry at least one of them (it is live, not only a replay)."""
    cell.got = code if http_status is None else f"{http_status}/{code}"
    want_http = {"OK": 200, "UNAUTHENTICATED": 401, "NOT_FOUND": 404}
    if code in ("INTERNAL", "UNKNOWN", "DATA_LOSS") or (http_status or 0) >= 500:
        cell.problems.append(f"server error {cell.got}: {text[:300]}")
        return
    allowed = cell.expect.split("|")
    if "FILTERED" in allowed:
        allowed = [a for a in allowed if a != "FILTERED"] + ["OK"]
    if code not in allowed:
        cell.problems.append(f"want {cell.expect}, got {cell.got}: {text[:300]}")
        return
    if http_status is not None and http_status != want_http.get(code, -1):
        cell.problems.append(f"code {code} came with HTTP {http_status}")
    if code != "OK":
        return
    lowered = text.lower()
    if cell.op.name in STAFF_ONLY and not cell.caller.staff:
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            body = {"?": text}
        if any(v not in ([], {}, None) for v in body.values()):
            cell.problems.append(f"{cell.op.name} is staff-only, yet a tenant got: {text[:300]}")
        return
    if (cell.op.name in AGGREGATES and cell.target.name == "unscoped") or cell.op.name in FIGURES:
        leaks = [] if cell.caller.staff else [m for m in foreign_markers(sec) if m in lowered]
        if leaks:
            cell.problems.append(f"LEAK of {leaks}: {text[:300]}")
        return
    if cell.caller.staff:
        if cell.target.name in ("other", "other@shared", "unscoped") and not any(
                m in lowered for m in foreign_markers(sec)):
            cell.problems.append(f"staff answer shows no foreign row: {text[:300]}")
    else:
        leaks = [m for m in foreign_markers(sec) if m in lowered]
        if leaks:
            at = lowered.find(leaks[0])
            cell.problems.append(f"LEAK of {leaks}: ...{text[max(0, at - 200):at + 100]}...")
    if cell.expect == "OK" and cell.target.name in ("own", "shared", "unscoped") and not any(
            m in lowered for m in OWN_MARKERS):
        cell.problems.append(f"answer shows none of the caller's own rows: {text[:300]}")
    if live is not None and cell.expect == "OK" and not any(m in text for m in live):
        cell.problems.append(f"the stream carried none of the {len(live)} live changes made while it was open "
                             f"(e.g. {live[:2]}): {text[-300:]}")


def failures(cells: list[Cell]) -> list[str]:
    out = []
    for c in cells:
        if c.build_error:
            out.append(f"{c.label}: CANNOT BUILD THE REQUEST: {c.build_error}")
        for p in c.problems:
            out.append(f"{c.label}: {p}")
    return out


KNOWN_SEEN: dict[str, list[str]] = defaultdict(list)  # defect -> the cells showing it


def known_defect(cell: Cell) -> str | None:
    return KNOWN_DEFECTS.get((cell.op.name, cell.target.name, cell.caller.label))


def report(transport: str, cells: list[Cell]) -> None:
    RESULTS[transport] = cells
    for c in cells:
        defect = known_defect(c)
        if defect is None or c.build_error:
            continue
        if c.problems:
            KNOWN_SEEN[defect].append(f"{c.label}: {' '.join(c.problems[0].split())[:160]}")
            c.problems = []
            c.got += " (known defect)"
        else:
            c.problems.append(f"listed in KNOWN_DEFECTS ({defect.split(':')[0]}) but answered as documented: "
                              f"take it off the list")
    bad = failures(cells)
    assert not bad, f"{len(bad)} failing cells of {len(cells)} ({transport}):\n" + "\n".join(bad)


async def bounded(coros: list, limit: int = CONCURRENCY) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


# -------------------------------------------------------------------------------- transports


def rest_path(route: gw_routes.Route, msg: Message) -> str:
    tpl: Template = route.template
    parts: list[str] = []
    i = 0
    by_start = {v.start: v for v in tpl.variables}
    while i < len(tpl.segments):
        var = by_start.get(i)
        if var is not None:
            parts.append(quote(_path_value(msg, var.field_path), safe=""))
            i = var.end
            continue
        kind, text = tpl.segments[i]
        assert kind == LITERAL, f"{tpl.text}: a wildcard outside a variable"
        parts.append(text)
        i += 1
    return "/" + "/".join(parts) + (f":{tpl.verb}" if tpl.verb else "")


def _json_path(desc: Descriptor, dotted: str) -> str:
    out = []
    d: Descriptor | None = desc
    for part in dotted.split("."):
        assert d is not None
        fd = d.fields_by_name[part]
        out.append(fd.json_name)
        d = fd.message_type
    return ".".join(out)


def query_params(route: gw_routes.Route, msg: Message) -> list[tuple[str, str]]:
    """The fields not bound by the path, as proto3 JSON query parameters (dotted lowerCamel)."""
    bound = {_json_path(msg.DESCRIPTOR, v.field_path) for v in route.template.variables}
    tree = json_format.MessageToDict(msg)
    out: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for v in value:
                walk(prefix, v)
        elif prefix not in bound:
            out.append((prefix, "true" if value is True else "false" if value is False else str(value)))

    walk("", tree)
    return out


def grpc_error(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    return exc.code().name, exc.details() or ""


def status_name(body: Any) -> str:
    try:
        return next(c for c in grpc.StatusCode if c.value[0] == body["code"]).name
    except (StopIteration, KeyError, TypeError):
        return "?"


async def run_grpc_unary(sec, channels, cell: Cell) -> None:
    op = cell.op
    fn = channels[op.service].unary_unary(op.grpc_path, request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=op.response_cls.FromString)
    md = (("authorization", f"Bearer {token_for(sec, cell.caller)}"),)
    try:
        resp = await fn(cell.built.msg, metadata=md, timeout=UNARY_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        judge(sec, cell, *grpc_error(exc))
        return
    judge(sec, cell, "OK", json_format.MessageToJson(resp))


async def run_rest(sec, client: httpx.AsyncClient, cell: Cell) -> None:
    route = cell.route
    assert route is not None
    url = rest_path(route, cell.built.msg)
    params = query_params(route, cell.built.msg)
    r = await client.get(url, params=params, headers={"authorization": f"Bearer {token_for(sec, cell.caller)}"})
    if r.status_code == 200:
        judge(sec, cell, "OK", r.text, 200)
        return
    try:
        code = status_name(r.json())
    except ValueError:
        code = "?"
    judge(sec, cell, code, r.text, r.status_code)


class Frames:
    """The text of a stream's frames, and the error that ended it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.error: tuple[str, str] | None = None
        self.first_at = 0.0  # when the first frame came (monotonic)

    def add(self, text: str) -> None:
        if not self.texts:
            self.first_at = time.monotonic()
        self.texts.append(text)

    def live(self, opened: float) -> list[str]:
        """Markers of the changes made after the first frame came: by then the stream was
        established (and a replay was read), so these can only have come live."""
        return live_since(self.first_at or opened)

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


async def read_stream(next_item, on_item) -> None:
    """Feed frames to on_item (False stops) until the stream ends, STREAM_AFTER_FIRST_S after
    the first frame, or STREAM_FIRST_S without any."""
    stop_at = time.monotonic() + STREAM_FIRST_S
    count = 0
    while count < STREAM_MAX_FRAMES:
        left = stop_at - time.monotonic()
        if left <= 0:
            return
        try:
            item = await asyncio.wait_for(next_item(), left)
        except TimeoutError:
            return
        if item is StopAsyncIteration:
            return
        if on_item(item) is False:
            return
        if count == 0:
            stop_at = time.monotonic() + STREAM_AFTER_FIRST_S
        count += 1


async def run_grpc_stream(sec, channels, cell: Cell) -> None:
    op = cell.op
    fn = channels[op.service].unary_stream(op.grpc_path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=op.response_cls.FromString)
    md = (("authorization", f"Bearer {token_for(sec, cell.caller)}"),)
    opened = time.monotonic()
    call = fn(cell.built.msg, metadata=md)
    frames = Frames()

    async def nxt():
        msg = await call.read()
        return StopAsyncIteration if msg is grpc.aio.EOF else msg

    try:
        await read_stream(nxt, lambda m: frames.add(json_format.MessageToJson(m)))
    except grpc.aio.AioRpcError as exc:
        frames.error = grpc_error(exc)
    finally:
        call.cancel()
    if frames.error and not frames.texts:
        judge(sec, cell, *frames.error)
    elif frames.error:
        judge(sec, cell, frames.error[0], f"after {len(frames.texts)} frames: {frames.error[1]}")
    else:
        judge(sec, cell, "OK", frames.text, live=frames.live(opened))


async def run_sse(sec, client: httpx.AsyncClient, cell: Cell) -> None:
    route = cell.route
    assert route is not None
    url = rest_path(route, cell.built.msg)
    headers = {"authorization": f"Bearer {token_for(sec, cell.caller)}", "accept": "text/event-stream"}
    frames = Frames()
    opened = time.monotonic()
    async with client.stream("GET", url, params=query_params(route, cell.built.msg), headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            try:
                code = status_name(r.json())
            except ValueError:
                code = "?"
            judge(sec, cell, code, r.text, r.status_code)
            return
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            cell.problems.append(f"200 without an event stream: {r.headers.get('content-type')}")
            return
        lines = r.aiter_lines()
        event: dict[str, str] = {}

        async def nxt():
            # the next whole event (heartbeat comments are skipped)
            nonlocal event
            async for line in lines:
                if line == "":
                    if "data" in event:
                        done, event = event, {}
                        return done
                    event = {}
                    continue
                key, _, value = line.partition(":")
                if key:
                    event[key] = value[1:] if value.startswith(" ") else value
            return StopAsyncIteration

        def on(ev: dict[str, str]):
            if ev.get("event") == "error":
                try:
                    frames.error = (status_name(orjson.loads(ev["data"])), ev["data"])
                except orjson.JSONDecodeError:
                    frames.error = ("?", ev["data"])
                return False
            frames.add(ev["data"])
            return True

        await read_stream(nxt, on)
    if frames.error:
        # an error event after the 200 (an upstream slower to refuse than the gateway waits):
        # the code must still be the documented one
        judge(sec, cell, frames.error[0], f"error event after {len(frames.texts)} events: {frames.error[1]}")
    else:
        judge(sec, cell, "OK", frames.text, 200, live=frames.live(opened))


async def run_ws(sec, cell: Cell) -> None:
    route = cell.route
    assert route is not None
    params = [*query_params(route, cell.built.msg), ("access_token", token_for(sec, cell.caller))]
    url = sec.base.replace("http://", "ws://") + rest_path(route, cell.built.msg) + "?" + urlencode(params)
    frames = Frames()
    close_code = None
    opened = time.monotonic()
    async with websockets.connect(url, open_timeout=10) as ws:

        async def nxt():
            while True:
                try:
                    raw = await ws.recv()
                except websockets.exceptions.ConnectionClosed:
                    return StopAsyncIteration
                frame = orjson.loads(raw)
                if "heartbeat" not in frame:
                    return frame

        def on(frame: dict):
            if "error" in frame:
                frames.error = (status_name(frame["error"]), orjson.dumps(frame["error"]).decode())
                return False
            if "result" not in frame:
                cell.problems.append(f"unexpected frame {frame}")
                return False
            frames.add(orjson.dumps(frame["result"]).decode())
            return True

        await read_stream(nxt, on)
        if frames.error:
            with contextlib.suppress(asyncio.TimeoutError, websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2.0)
            close_code = ws.close_code
    if frames.error:
        code, text = frames.error
        judge(sec, cell, code, f"after {len(frames.texts)} frames: {text}")
        want_close = {"UNAUTHENTICATED": 4401, "NOT_FOUND": 4404}.get(code)
        if want_close is not None and close_code != want_close:
            cell.problems.append(f"{code} closed the socket with {close_code}, want {want_close}")
    else:
        judge(sec, cell, "OK", frames.text, live=frames.live(opened))


@contextlib.asynccontextmanager
async def grpc_channels(sec):
    chans = {svc: grpc.aio.insecure_channel(sec.targets[svc]) for svc in SERVICES}
    try:
        yield chans
    finally:
        for ch in chans.values():
            await ch.close()


# ------------------------------------------------------------------------- live-change pump


@contextlib.asynccontextmanager
async def live_changes(sec):
    """While the streaming cells read: write an anomaly on every site (secstack.inject_aiops, every
    other round: a staff anomaly feed replays them all), ingest
    samples of every leased site (dc_bus_v,
    mains_present and each tenant's tenant_link_up), rename SEC-A, SEC-AB and SEC-B as admin and,
    every other round, comment every NOC incident as noc_operator (the round in the comment: an
    incident change on the NOC feed), every PUMP_EVERY_S, so that live-only feeds carry both own and foreign changes."""
    lease = leases(sec)
    admin, service = sec.md("admin"), sec.md("service")
    # the commenter's subject lands in the feed's timeline entries: one naming no site ("sec-noc…"
    # would read as SEC-N, a foreign site)
    operator = (("authorization", "Bearer " + auth.mint_token(subject="matrix-pump", tenant="*",
                                                              roles=["noc_operator"], settings=sec.settings)),)
    stop = asyncio.Event()
    errors: list[str] = []
    originals: dict[str, str] = {}

    async def pump() -> None:
        async with grpc.aio.insecure_channel(sec.targets["telemetry"]) as tch, \
                grpc.aio.insecure_channel(sec.targets["sites"]) as sch, \
                grpc.aio.insecure_channel(sec.targets["noc"]) as nch:
            tel = telemetry_pb2_grpc.TelemetryServiceStub(tch)
            sites = sites_pb2_grpc.SitesServiceStub(sch)
            noc = noc_pb2_grpc.NocServiceStub(nch)
            for sid in ("SEC-A", "SEC-AB", "SEC-B"):
                originals[sid] = (await sites.GetSite(sites_pb2.GetSiteRequest(site_id=sid), metadata=admin)).site.name
            while not stop.is_set():
                n = next(_ROUNDS)  # numbered across the whole session: a replay of an earlier round never matches
                req = telemetry_pb2.IngestRequest(batch_id=f"matrix-{uuid.uuid4().hex}")
                # a time unique to this round (whole milliseconds, never .000): its JSON text marks it
                at = timestamp_pb2.Timestamp(seconds=int(time.time()) - 1, nanos=(n % 999 + 1) * 1_000_000)
                LIVE.append((time.monotonic(), (f'"{at.ToJsonString()}"', f"(matrix {n})")))
                for sid, tenants in lease.items():
                    if not tenants:
                        continue
                    req.samples.add(site_id=sid, metric="dc_bus_v", value=53.5).time.CopyFrom(at)
                    req.samples.add(site_id=sid, metric="mains_present", value=1.0).time.CopyFrom(at)
                    for t in tenants:
                        req.samples.add(site_id=sid, metric="tenant_link_up", value=1.0,
                                        tenant_id=t).time.CopyFrom(at)
                try:
                    if n % 2:  # an anomaly on every site (and beta's link on SEC-AB), the round in its summary
                        await inject_aiops(sec, f"(matrix {n})", time.time() - 1)
                    resp = await tel.Ingest(req, metadata=service, timeout=10)
                    if resp.rejected:
                        errors.append(f"ingest rejected {resp.rejections[:2]}")
                    for sid in ("SEC-A", "SEC-AB", "SEC-B"):
                        site = sites_pb2.Site(id=sid, name=f"{originals[sid]} (matrix {n})")
                        await sites.UpdateSite(sites_pb2.UpdateSiteRequest(site=site, update_mask={"paths": ["name"]}),
                                               metadata=admin, timeout=10)
                    # not on anomaly rounds; SEC-N's incident is only for unscoped feeds, which get the others
                    for iid in sorted({v for k, v in sec.incidents.items() if k != "SEC-N"}) if n % 2 == 0 else ():
                        await noc.CommentIncident(noc_pb2.CommentIncidentRequest(
                            incident_id=iid, text=f"(matrix {n})"), metadata=operator, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"pump: {exc.code().name} {exc.details()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PUMP_EVERY_S)
            for sid, name in originals.items():
                await sites.UpdateSite(sites_pb2.UpdateSiteRequest(site=sites_pb2.Site(id=sid, name=name),
                                                                   update_mask={"paths": ["name"]}), metadata=admin)

    LIVE.clear()
    task = asyncio.create_task(pump())
    try:
        await asyncio.sleep(0.3)  # the first batch and renames are out
        yield errors
    finally:
        stop.set()
        await task
    assert not errors, errors


# ------------------------------------------------------------------------------------- tests


def test_matrix_is_generated_from_the_descriptors(sec) -> None:
    """The enumeration finds the known read RPCs, only reads, and the refused callers are refused
    by the rule in mesh.auth (so a change of the rule shows here)."""
    ops = read_ops()
    names = {op.name for op in ops}
    for must in ("GetSite", "ListSites", "GetTenancy", "ListWindows", "WatchChanges", "QuerySamples",
                 "TailSamples", "GetSiteKpis", "GetTenantAvailability", "GetAvailabilityPolicy",
                 "ListAnomalies", "GetAnomaly", "WatchAnomalies", "GetPrediction", "GetDetectorStatus",
                 "GetPenaltyRuleSet", "GetSlaStatement", "GetEnergyReport", "ListRecommendations",
                 "GetFile", "ListFiles", "DownloadFile"):
        assert must in names, f"{must} is not enumerated: {sorted(names)}"
    for op in ops:
        assert not op.name.startswith(("Create", "Update", "Delete", "Ingest")), op.name
    refused = [c for c in CALLERS if c.refused]
    assert [c.label for c in refused] == ["tenant_viewer@*", "viewer@acme"]
    for c in refused:
        with pytest.raises(ValueError):
            sec.token(c.role, c.tenant)
    unbuildable = []
    for op in ops:
        for target in targets_of(sec):
            try:
                build_request(sec, op, target)
            except NotApplicable:
                pass
            except Unbuildable as exc:
                unbuildable.append(str(exc))
                break
    assert not unbuildable, "read RPCs whose request cannot be built:\n" + "\n".join(unbuildable)


async def test_grpc_direct(sec) -> None:
    cells = cells_for(sec, "grpc")
    async with grpc_channels(sec) as chans:
        await bounded([run_grpc_unary(sec, chans, c) for c in cells if c.built and not c.op.streaming])
        streams = [c for c in cells if c.built and c.op.streaming]
        async with live_changes(sec):
            await asyncio.gather(*(run_grpc_stream(sec, chans, c) for c in streams))
    report("grpc", cells)


async def test_rest_gateway(sec) -> None:
    cells = cells_for(sec, "rest")
    async with httpx.AsyncClient(base_url=sec.base, timeout=UNARY_TIMEOUT_S) as client:
        await bounded([run_rest(sec, client, c) for c in cells if c.built])
    report("rest", cells)


async def test_sse_gateway(sec) -> None:
    cells = cells_for(sec, "sse")
    limits = httpx.Limits(max_connections=len(cells) + 10, max_keepalive_connections=10)
    async with httpx.AsyncClient(base_url=sec.base, timeout=UNARY_TIMEOUT_S, limits=limits) as client:
        async with live_changes(sec):
            await asyncio.gather(*(run_sse(sec, client, c) for c in cells if c.built))
    report("sse", cells)


async def test_websocket_gateway(sec) -> None:
    cells = cells_for(sec, "ws")
    async with live_changes(sec):
        await asyncio.gather(*(run_ws(sec, c) for c in cells if c.built))
    report("ws", cells)


async def test_download_links_open_their_own_file_only(sec) -> None:
    """The file_download role (a tenant role) is carried only by signed download links: a link
    acme's viewer made opens that one file and nothing else, over REST and gRPC: another of
    acme's files and beta's files are NOT_FOUND, other reads are refused (403 PERMISSION_DENIED:
    the role may read nothing else), and acme's viewer
    cannot make a link to beta's file (NOT_FOUND)."""
    own, sibling = sec.files[("SEC-A", "acme")], sec.files[("SEC-AB", "acme")]
    foreign = [fid for (_, tenant), fid in sec.files.items() if tenant != OWN_TENANT]
    viewer = {"authorization": f"Bearer {sec.token('tenant_viewer', OWN_TENANT)}"}
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=sec.base, timeout=UNARY_TIMEOUT_S) as client:
        r = await client.post(f"/api/v1/files/{own}:link", json={"ttlSeconds": 600}, headers=viewer)
        assert r.status_code == 200, r.text
        link = r.json()
        assert link["url"].startswith(f"/api/v1/files/{own}:download?access_token="), link
        r = await client.get(link["url"])
        if r.status_code != 200 or "acme,SEC-A" not in r.text:
            problems.append(f"the link did not open its own file: {r.status_code} {r.text[:200]}")
        token = {"access_token": link["token"]}
        for fid in (sibling, *foreign):
            r = await client.get(f"/api/v1/files/{fid}:download", params=token)
            if r.status_code != 404:
                problems.append(f"the link of {own} opened {fid}: {r.status_code} {r.text[:200]}")
        for path in (f"/api/v1/files/{own}", "/api/v1/files", "/api/v1/sites", "/api/v1/anomalies",
                     f"/api/v1/tenants/{OWN_TENANT}/penalty-rule-sets"):
            # the gateway takes ?access_token= only on downloads (and WebSockets): the header here
            r = await client.get(path, headers={"authorization": f"Bearer {link['token']}"})
            if r.status_code != 403:
                problems.append(f"a download link read {path}: want 403, got {r.status_code} {r.text[:200]}")
        for fid in foreign:
            r = await client.post(f"/api/v1/files/{fid}:link", json={}, headers=viewer)
            if r.status_code != 404:
                problems.append(f"acme's viewer made a link to {fid}: {r.status_code} {r.text[:200]}")
    async with grpc.aio.insecure_channel(sec.targets["files"]) as ch:
        from towerco.files.v1 import files_pb2, files_pb2_grpc

        stub = files_pb2_grpc.FilesServiceStub(ch)
        md = (("authorization", f"Bearer {link['token']}"),)
        resp = await stub.DownloadFile(files_pb2.DownloadFileRequest(file_id=own), metadata=md)
        if b"acme,SEC-A" not in resp.body.data:
            problems.append(f"gRPC: the link did not open its own file: {resp.body.data[:100]!r}")
        for fid in (sibling, *foreign):
            try:
                resp = await stub.DownloadFile(files_pb2.DownloadFileRequest(file_id=fid), metadata=md)
                problems.append(f"gRPC: the link of {own} opened {fid}: {resp.file}")
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    problems.append(f"gRPC: the link on {fid}: {exc.code().name} {exc.details()}")
    assert not problems, "\n".join(problems)


def test_matrix_summary(capsys) -> None:
    """Print the matrix size and a compact table (the last test: the others have filled RESULTS)."""
    assert RESULTS, "no transport ran"
    lines = []
    total = sum(len(cs) for cs in RESULTS.values())
    per = ", ".join(f"{t} {len(cs)}" for t, cs in RESULTS.items())
    ops_all = read_ops()
    lines.append(f"tenant isolation matrix: {total} cells ({per}); {len(ops_all)} read RPCs, "
                 f"{sum(len(o.routes) for o in ops_all)} GET bindings, {len(CALLERS)} callers")
    ops = sorted({c.op.name for cs in RESULTS.values() for c in cs})
    transports = list(RESULTS)
    lines.append(f"{'RPC':<24}" + "".join(f"{t:>12}" for t in transports))
    for name in ops:
        row = f"{name:<24}"
        for t in transports:
            cs = [c for c in RESULTS[t] if c.op.name == name]
            ok = sum(1 for c in cs if not c.problems and not c.build_error)
            row += f"{(f'{ok}/{len(cs)}' if cs else '-'):>12}"
        lines.append(row)
    outcomes: Counter[tuple[str, str]] = Counter()
    for cs in RESULTS.values():
        for c in cs:
            outcomes[(c.caller.label, c.got.split("/")[-1] or "-")] += 1
    lines.append("answers by caller: " + "; ".join(
        f"{caller} {code} x{n}" for (caller, code), n in sorted(outcomes.items())))
    bad = sum(1 for cs in RESULTS.values() for c in cs if c.problems or c.build_error)
    lines.append(f"failing cells: {bad}")
    for defect, where in KNOWN_SEEN.items():
        lines.append(f"KNOWN PRODUCT DEFECT {defect}\n  shown by {len(where)} cells, e.g.\n    "
                     + "\n    ".join(where[:4]))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
