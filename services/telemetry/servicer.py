"""TelemetryService handlers: thin. Read the protobuf, ask domain/store/JetStream, build replies.

Roles: Ingest and IngestStream need "service" (remote monitoring gateways, the simulator; admin
implies it). Reads need "viewer" or "tenant_viewer"; a tenant-bound caller sees only the sites its
tenant is on, and of the per-tenancy series only its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError
from prometheus_client import Counter
from towerco.events.v1 import events_pb2
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2 as pb
from towerco.telemetry.v1 import telemetry_pb2_grpc

from mesh import auth, events, subjects
from mesh.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.telemetry import domain, store
from services.telemetry.sites import SiteDirectory, SiteDirectoryUnavailable

log = logging.getLogger("towerco.telemetry")

INGESTED = Counter("towerco_telemetry_samples", "Samples offered to the ingest API, by outcome.", ["outcome"])
REJECTED = Counter("towerco_telemetry_rejections", "Samples refused by the ingest API, by reason.", ["reason"])

MAX_STREAM_REJECTIONS = 1000
MAX_TAILS = 200
STREAM_WINDOW = 8  # batches of one IngestStream being published at once
_AGGREGATIONS = {
    pb.AGGREGATION_AVG: "avg",
    pb.AGGREGATION_MIN: "min",
    pb.AGGREGATION_MAX: "max",
    pb.AGGREGATION_LAST: "last",
    pb.AGGREGATION_COUNT: "count",
}
_TENANT_METRICS = [m.name for m in domain.CATALOGUE.values() if m.per_tenant]
_SITE_METRICS = [m.name for m in domain.CATALOGUE.values() if not m.per_tenant]


def _ts(t: Any) -> float:
    return t.seconds + t.nanos * 1e-9


def _dt(t: Any) -> datetime:
    return datetime.fromtimestamp(t.seconds, UTC) + timedelta(microseconds=t.nanos // 1000)


class Outcome:
    __slots__ = ("accepted", "rejected", "rejections", "duplicate")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.rejections: list[pb.Rejection] = []
        self.duplicate = False


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, *, pool: Any, nc: Any, js: Any, sites: SiteDirectory, partitions: int,
                 retention_days: int = domain.DEFAULT_RETENTION_DAYS) -> None:
        self.pool = pool
        self.nc = nc
        self.js = js
        self.sites = sites
        self.partitions = partitions
        self.retention_s = retention_days * 86400.0
        self._tails = 0

    # ------------------------------------------------------------------ ingest

    async def _ingest(self, batch_id: str, samples: Any) -> Outcome:
        now = time.time()
        screened = domain.screen_samples(samples, sites=self.sites.partitions, now=now,
                                         retention_s=self.retention_s)
        unknown = {samples[r.index].site_id for r in screened.refusals if r.reason == domain.UNKNOWN_SITE}
        if unknown:
            # Not in the cache: ask the register (a site created a moment ago), then judge again.
            try:
                await self.sites.resolve(unknown)
            except SiteDirectoryUnavailable as exc:
                raise Unavailable("the site register cannot be reached; retry with the same batch_id",
                                  retry_after_s=1.0) from exc
            if any(sid in self.sites.partitions for sid in unknown):
                screened = domain.screen_samples(samples, sites=self.sites.partitions, now=now,
                                                 retention_s=self.retention_s)
        out = Outcome()
        out.accepted = screened.accepted
        out.rejected = len(screened.refusals)
        out.rejections = [pb.Rejection(index=r.index, field=r.field, reason=r.reason, message=r.message)
                          for r in screened.refusals]
        for r in screened.refusals:
            REJECTED.labels(r.reason).inc()
        INGESTED.labels("rejected").inc(out.rejected)
        if not screened.by_partition:
            return out
        accepted_time = pb.TelemetryBatch().accepted_time
        accepted_time.FromNanoseconds(int(now * 1e9))
        pubs = []
        headers = events.headers_out()  # correlation id and trace context ride along
        for part, indexes in screened.by_partition.items():
            for n, chunk in enumerate(domain.chunks(indexes)):
                msg = pb.TelemetryBatch(batch_id=batch_id, partition=part, accepted_time=accepted_time)
                msg.samples.extend([samples[i] for i in chunk])
                pubs.append(events.publish(self.js, subjects.telemetry_subject(part), msg.SerializeToString(),
                                           msg_id=domain.message_id(batch_id, part, n), headers=headers))
        try:
            acks = await asyncio.gather(*pubs)
        except Exception as exc:  # noqa: BLE001 - NATS down, no stream, timeout: the client retries
            raise Unavailable("the telemetry stream did not acknowledge the batch; retry with the same batch_id",
                              retry_after_s=1.0) from exc
        out.duplicate = all(a.duplicate for a in acks)
        INGESTED.labels("accepted").inc(out.accepted)
        return out

    async def Ingest(self, request: pb.IngestRequest, context: Any) -> pb.IngestResponse:
        auth.require_role("service")
        out = await self._ingest(request.batch_id, request.samples)
        return pb.IngestResponse(accepted=out.accepted, rejected=out.rejected, rejections=out.rejections,
                                 duplicate=out.duplicate)

    async def IngestStream(self, request_iterator: AsyncIterator[pb.IngestStreamRequest],
                           context: Any) -> pb.IngestStreamResponse:
        auth.require_role("service")
        reply = pb.IngestStreamResponse()
        window: set[asyncio.Task] = set()

        def collect(task: asyncio.Task) -> None:
            out = task.result()
            reply.accepted += out.accepted
            reply.rejected += out.rejected
            room = MAX_STREAM_REJECTIONS - len(reply.rejections)
            if room > 0:
                reply.rejections.extend(out.rejections[:room])

        try:
            async for request in request_iterator:
                reply.batches += 1
                # Publish while reading the next batch; the reply waits for every ack.
                window.add(asyncio.ensure_future(self._ingest(request.batch_id, request.samples)))
                if len(window) >= STREAM_WINDOW:
                    done, window = await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        collect(task)
            if window:
                done, window = await asyncio.wait(window)
                for task in done:
                    collect(task)
        finally:
            for task in window:
                task.cancel()
        return reply

    # ------------------------------------------------------------------ reads

    def _reader(self) -> str | None:
        """The caller's tenant for scoping (None = staff sees everything)."""
        return auth.tenant_scope(auth.require_role("viewer", "tenant_viewer"))

    async def _visible_site(self, site_id: str, tenant: str | None) -> None:
        if site_id not in self.sites.partitions:
            with contextlib.suppress(SiteDirectoryUnavailable):
                await self.sites.resolve([site_id])
        if not self.sites.visible_to(site_id, tenant):
            raise NotFound(f"site {site_id!r} not found", resource_type="towerco.sites.v1.Site",
                           resource_name=f"sites/{site_id}")

    async def QuerySamples(self, request: pb.QuerySamplesRequest, context: Any) -> pb.QuerySamplesResponse:
        tenant = self._reader()
        bad: list[FieldViolation] = []
        for i, metric in enumerate(request.metrics):
            if metric not in domain.CATALOGUE:
                bad.append(FieldViolation(f"metrics[{i}]", f"unknown metric {metric!r}"))
        r = request.range
        start, end = _ts(r.start_time), _ts(r.end_time)
        if not r.HasField("start_time"):
            bad.append(FieldViolation("range.start_time", "required"))
        if not r.HasField("end_time"):
            bad.append(FieldViolation("range.end_time", "required"))
        elif end <= start:
            bad.append(FieldViolation("range.end_time", "must be after range.start_time"))
        limit = request.limit or 10_000
        step_s = request.step.seconds + request.step.nanos * 1e-9
        aggregation = _AGGREGATIONS.get(request.aggregation)
        if aggregation and step_s <= 0:
            bad.append(FieldViolation("step", "a positive step is required with an aggregation"))
        elif not aggregation and request.HasField("step"):
            bad.append(FieldViolation("aggregation", "an aggregation is required with a step"))
        elif aggregation and end > start and not domain.step_ok(step_s, end - start, limit):
            bad.append(FieldViolation("step", f"too small for the range: more than {limit} points per series"))
        if bad:
            raise InvalidArgument("invalid query", bad)
        await self._visible_site(request.site_id, tenant)
        metrics = list(request.metrics) or None
        async with self.pool.acquire() as conn:
            if aggregation:
                rows = await store.query_aggregated(
                    conn, site_id=request.site_id, metrics=metrics, start=_dt(r.start_time), end=_dt(r.end_time),
                    tenant=tenant, step=timedelta(seconds=step_s), aggregation=aggregation)
            else:
                rows = await store.query_raw(
                    conn, site_id=request.site_id, metrics=metrics, start=_dt(r.start_time), end=_dt(r.end_time),
                    tenant=tenant, limit=limit)
        reply = pb.QuerySamplesResponse()
        series = None
        key = None
        for metric, tenant_id, t, value in rows:
            if (metric, tenant_id) != key:
                key = (metric, tenant_id)
                series = reply.series.add(metric=metric, tenant_id=tenant_id)
            point = series.points.add(value=value)  # type: ignore[union-attr]
            point.time.FromDatetime(t)
        return reply

    async def LatestSnapshot(self, request: pb.LatestSnapshotRequest, context: Any) -> pb.LatestSnapshotResponse:
        tenant = self._reader()
        await self._visible_site(request.site_id, tenant)
        async with self.pool.acquire() as conn:
            rows = await store.latest(conn, site_id=request.site_id, site_metrics=_SITE_METRICS,
                                      tenant_metrics=_TENANT_METRICS, tenant=tenant)
        reply = pb.LatestSnapshotResponse()
        for metric, tenant_id, t, value in rows:
            s = reply.samples.add(site_id=request.site_id, metric=metric, tenant_id=tenant_id, value=value)
            s.time.FromDatetime(t)
        return reply

    async def TailSamples(self, request: pb.TailSamplesRequest, context: Any) -> AsyncIterator[pb.TailSamplesResponse]:
        tenant = self._reader()
        bad = [FieldViolation(f"metrics[{i}]", f"unknown metric {m!r}")
               for i, m in enumerate(request.metrics) if m not in domain.CATALOGUE]
        if bad:
            raise InvalidArgument("invalid tail request", bad)
        await self._visible_site(request.site_id, tenant)
        if self._tails >= MAX_TAILS:
            raise ResourceExhausted("too many live tails on this replica", retry_after_s=5.0)
        site_id = request.site_id
        wanted = set(request.metrics)
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

        async def on_msg(msg: Any) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a slow reader drops, never blocks NATS
                queue.put_nowait(msg.data)

        self._tails += 1
        sub = await self.nc.subscribe(subjects.telemetry_subject(self.sites.partition(site_id)), cb=on_msg)
        try:
            while True:
                data = await queue.get()
                try:
                    batch = pb.TelemetryBatch.FromString(data)
                except DecodeError:
                    continue
                for s in batch.samples:
                    if s.site_id != site_id or (wanted and s.metric not in wanted):
                        continue
                    if tenant is not None and s.tenant_id and s.tenant_id != tenant:
                        continue
                    yield pb.TailSamplesResponse(sample=s)
        finally:
            self._tails -= 1
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # ------------------------------------------------------------------ register events

    def apply_event(self, data: bytes) -> None:
        """Apply one towerco.sites.* event (an Envelope carrying a SitesChange) to the cache."""
        try:
            env = events_pb2.Envelope.FromString(data)
            change = events.unpack(env, sites_pb2.SitesChange)
        except (DecodeError, ValueError):
            return
        kind = change.kind
        which = change.WhichOneof("entity")
        if which == "site":
            if kind == sites_pb2.CHANGE_KIND_DELETED:
                self.sites.remove(change.site.id)
            else:
                tenants = change.site.tenant_ids or self.sites.tenants.get(change.site.id, ())
                self.sites.put(change.site.id, tenants)
        elif which == "tenancy":
            t = change.tenancy
            if kind == sites_pb2.CHANGE_KIND_DELETED:
                self.sites.remove_tenant(t.site_id, t.tenant_id)
            else:
                self.sites.add_tenant(t.site_id, t.tenant_id)


def site_info(site: sites_pb2.Site) -> tuple[str, frozenset[str]]:
    return site.id, frozenset(site.tenant_ids)

