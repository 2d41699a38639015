"""The SitesService RPC handlers: authorize, call domain/store in one transaction together with
the outbox event of every change, and map rows <-> protobuf. Nothing else lives here.

Errors: domain decisions raise services.sites.domain errors, which `_rpc` turns into the mesh's
rich gRPC errors (INVALID_ARGUMENT with field violations, NOT_FOUND with ResourceInfo, ...). A
database that cannot be reached answers UNAVAILABLE (with RetryInfo); the pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from towerco.sites.v1 import sites_pb2 as pb
from towerco.sites.v1 import sites_pb2_grpc

from mesh import auth, db, errors, outbox
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
    if isinstance(exc, asyncpg.DataError):  # a value PostgreSQL cannot take (a safety net)
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


def present_paths(msg: Message, prefix: str = "") -> list[str]:
    """Field-mask paths of every non-default field (sub-message fields as `a.b`; a present but
    empty sub-message as its own path; well-known types such as Timestamp are leaves)."""
    out: list[str] = []
    for fd, value in msg.ListFields():
        path = prefix + fd.name
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        repeated = fd.is_repeated
        if is_message and not repeated and not fd.message_type.full_name.startswith("google.protobuf."):
            out.extend(present_paths(value, path + ".") or [path])
        else:
            out.append(path)
    return out


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


def _mask_paths(request: Message, entity_msg: Message, rules: d.MaskRules) -> list[str]:
    """The request's update_mask, or (none / empty) every non-default field of the entity."""
    if request.HasField("update_mask") and request.update_mask.paths:
        return list(request.update_mask.paths)
    return d.infer_mask(rules, present_paths(entity_msg))


def _next_token(tokens: d.PageTokens, rows: list[dict[str, Any]], size: int, fp: str,
                key: Callable[[dict[str, Any]], list[Any]]) -> str:
    if len(rows) > size:
        return tokens.encode(key(rows[size - 1]), fp)
    return ""


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

    async def _emit(self, conn: asyncpg.Connection, entity: d.Entity, kind: d.ChangeKind, change: pb.SitesChange,
                    tenant_ids: list[str]) -> None:
        subject = d.event_subject(entity, kind)
        change.kind = _KIND[kind]
        await outbox.enqueue(conn, schema=SCHEMA, subject=subject, event_type=subject, source=SOURCE,
                             payload=change, tenant_ids=tenant_ids)

    def _site_out(self, caller: d.Caller, row: Mapping[str, Any]) -> pb.Site:
        return site_proto(row, d.visible_tenant_ids(caller, row.get("tenant_ids", [])))

    def _window_out(self, caller: d.Caller, row: Mapping[str, Any]) -> pb.CalendarWindow:
        return window_proto(row, d.visible_tenant_ids(caller, row["tenant_ids"]))

    # -- sites

    @_rpc
    async def CreateSite(self, request: pb.CreateSiteRequest, context: Any) -> pb.CreateSiteResponse:
        caller = self._caller()
        d.check_write(caller, "site")
        row = site_row(request.site)
        row["status"] = d.default_site_status(row["status"])
        d.check_site(row, creating=True)
        async with self._tx() as conn:
            try:
                created = await store.create_site(conn, row=row)
            except asyncpg.UniqueViolationError:
                raise errors.AlreadyExists(f"site {row['id']!r} already exists", resource_type=RESOURCE["site"],
                                           resource_name=row["id"]) from None
            await self._emit(conn, "site", "created", pb.SitesChange(site=site_proto(created)), [])
        return pb.CreateSiteResponse(site=self._site_out(caller, created))

    @_rpc
    async def GetSite(self, request: pb.GetSiteRequest, context: Any) -> pb.GetSiteResponse:
        caller = self._reader()
        async with self._conn() as conn:
            row = await store.get_site(conn, site_id=request.site_id, tenant=caller.tenant_scope)
        if row is None:
            raise _not_found("site", request.site_id)
        return pb.GetSiteResponse(site=self._site_out(caller, row))

    @_rpc
    async def UpdateSite(self, request: pb.UpdateSiteRequest, context: Any) -> pb.UpdateSiteResponse:
        caller = self._caller()
        site_id = request.site.id
        if not site_id:
            raise d.Invalid([("site.id", "is required")])
        await self._check_write(caller, "site", site_id,
                                lambda c: store.get_site(c, site_id=site_id, tenant=caller.tenant_scope))
        columns = d.resolve_mask(d.SITE_MASK, _mask_paths(request, request.site, d.SITE_MASK))
        incoming = site_row(request.site)
        async with self._tx() as conn:
            current = await store.get_site(conn, site_id=site_id, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found("site", site_id)
            merged = d.apply_mask(current, incoming, columns)
            d.check_site(merged)
            updated = await store.update_site(conn, site_id=site_id, values={c: merged[c] for c in columns})
            assert updated is not None  # locked above
            await self._emit(conn, "site", "updated", pb.SitesChange(site=site_proto(updated)),
                             d.event_tenants("site", site_tenants=updated["tenant_ids"]))
        return pb.UpdateSiteResponse(site=self._site_out(caller, updated))

    @_rpc
    async def DeleteSite(self, request: pb.DeleteSiteRequest, context: Any) -> pb.DeleteSiteResponse:
        caller = self._caller()
        site_id = request.site_id
        await self._check_write(caller, "site", site_id,
                                lambda c: store.get_site(c, site_id=site_id, tenant=caller.tenant_scope))
        async with self._tx() as conn:
            current = await store.get_site(conn, site_id=site_id, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found("site", site_id)
            await store.delete_site(conn, site_id=site_id)
            await self._emit(conn, "site", "deleted", pb.SitesChange(site=site_proto(current)),
                             d.event_tenants("site", site_tenants=current["tenant_ids"]))
        return pb.DeleteSiteResponse()

    @_rpc
    async def ListSites(self, request: pb.ListSitesRequest, context: Any) -> pb.ListSitesResponse:
        caller = self._reader()
        size = d.page_size(request.page.size)
        bbox = None
        if request.HasField("bbox"):
            sw, ne = request.bbox.south_west, request.bbox.north_east
            bbox = (sw.latitude, sw.longitude, ne.latitude, ne.longitude)
            d.check_bbox(*bbox)
        filters = {"region": request.region, "tenant_id": request.tenant_id,
                   "status": _enum_text(*_SITE_STATUS, request.status) if request.status else "",
                   "query": request.query, "bbox": list(bbox) if bbox else None}
        fp = d.query_fingerprint("sites", caller.tenant_scope, filters)
        after = self.tokens.decode(request.page.token, fp)
        if not d.tenant_filter_visible(caller, request.tenant_id):
            return pb.ListSitesResponse(page={"next_token": ""})
        async with self._conn() as conn:
            rows = await store.list_sites(conn, tenant=caller.tenant_scope, region=request.region,
                                          tenant_id=request.tenant_id, status=filters["status"],
                                          query=request.query, bbox=bbox,
                                          after=str(after[0]) if after else None, limit=size)
        return pb.ListSitesResponse(
            sites=[self._site_out(caller, r) for r in rows[:size]],
            page={"next_token": _next_token(self.tokens, rows, size, fp, lambda r: [r["id"]])},
        )

    # -- tenants

    @_rpc
    async def CreateTenant(self, request: pb.CreateTenantRequest, context: Any) -> pb.CreateTenantResponse:
        caller = self._caller()
        d.check_write(caller, "tenant")
        row = tenant_row(request.tenant)
        d.check_tenant(row, creating=True)
        async with self._tx() as conn:
            try:
                created = await store.create_tenant(conn, row=row)
            except asyncpg.UniqueViolationError:
                raise errors.AlreadyExists(f"tenant {row['id']!r} already exists",
                                           resource_type=RESOURCE["tenant"], resource_name=row["id"]) from None
            await self._emit(conn, "tenant", "created", pb.SitesChange(tenant=tenant_proto(created)),
                             d.event_tenants("tenant", tenant_id=created["id"]))
        return pb.CreateTenantResponse(tenant=tenant_proto(created))

    @_rpc
    async def GetTenant(self, request: pb.GetTenantRequest, context: Any) -> pb.GetTenantResponse:
        caller = self._reader()
        async with self._conn() as conn:
            row = await store.get_tenant(conn, tenant_id=request.tenant_id, tenant=caller.tenant_scope)
        if row is None:
            raise _not_found("tenant", request.tenant_id)
        return pb.GetTenantResponse(tenant=tenant_proto(row))

    @_rpc
    async def UpdateTenant(self, request: pb.UpdateTenantRequest, context: Any) -> pb.UpdateTenantResponse:
        caller = self._caller()
        tenant_id = request.tenant.id
        if not tenant_id:
            raise d.Invalid([("tenant.id", "is required")])
        await self._check_write(caller, "tenant", tenant_id,
                                lambda c: store.get_tenant(c, tenant_id=tenant_id, tenant=caller.tenant_scope))
        columns = d.resolve_mask(d.TENANT_MASK, _mask_paths(request, request.tenant, d.TENANT_MASK))
        incoming = tenant_row(request.tenant)
        async with self._tx() as conn:
            current = await store.get_tenant(conn, tenant_id=tenant_id, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found("tenant", tenant_id)
            merged = d.apply_mask(current, incoming, columns)
            d.check_tenant(merged)
            updated = await store.update_tenant(conn, tenant_id=tenant_id, values={c: merged[c] for c in columns})
            assert updated is not None
            await self._emit(conn, "tenant", "updated", pb.SitesChange(tenant=tenant_proto(updated)),
                             d.event_tenants("tenant", tenant_id=tenant_id))
        return pb.UpdateTenantResponse(tenant=tenant_proto(updated))

    @_rpc
    async def DeleteTenant(self, request: pb.DeleteTenantRequest, context: Any) -> pb.DeleteTenantResponse:
        caller = self._caller()
        tenant_id = request.tenant_id
        await self._check_write(caller, "tenant", tenant_id,
                                lambda c: store.get_tenant(c, tenant_id=tenant_id, tenant=caller.tenant_scope))
        async with self._tx() as conn:
            current = await store.get_tenant(conn, tenant_id=tenant_id, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found("tenant", tenant_id)
            try:
                await store.delete_tenant(conn, tenant_id=tenant_id)
            except (asyncpg.RestrictViolationError, asyncpg.ForeignKeyViolationError):
                raise errors.FailedPrecondition(
                    f"tenant {tenant_id!r} still has tenancies; end them first", reason="TENANT_HAS_TENANCIES"
                ) from None
            await self._emit(conn, "tenant", "deleted", pb.SitesChange(tenant=tenant_proto(current)),
                             d.event_tenants("tenant", tenant_id=tenant_id))
        return pb.DeleteTenantResponse()

    @_rpc
    async def ListTenants(self, request: pb.ListTenantsRequest, context: Any) -> pb.ListTenantsResponse:
        caller = self._reader()
        size = d.page_size(request.page.size)
        fp = d.query_fingerprint("tenants", caller.tenant_scope, {})
        after = self.tokens.decode(request.page.token, fp)
        async with self._conn() as conn:
            rows = await store.list_tenants(conn, tenant=caller.tenant_scope,
                                            after=str(after[0]) if after else None, limit=size)
        return pb.ListTenantsResponse(
            tenants=[tenant_proto(r) for r in rows[:size]],
            page={"next_token": _next_token(self.tokens, rows, size, fp, lambda r: [r["id"]])},
        )

    # -- tenancies

    @_rpc
    async def CreateTenancy(self, request: pb.CreateTenancyRequest, context: Any) -> pb.CreateTenancyResponse:
        caller = self._caller()
        d.check_write(caller, "tenancy")
        row = tenancy_row(request.tenancy)
        d.check_tenancy(row, creating=True)
        async with self._tx() as conn:
            if await store.get_site(conn, site_id=row["site_id"], tenant=caller.tenant_scope) is None:
                raise _not_found("site", row["site_id"])
            try:
                created = await store.create_tenancy(conn, row=row)
            except asyncpg.UniqueViolationError:
                raise errors.AlreadyExists(
                    f"tenant {row['tenant_id']!r} already has a tenancy on site {row['site_id']!r}",
                    resource_type=RESOURCE["tenancy"], resource_name=f"{row['site_id']}/{row['tenant_id']}",
                ) from None
            except asyncpg.ForeignKeyViolationError as exc:
                if "site" in (exc.constraint_name or ""):
                    raise _not_found("site", row["site_id"]) from None
                raise _not_found("tenant", row["tenant_id"]) from None
            await self._emit(conn, "tenancy", "created", pb.SitesChange(tenancy=tenancy_proto(created)),
                             d.event_tenants("tenancy", tenant_id=created["tenant_id"]))
        return pb.CreateTenancyResponse(tenancy=tenancy_proto(created))

    @_rpc
    async def GetTenancy(self, request: pb.GetTenancyRequest, context: Any) -> pb.GetTenancyResponse:
        caller = self._reader()
        async with self._conn() as conn:
            row = await store.get_tenancy(conn, tenancy_id=request.tenancy_id, tenant=caller.tenant_scope)
        if row is None:
            raise _not_found("tenancy", request.tenancy_id)
        return pb.GetTenancyResponse(tenancy=tenancy_proto(row))

    @_rpc
    async def UpdateTenancy(self, request: pb.UpdateTenancyRequest, context: Any) -> pb.UpdateTenancyResponse:
        caller = self._caller()
        tenancy_id = request.tenancy.id
        if not tenancy_id:
            raise d.Invalid([("tenancy.id", "is required")])
        await self._check_write(caller, "tenancy", tenancy_id,
                                lambda c: store.get_tenancy(c, tenancy_id=tenancy_id, tenant=caller.tenant_scope))
        columns = d.resolve_mask(d.TENANCY_MASK, _mask_paths(request, request.tenancy, d.TENANCY_MASK))
        incoming = tenancy_row(request.tenancy)
        async with self._tx() as conn:
            current = await store.get_tenancy(conn, tenancy_id=tenancy_id, tenant=caller.tenant_scope,
                                              for_update=True)
            if current is None:
                raise _not_found("tenancy", tenancy_id)
            merged = d.apply_mask(current, incoming, columns)
            d.check_tenancy(merged)
            updated = await store.update_tenancy(conn, tenancy_id=tenancy_id,
                                                 values={c: merged[c] for c in columns})
            assert updated is not None
            await self._emit(conn, "tenancy", "updated", pb.SitesChange(tenancy=tenancy_proto(updated)),
                             d.event_tenants("tenancy", tenant_id=updated["tenant_id"]))
        return pb.UpdateTenancyResponse(tenancy=tenancy_proto(updated))

    @_rpc
    async def DeleteTenancy(self, request: pb.DeleteTenancyRequest, context: Any) -> pb.DeleteTenancyResponse:
        caller = self._caller()
        tenancy_id = request.tenancy_id
        await self._check_write(caller, "tenancy", tenancy_id,
                                lambda c: store.get_tenancy(c, tenancy_id=tenancy_id, tenant=caller.tenant_scope))
        async with self._tx() as conn:
            current = await store.get_tenancy(conn, tenancy_id=tenancy_id, tenant=caller.tenant_scope,
                                              for_update=True)
            if current is None:
                raise _not_found("tenancy", tenancy_id)
            await store.delete_tenancy(conn, tenancy_id=tenancy_id)
            await self._emit(conn, "tenancy", "deleted", pb.SitesChange(tenancy=tenancy_proto(current)),
                             d.event_tenants("tenancy", tenant_id=current["tenant_id"]))
        return pb.DeleteTenancyResponse()

    @_rpc
    async def ListTenancies(self, request: pb.ListTenanciesRequest, context: Any) -> pb.ListTenanciesResponse:
        caller = self._reader()
        size = d.page_size(request.page.size)
        fp = d.query_fingerprint("tenancies", caller.tenant_scope,
                                 {"site_id": request.site_id, "tenant_id": request.tenant_id})
        after = self.tokens.decode(request.page.token, fp)
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

    # -- calendar windows

    async def _site_for_window(self, conn: asyncpg.Connection, caller: d.Caller, site_id: str) -> dict[str, Any]:
        site = await store.get_site(conn, site_id=site_id, tenant=caller.tenant_scope)
        if site is None:
            raise _not_found("site", site_id)
        return site

    @_rpc
    async def CreateWindow(self, request: pb.CreateWindowRequest, context: Any) -> pb.CreateWindowResponse:
        caller = self._caller()
        row = window_row(request.window)
        site_id = row["site_id"]
        await self._check_write(caller, "window", site_id,
                                lambda c: store.get_site(c, site_id=site_id, tenant=caller.tenant_scope))
        row["tenant_ids"] = d.check_window(row, creating=True)
        row["created_by"] = caller.subject
        async with self._tx() as conn:
            site = await self._site_for_window(conn, caller, site_id)
            d.check_window_tenants(row["tenant_ids"], site["tenant_ids"], site_id=site_id)
            created = await store.create_window(conn, row=row)
            await self._emit(conn, "window", "created", pb.SitesChange(window=window_proto(created)),
                             d.event_tenants("window", site_tenants=site["tenant_ids"],
                                             window_tenants=created["tenant_ids"]))
        return pb.CreateWindowResponse(window=self._window_out(caller, created))

    @_rpc
    async def GetWindow(self, request: pb.GetWindowRequest, context: Any) -> pb.GetWindowResponse:
        caller = self._reader()
        async with self._conn() as conn:
            row = await store.get_window(conn, window_id=request.window_id, tenant=caller.tenant_scope)
        if row is None:
            raise _not_found("window", request.window_id)
        return pb.GetWindowResponse(window=self._window_out(caller, row))

    @_rpc
    async def UpdateWindow(self, request: pb.UpdateWindowRequest, context: Any) -> pb.UpdateWindowResponse:
        caller = self._caller()
        window_id = request.window.id
        if not window_id:
            raise d.Invalid([("window.id", "is required")])
        await self._check_write(caller, "window", window_id,
                                lambda c: store.get_window(c, window_id=window_id, tenant=caller.tenant_scope))
        columns = d.resolve_mask(d.WINDOW_MASK, _mask_paths(request, request.window, d.WINDOW_MASK))
        incoming = window_row(request.window)
        async with self._tx() as conn:
            current = await store.get_window(conn, window_id=window_id, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found("window", window_id)
            merged = d.apply_mask(current, incoming, columns)
            merged["tenant_ids"] = d.check_window(merged)
            site = await self._site_for_window(conn, caller, current["site_id"])
            d.check_window_tenants(merged["tenant_ids"], site["tenant_ids"], site_id=current["site_id"])
            updated = await store.update_window(conn, window_id=window_id, values={c: merged[c] for c in columns})
            assert updated is not None
            await self._emit(conn, "window", "updated", pb.SitesChange(window=window_proto(updated)),
                             d.event_tenants("window", site_tenants=site["tenant_ids"],
                                             window_tenants=updated["tenant_ids"]))
        return pb.UpdateWindowResponse(window=self._window_out(caller, updated))

    @_rpc
    async def DeleteWindow(self, request: pb.DeleteWindowRequest, context: Any) -> pb.DeleteWindowResponse:
        caller = self._caller()
        window_id = request.window_id
        await self._check_write(caller, "window", window_id,
                                lambda c: store.get_window(c, window_id=window_id, tenant=caller.tenant_scope))
        async with self._tx() as conn:
            current = await store.get_window(conn, window_id=window_id, tenant=caller.tenant_scope, for_update=True)
            if current is None:
                raise _not_found("window", window_id)
            site_tenants = await store.site_tenants(conn, site_id=current["site_id"])
            await store.delete_window(conn, window_id=window_id)
            await self._emit(conn, "window", "deleted", pb.SitesChange(window=window_proto(current)),
                             d.event_tenants("window", site_tenants=site_tenants,
                                             window_tenants=current["tenant_ids"]))
        return pb.DeleteWindowResponse()

    @_rpc
    async def ListWindows(self, request: pb.ListWindowsRequest, context: Any) -> pb.ListWindowsResponse:
        caller = self._reader()
        size = d.page_size(request.page.size)
        start = _dt(request.range, "start_time") if request.HasField("range") else None
        end = _dt(request.range, "end_time") if request.HasField("range") else None
        d.check_range(start, end)
        category = _enum_text(*_CATEGORY, request.category) if request.category else ""
        fp = d.query_fingerprint("windows", caller.tenant_scope,
                                 {"site_id": request.site_id, "start": start, "end": end, "category": category})
        after = self.tokens.decode(request.page.token, fp)
        if after is not None and (len(after) != 2 or not isinstance(after[0], datetime)):
            raise d.Invalid([("page.token", "is not a page token of this query; start again without one")])
        async with self._conn() as conn:
            rows = await store.list_windows(conn, tenant=caller.tenant_scope, site_id=request.site_id, start=start,
                                            end=end, category=category, after=after, limit=size)
        return pb.ListWindowsResponse(
            windows=[self._window_out(caller, r) for r in rows[:size]],
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
        """LISTEN on the outbox channel and wake watchers; reconnects until cancelled."""
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await db.connect(database_url, application_name="towerco:sites-watch")
                await conn.add_listener(outbox.channel(SCHEMA), lambda *_: self.notify())
                lost = asyncio.Event()
                conn.add_termination_listener(lambda *_, ev=lost: ev.set())
                delay = 0.5
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=5)
                    if not lost.is_set():
                        await conn.execute("SELECT 1")  # notices a dead server
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database is away; watchers poll meanwhile
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
