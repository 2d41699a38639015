"""The SitesService RPC handlers: authorize, call domain/store in one transaction together with
the outbox event of every change, and map rows <-> protobuf. Nothing else lives here.

The four entities (site, tenant, tenancy, calendar window) share one CRUD shape: an `Entity`
describes each (its message field, store functions, mask rules, checks, event tenants) and one
generic set of handlers (`_create`, `_get`, `_update`, `_delete`) serves all of them; the List
RPCs keep their own filters and share the paging.

Errors: domain decisions raise services.sites.domain errors and the store its typed refusals
(services.sites.store.Duplicate, ...), which `_rpc` turns into the mesh's rich gRPC errors
(INVALID_ARGUMENT with field violations, NOT_FOUND with ResourceInfo, ...). A database that
cannot be reached answers UNAVAILABLE (with RetryInfo); the pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from towerco.sites.v1 import sites_pb2 as pb
from towerco.sites.v1 import sites_pb2_grpc

from mesh import auth, db, errors, masks, outbox
from mesh.listener import PgListener
from services.sites import domain as d
from services.sites import store

SCHEMA = "sites"
SOURCE = "sites"
RESOURCE = {
    "site": "towerco.sites.v1.Site",
    "tenant": "towerco.sites.v1.Tenant",
    "tenancy": "towerco.sites.v1.Tenancy",
    "window": "towerco.sites.v1.CalendarWindow",
}
ACQUIRE_TIMEOUT_S = 5.0
WATCH_BATCH = 500

# ---------------------------------------------------------------------------------------------
# error mapping


def _not_found(entity: str, name: str) -> errors.NotFound:
    return errors.NotFound(f"{entity} {name!r} not found", resource_type=RESOURCE.get(entity, entity),
                           resource_name=name)


def _map(exc: BaseException) -> BaseException | None:
    if isinstance(exc, d.Invalid):
        first = exc.violations[0] if exc.violations else ("", "invalid request")
        return errors.InvalidArgument(f"{first[0]} {first[1]}".strip(),
                                      [errors.FieldViolation(f, desc) for f, desc in exc.violations])
    if isinstance(exc, d.Precondition):
        return errors.FailedPrecondition(str(exc), reason=exc.reason)
    if isinstance(exc, d.NotVisible):
        return _not_found(exc.resource_type, exc.resource_name)
    if isinstance(exc, d.Forbidden):
        return errors.PermissionDenied(str(exc))
    if isinstance(exc, store.Unstorable):  # a value PostgreSQL cannot take (a safety net)
        return errors.InvalidArgument("a value in the request cannot be stored in the register")
    if not isinstance(exc, errors.RichError) and db.is_unavailable(exc):
        return errors.Unavailable("the site register's database is unavailable; retry shortly", retry_after_s=1.0)
    return None


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def unary(self: SitesServicer, request: Message, context: Any) -> Message:
        try:
            d.check_storable_text(string_fields(request))
            return await fn(self, request, context)
        except Exception as exc:
            mapped = _map(exc)
            if mapped is None:
                raise
            raise mapped from None

    return unary


# ---------------------------------------------------------------------------------------------
# proto <-> row


def _enum_text(enum: EnumDescriptor, prefix: str, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        raise d.Invalid([("", f"unknown {enum.name} value {number}")])
    return value.name.removeprefix(prefix).lower()


def _enum_number(enum: EnumDescriptor, prefix: str, text: str) -> int:
    value = enum.values_by_name.get(prefix + text.upper())
    return value.number if value is not None else 0


_SITE_TYPE = (pb.SiteType.DESCRIPTOR, "SITE_TYPE_")
_SITE_STATUS = (pb.SiteStatus.DESCRIPTOR, "SITE_STATUS_")
_GRID = (pb.GridConnection.DESCRIPTOR, "GRID_CONNECTION_")
_CATEGORY = (pb.WindowCategory.DESCRIPTOR, "WINDOW_CATEGORY_")
_KIND = {"created": pb.CHANGE_KIND_CREATED, "updated": pb.CHANGE_KIND_UPDATED, "deleted": pb.CHANGE_KIND_DELETED}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A timestamptz (microsecond precision) as a Timestamp; integer arithmetic, no float rounding."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    micros = (value - _EPOCH) // _MICROSECOND
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def _dt(msg: Message, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    return getattr(msg, field).ToDatetime(tzinfo=UTC)


def string_fields(msg: Message, prefix: str = "") -> list[tuple[str, str]]:
    """(path, value) of every non-empty string in a message, nested and repeated ones included."""
    out: list[tuple[str, str]] = []
    for fd, value in msg.ListFields():
        path = prefix + fd.name
        if fd.type == FieldDescriptor.TYPE_STRING:
            if fd.is_repeated:
                out.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
            else:
                out.append((path, value))
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated:
            out.extend(string_fields(value, path + "."))
    return out


def site_row(site: pb.Site) -> dict[str, Any]:
    p = site.power
    return {
        "id": site.id, "name": site.name, "region": site.region,
        "latitude": site.location.latitude, "longitude": site.location.longitude,
        "type": _enum_text(*_SITE_TYPE, site.type), "status": _enum_text(*_SITE_STATUS, site.status),
        "grid": _enum_text(*_GRID, p.grid), "dg_capacity_kva": p.dg_capacity_kva, "fuel_tank_l": p.fuel_tank_l,
        "battery_bank_ah": p.battery_bank_ah, "battery_voltage_v": p.battery_voltage_v,
        "solar_kwp": p.solar_kwp, "rectifier_capacity_kw": p.rectifier_capacity_kw,
        "dg_start_delay_s": p.dg_start_delay_s,
    }


def site_proto(row: Mapping[str, Any], tenant_ids: list[str] | None = None) -> pb.Site:
    return pb.Site(
        id=row["id"], name=row["name"], region=row["region"],
        location={"latitude": row["latitude"], "longitude": row["longitude"]},
        type=_enum_number(*_SITE_TYPE, row["type"]), status=_enum_number(*_SITE_STATUS, row["status"]),
        power=pb.PowerConfig(
            grid=_enum_number(*_GRID, row["grid"]), dg_capacity_kva=row["dg_capacity_kva"],
            fuel_tank_l=row["fuel_tank_l"], battery_bank_ah=row["battery_bank_ah"],
            battery_voltage_v=row["battery_voltage_v"], solar_kwp=row["solar_kwp"],
            rectifier_capacity_kw=row["rectifier_capacity_kw"], dg_start_delay_s=row["dg_start_delay_s"],
        ),
        create_time=_ts(row["create_time"]), update_time=_ts(row["update_time"]),
        tenant_ids=row.get("tenant_ids", []) if tenant_ids is None else tenant_ids,
    )


def tenant_row(t: pb.Tenant) -> dict[str, Any]:
    return {"id": t.id, "name": t.name}


def tenant_proto(row: Mapping[str, Any]) -> pb.Tenant:
    return pb.Tenant(id=row["id"], name=row["name"], create_time=_ts(row["create_time"]),
                     update_time=_ts(row["update_time"]))


def tenancy_row(t: pb.Tenancy) -> dict[str, Any]:
    return {"id": t.id, "site_id": t.site_id, "tenant_id": t.tenant_id,
            "sla_availability_target": t.sla_availability_target, "dc_voltage_min_v": t.dc_voltage_min_v,
            "dc_voltage_max_v": t.dc_voltage_max_v, "monthly_fee_minor": t.monthly_fee_minor,
            "currency_code": t.currency_code}


def tenancy_proto(row: Mapping[str, Any]) -> pb.Tenancy:
    return pb.Tenancy(
        id=row["id"], site_id=row["site_id"], tenant_id=row["tenant_id"],
        sla_availability_target=row["sla_availability_target"], dc_voltage_min_v=row["dc_voltage_min_v"],
        dc_voltage_max_v=row["dc_voltage_max_v"], monthly_fee_minor=row["monthly_fee_minor"],
        currency_code=row["currency_code"], create_time=_ts(row["create_time"]),
        update_time=_ts(row["update_time"]),
    )


def window_row(w: pb.CalendarWindow) -> dict[str, Any]:
    return {"id": w.id, "site_id": w.site_id, "start_time": _dt(w, "start_time"), "end_time": _dt(w, "end_time"),
            "category": _enum_text(*_CATEGORY, w.category), "tenant_ids": list(w.tenant_ids),
            "description": w.description}


def window_proto(row: Mapping[str, Any], tenant_ids: list[str] | None = None) -> pb.CalendarWindow:
    return pb.CalendarWindow(
        id=row["id"], site_id=row["site_id"], start_time=_ts(row["start_time"]), end_time=_ts(row["end_time"]),
        category=_enum_number(*_CATEGORY, row["category"]),
        tenant_ids=row["tenant_ids"] if tenant_ids is None else tenant_ids,
        description=row["description"], created_by=row["created_by"], create_time=_ts(row["create_time"]),
        update_time=_ts(row["update_time"]),
    )


def _next_token(tokens: d.PageTokens, rows: list[dict[str, Any]], size: int, fp: str,
                key: Callable[[dict[str, Any]], list[Any]]) -> str:
    if len(rows) > size:
        return tokens.encode(key(rows[size - 1]), fp)
    return ""


# ---------------------------------------------------------------------------------------------
# the CRUD shape

Row = dict[str, Any]
Related = Callable[["SitesServicer", asyncpg.Connection, d.Caller, Row, d.ChangeKind], Awaitable[list[str]]]


@dataclass(frozen=True)
class Entity:
    """What the generic handlers need to know about one entity of the register."""

    name: d.Entity
    key: str                                     # Get/Delete request field and store keyword: "site_id"
    mask: masks.MaskRules
    row: Callable[[Any], Row]                    # message -> row
    proto: Callable[[Mapping[str, Any]], Any]    # row -> message (complete, for events)
    check: Callable[[Row, bool], None]           # (row, creating): refuse or normalise in place
    tenants: Callable[[Mapping[str, Any], Sequence[str]], list[str]]  # (row, site tenants) -> event tenants
    get: Callable[..., Awaitable[Row | None]]
    create: Callable[..., Awaitable[Row]]
    update: Callable[..., Awaitable[Row | None]]
    delete: Callable[..., Awaitable[bool]]
    # reads what a write needs inside its transaction (the site of a window or tenancy); returns
    # the site's tenants for the event
    related: Related | None = None
    # the site a create must be visible on before a refusal may say "permission denied"
    parent_key: str = ""
    duplicate: Callable[[Row], BaseException] | None = None
    prepare: Callable[[Row, d.Caller], None] | None = None   # a create's defaults

    @property
    def field(self) -> str:
        """The entity's field in requests, responses and SitesChange ("site", ...)."""
        return self.name


def _visible_site_out(caller: d.Caller, row: Mapping[str, Any]) -> pb.Site:
    return site_proto(row, d.visible_tenant_ids(caller, row.get("tenant_ids", [])))


def _visible_window_out(caller: d.Caller, row: Mapping[str, Any]) -> pb.CalendarWindow:
    return window_proto(row, d.visible_tenant_ids(caller, row["tenant_ids"]))


def _check_window(row: Row, creating: bool) -> None:
    row["tenant_ids"] = d.check_window(row, creating=creating)


async def _site_of_window(svc: SitesServicer, conn: asyncpg.Connection, caller: d.Caller, row: Row,
                          kind: d.ChangeKind) -> list[str]:
    if kind == "deleted":
        return await store.site_tenants(conn, site_id=row["site_id"])
    site = await store.get_site(conn, site_id=row["site_id"], tenant=caller.tenant_scope)
    if site is None:
        raise _not_found("site", row["site_id"])
    d.check_window_tenants(row["tenant_ids"], site["tenant_ids"], site_id=row["site_id"])
    return list(site["tenant_ids"])


async def _site_of_tenancy(svc: SitesServicer, conn: asyncpg.Connection, caller: d.Caller, row: Row,
                           kind: d.ChangeKind) -> list[str]:
    if kind == "created" and await store.get_site(conn, site_id=row["site_id"], tenant=caller.tenant_scope) is None:
        raise _not_found("site", row["site_id"])
    return []


def _exists(entity: str) -> Callable[[Row], BaseException]:
    def err(row: Row) -> BaseException:
        return errors.AlreadyExists(f"{entity} {row['id']!r} already exists", resource_type=RESOURCE[entity],
                                    resource_name=row["id"])
    return err


def _tenancy_exists(row: Row) -> BaseException:
    return errors.AlreadyExists(f"tenant {row['tenant_id']!r} already has a tenancy on site {row['site_id']!r}",
                                resource_type=RESOURCE["tenancy"], resource_name=f"{row['site_id']}/{row['tenant_id']}")


def _default_status(row: Row, caller: d.Caller) -> None:
    row["status"] = d.default_site_status(row["status"])


def _created_by(row: Row, caller: d.Caller) -> None:
    row["created_by"] = caller.subject


SITE = Entity("site", "site_id", d.SITE_MASK, site_row, site_proto, lambda r, c: d.check_site(r, creating=c),
              lambda r, _: d.event_tenants("site", site_tenants=r["tenant_ids"]),
              store.get_site, store.create_site, store.update_site, store.delete_site,
              duplicate=_exists("site"), prepare=_default_status)
TENANT = Entity("tenant", "tenant_id", d.TENANT_MASK, tenant_row, tenant_proto,
                lambda r, c: d.check_tenant(r, creating=c), lambda r, _: d.event_tenants("tenant", tenant_id=r["id"]),
                store.get_tenant, store.create_tenant, store.update_tenant, store.delete_tenant,
                duplicate=_exists("tenant"))
TENANCY = Entity("tenancy", "tenancy_id", d.TENANCY_MASK, tenancy_row, tenancy_proto,
                 lambda r, c: d.check_tenancy(r, creating=c),
                 lambda r, _: d.event_tenants("tenancy", tenant_id=r["tenant_id"]),
                 store.get_tenancy, store.create_tenancy, store.update_tenancy, store.delete_tenancy,
                 related=_site_of_tenancy, duplicate=_tenancy_exists)
WINDOW = Entity("window", "window_id", d.WINDOW_MASK, window_row, window_proto, _check_window,
                lambda r, site_tenants: d.event_tenants("window", site_tenants=site_tenants,
                                                        window_tenants=r["tenant_ids"]),
                store.get_window, store.create_window, store.update_window, store.delete_window,
                related=_site_of_window, parent_key="site_id", prepare=_created_by)


def _response(request: Message) -> Any:
    return getattr(pb, type(request).__name__.removesuffix("Request") + "Response")


def _crud(op: str, entity: Entity) -> Callable[..., Any]:
    """The RPC handler `op` ("create", "get", "update", "delete") of `entity`."""

    async def handler(self: SitesServicer, request: Message, context: Any) -> Message:
        return await getattr(self, f"_{op}")(entity, request)  # type: ignore[no-any-return]

    handler.__name__ = f"{op.title()}{entity.name.title()}"
    return _rpc(handler)


# ---------------------------------------------------------------------------------------------
# the servicer


class SitesServicer(sites_pb2_grpc.SitesServiceServicer):
    def __init__(self, pool: asyncpg.Pool, *, page_secret: str | bytes, watch_poll_s: float = 1.0):
        self.pool = pool
        self.tokens = d.PageTokens(page_secret)
        self.watch_poll_s = watch_poll_s
        self._tick = asyncio.Event()

    # -- plumbing

    @staticmethod
    def _caller() -> d.Caller:
        return d.caller_of(auth.current_identity())

    def _reader(self) -> d.Caller:
        caller = self._caller()
        d.check_read(caller)
        return caller

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            yield conn

    async def _check_write(self, caller: d.Caller, entity: d.Entity, name: str,
                           visible: Callable[[asyncpg.Connection], Any] | None) -> None:
        """PERMISSION_DENIED for a caller without the write role - or NOT_FOUND when the target is
        hidden from that (tenant-scoped) caller, so a refusal never confirms that it exists."""
        seen = True
        if visible is not None and d.needs_visibility_before_denial(caller, entity):
            async with self._conn() as conn:
                seen = (await visible(conn)) is not None
        d.check_write(caller, entity, resource_name=name, visible=seen)

    async def _emit(self, conn: asyncpg.Connection, entity: Entity, kind: d.ChangeKind, row: Mapping[str, Any],
                    tenant_ids: list[str]) -> None:
        subject = d.event_subject(entity.name, kind)
        change = pb.SitesChange(**{entity.field: entity.proto(row)})
        change.kind = _KIND[kind]
        await outbox.enqueue(conn, schema=SCHEMA, subject=subject, event_type=subject, source=SOURCE,
                             payload=change, tenant_ids=tenant_ids)

    def _out(self, entity: Entity, caller: d.Caller, row: Mapping[str, Any]) -> Any:
        if entity is SITE:
            return _visible_site_out(caller, row)
        if entity is WINDOW:
            return _visible_window_out(caller, row)
        return entity.proto(row)

    def _visible(self, entity: Entity, caller: d.Caller, key: str) -> Callable[[asyncpg.Connection], Any]:
        return lambda c: entity.get(c, **{entity.key: key}, tenant=caller.tenant_scope)

    # -- the CRUD shape, once for every entity

    async def _create(self, entity: Entity, request: Message) -> Message:
        caller = self._caller()
        row = entity.row(getattr(request, entity.field))
        if entity.parent_key:
            parent = row[entity.parent_key]
            await self._check_write(caller, entity.name, parent, self._visible(SITE, caller, parent))
        else:
            d.check_write(caller, entity.name)
        if entity.prepare is not None:
            entity.prepare(row, caller)
        entity.check(row, True)
        async with self._tx() as conn:
            related = await entity.related(self, conn, caller, row, "created") if entity.related else []
            try:
                created = await entity.create(conn, row=row)
            except store.Duplicate:
                if entity.duplicate is None:
                    raise
                raise entity.duplicate(row) from None
            except store.MissingReference as exc:
                raise _not_found(exc.entity, row[f"{exc.entity}_id"]) from None
            await self._emit(conn, entity, "created", created, entity.tenants(created, related))
        return _response(request)(**{entity.field: self._out(entity, caller, created)})

    async def _get(self, entity: Entity, request: Message) -> Message:
        caller = self._reader()
        key = getattr(request, entity.key)
        async with self._conn() as conn:
            row = await entity.get(conn, **{entity.key: key}, tenant=caller.tenant_scope)
        if row is None:
            raise _not_found(entity.name, key)
        return _response(request)(**{entity.field: self._out(entity, caller, row)})

    async def _update(self, entity: Entity, request: Message) -> Message:
        caller = self._caller()
        message = getattr(request, entity.field)
        key = message.id
        if not key:
            raise d.Invalid([(f"{entity.field}.id", "is required")])
        await self._check_write(caller, entity.name, key, self._visible(entity, caller, key))
        columns = masks.resolve_mask(entity.mask, masks.request_paths(request, message, entity.mask))
        incoming = entity.row(message)
        async with self._tx() as conn:
            current = await entity.get(conn, **{entity.key: key}, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found(entity.name, key)
            merged = masks.apply_mask(current, incoming, columns)
            entity.check(merged, False)
            related = await entity.related(self, conn, caller, merged, "updated") if entity.related else []
            updated = await entity.update(conn, **{entity.key: key}, values={c: merged[c] for c in columns})
            assert updated is not None  # locked above
            await self._emit(conn, entity, "updated", updated, entity.tenants(updated, related))
        return _response(request)(**{entity.field: self._out(entity, caller, updated)})

    async def _delete(self, entity: Entity, request: Message) -> Message:
        caller = self._caller()
        key = getattr(request, entity.key)
        await self._check_write(caller, entity.name, key, self._visible(entity, caller, key))
        async with self._tx() as conn:
            current = await entity.get(conn, **{entity.key: key}, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found(entity.name, key)
            related = await entity.related(self, conn, caller, current, "deleted") if entity.related else []
            try:
                await entity.delete(conn, **{entity.key: key})
            except store.StillReferenced:
                raise errors.FailedPrecondition(
                    f"{entity.name} {key!r} still has tenancies; end them first",
                    reason=f"{entity.name.upper()}_HAS_TENANCIES") from None
            await self._emit(conn, entity, "deleted", current, entity.tenants(current, related))
        return _response(request)()

    def _page(self, request: Message, what: str, caller: d.Caller, filters: Mapping[str, Any]
              ) -> tuple[int, str, list[Any] | None]:
        """(page size, query fingerprint, the decoded token's sort key) of a List request."""
        fp = d.query_fingerprint(what, caller.tenant_scope, dict(filters))
        return d.page_size(request.page.size), fp, self.tokens.decode(request.page.token, fp)

    CreateSite = _crud("create", SITE)
    GetSite = _crud("get", SITE)
    UpdateSite = _crud("update", SITE)
    DeleteSite = _crud("delete", SITE)
    CreateTenant = _crud("create", TENANT)
    GetTenant = _crud("get", TENANT)
    UpdateTenant = _crud("update", TENANT)
    DeleteTenant = _crud("delete", TENANT)
    CreateTenancy = _crud("create", TENANCY)
    GetTenancy = _crud("get", TENANCY)
    UpdateTenancy = _crud("update", TENANCY)
    DeleteTenancy = _crud("delete", TENANCY)
    CreateWindow = _crud("create", WINDOW)
    GetWindow = _crud("get", WINDOW)
    UpdateWindow = _crud("update", WINDOW)
    DeleteWindow = _crud("delete", WINDOW)

    # -- lists: each its own filters, one paging

    @_rpc
    async def ListSites(self, request: pb.ListSitesRequest, context: Any) -> pb.ListSitesResponse:
        caller = self._reader()
        bbox = None
        if request.HasField("bbox"):
            sw, ne = request.bbox.south_west, request.bbox.north_east
            bbox = (sw.latitude, sw.longitude, ne.latitude, ne.longitude)
            d.check_bbox(*bbox)
        filters = {"region": request.region, "tenant_id": request.tenant_id,
                   "status": _enum_text(*_SITE_STATUS, request.status) if request.status else "",
                   "query": request.query, "bbox": list(bbox) if bbox else None}
        size, fp, after = self._page(request, "sites", caller, filters)
        if not d.tenant_filter_visible(caller, request.tenant_id):
            return pb.ListSitesResponse(page={"next_token": ""})
        async with self._conn() as conn:
            rows = await store.list_sites(conn, tenant=caller.tenant_scope, region=request.region,
                                          tenant_id=request.tenant_id, status=filters["status"],
                                          query=request.query, bbox=bbox,
                                          after=str(after[0]) if after else None, limit=size)
        return pb.ListSitesResponse(
            sites=[_visible_site_out(caller, r) for r in rows[:size]],
            page={"next_token": _next_token(self.tokens, rows, size, fp, lambda r: [r["id"]])},
        )

    @_rpc
    async def ListTenants(self, request: pb.ListTenantsRequest, context: Any) -> pb.ListTenantsResponse:
        caller = self._reader()
        size, fp, after = self._page(request, "tenants", caller, {})
        async with self._conn() as conn:
            rows = await store.list_tenants(conn, tenant=caller.tenant_scope,
                                            after=str(after[0]) if after else None, limit=size)
        return pb.ListTenantsResponse(
            tenants=[tenant_proto(r) for r in rows[:size]],
            page={"next_token": _next_token(self.tokens, rows, size, fp, lambda r: [r["id"]])},
        )

    @_rpc
    async def ListTenancies(self, request: pb.ListTenanciesRequest, context: Any) -> pb.ListTenanciesResponse:
        caller = self._reader()
        size, fp, after = self._page(request, "tenancies", caller,
                                     {"site_id": request.site_id, "tenant_id": request.tenant_id})
        if after is not None and len(after) != 2:
            raise d.Invalid([("page.token", "is not a page token of this query; start again without one")])
        async with self._conn() as conn:
            rows = await store.list_tenancies(conn, tenant=caller.tenant_scope, site_id=request.site_id,
                                              tenant_id=request.tenant_id,
                                              after=[str(a) for a in after] if after else None, limit=size)
        return pb.ListTenanciesResponse(
            tenancies=[tenancy_proto(r) for r in rows[:size]],
            page={"next_token": _next_token(self.tokens, rows, size, fp, lambda r: [r["site_id"], r["tenant_id"]])},
        )

    @_rpc
    async def ListWindows(self, request: pb.ListWindowsRequest, context: Any) -> pb.ListWindowsResponse:
        caller = self._reader()
        start = _dt(request.range, "start_time") if request.HasField("range") else None
        end = _dt(request.range, "end_time") if request.HasField("range") else None
        d.check_range(start, end)
        category = _enum_text(*_CATEGORY, request.category) if request.category else ""
        size, fp, after = self._page(request, "windows", caller,
                                     {"site_id": request.site_id, "start": start, "end": end, "category": category})
        if after is not None and (len(after) != 2 or not isinstance(after[0], datetime)):
            raise d.Invalid([("page.token", "is not a page token of this query; start again without one")])
        async with self._conn() as conn:
            rows = await store.list_windows(conn, tenant=caller.tenant_scope, site_id=request.site_id, start=start,
                                            end=end, category=category, after=after, limit=size)
        return pb.ListWindowsResponse(
            windows=[_visible_window_out(caller, r) for r in rows[:size]],
            page={"next_token": _next_token(self.tokens, rows, size, fp, lambda r: [r["start_time"], r["id"]])},
        )

    # -- change feed

    async def WatchChanges(self, request: pb.WatchChangesRequest, context: Any
                           ) -> AsyncIterator[pb.WatchChangesResponse]:
        """Replay the outbox after `after_sequence`, then follow new rows (woken by the outbox's
        NOTIFY through `listen()`, and polling as a fallback). Tenant-scoped callers only get the
        changes whose envelope names their tenant, with other tenants' ids removed."""
        try:
            caller = self._reader()
        except Exception as exc:
            raise (_map(exc) or exc) from None
        after = request.after_sequence
        while True:
            tick = self._tick
            try:
                async with self._conn() as conn:
                    rows = await outbox.read_since(conn, schema=SCHEMA, after_id=after, limit=WATCH_BATCH)
            except Exception as exc:
                mapped = _map(exc)
                if mapped is None:
                    raise
                raise mapped from None
            for seq, env in rows:
                after = seq
                if not d.change_visible(caller.tenant_scope, env.tenant_ids):
                    continue
                change = pb.SitesChange()
                if not env.payload.Unpack(change):
                    continue
                entity = change.WhichOneof("entity")
                if entity == "site":
                    change.site.tenant_ids[:] = d.visible_tenant_ids(caller, change.site.tenant_ids)
                elif entity == "window":
                    change.window.tenant_ids[:] = d.visible_tenant_ids(caller, change.window.tenant_ids)
                yield pb.WatchChangesResponse(sequence=seq, time=env.time, change=change)
            if len(rows) < WATCH_BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tick.wait(), timeout=self.watch_poll_s)

    def notify(self) -> None:
        """Wake every WatchChanges stream (called on NOTIFY sites_outbox)."""
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def listen(self, database_url: str) -> None:
        """LISTEN on the outbox channel and wake watchers; reconnects until cancelled (mesh.listener)."""
        await PgListener(outbox.channel(SCHEMA), on_notify=self.notify, database_url=database_url,
                         application_name="towerco:sites-watch").run()
