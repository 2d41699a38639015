"""AiopsService handlers: check the caller and the request, read the aiops schema (store), decide
(domain), map to protobuf. Tenant scoping: `mesh.auth.tenant_scope`; a row a tenant may not see
answers NOT_FOUND, lists leave it out."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from towerco.aiops.v1 import aiops_pb2, aiops_pb2_grpc

from mesh import outbox, paging, subjects
from mesh.auth import Identity, current_identity, require_role, tenant_scope
from mesh.errors import NotFound
from mesh.listener import PgListener
from services.aiops import domain, store

SCHEMA = "aiops"
READ_ROLES = ("viewer", "tenant_viewer")
FEEDBACK_ROLES = ("noc_operator",)
WATCH_BATCH = 500
DETECTED = subjects.AIOPS_ANOMALY_DETECTED
CLEARED = subjects.AIOPS_ANOMALY_CLEARED
# The engine's detectors (workers/aiops_engine/domain.py; the service asks nothing of the worker's
# code, so the list is repeated here and checked against it by a unit test).
DETECTORS: tuple[tuple[str, int, str], ...] = (
    ("rule.mains_lost", 1, "grid mains absent on a grid-connected site"),
    ("rule.dg_fail_to_start", 1, "mains lost and the DG not running after its start delay"),
    ("rule.dg_running_with_mains", 1, "DG running while mains is present"),
    ("rule.dc_bus_low", 1, "DC bus below the tenancy band"),
    ("rule.battery_near_lvd", 1, "on battery with the state of charge near the low-voltage disconnect"),
    ("rule.battery_lvd", 1, "the low-voltage disconnect tripped: unpowered, DC bus dead, battery at its LVD point"),
    ("rule.high_cabinet_temp", 1, "cabinet temperature above its limit"),
    ("rule.door_open", 1, "door open outside a planned maintenance window"),
    ("rule.rectifier_fault", 1, "rectifier module alarm"),
    ("rule.low_fuel", 1, "fuel below its share of the tank"),
    ("rule.tenant_link_down", 1, "a tenant's link down while the site is powered"),
    ("stat.baseline", 2, "a metric far from its seasonal (hour-of-day) robust baseline"),
    ("stat.fuel_theft", 2, "fuel falling with the DG off, or faster than the load's burn"),
    ("stat.telemetry_gap", 2, "no telemetry from the site: site unreachable"),
    ("model.ecod", 3, "multivariate outlier of the site class's pyod ECOD model over a site-minute's features"),
)


def _reader() -> Identity:
    return require_role(*READ_ROLES)


def _visible_tenants(identity: Identity, tenant_ids: list[str]) -> list[str]:
    return list(tenant_ids) if identity.is_staff else [t for t in tenant_ids if t == identity.tenant]


def anomaly_pb(row: asyncpg.Record, identity: Identity) -> aiops_pb2.Anomaly:
    a = aiops_pb2.Anomaly(
        id=str(row["id"]), site_id=row["site_id"], region=row["region"],
        tenant_ids=_visible_tenants(identity, row["tenant_ids"]), metrics=list(row["metrics"]),
        detector=row["detector"], detector_version=row["detector_version"], layer=row["layer"], score=row["score"],
        severity=row["severity"], state=row["state"], explanation=aiops_pb2.Explanation.FromString(row["explanation"]),
        feedback=row["feedback"], feedback_note=row["feedback_note"], tenant_id=row["tenant_id"])
    a.start_time.FromDatetime(row["start_time"])
    a.detect_time.FromDatetime(row["detect_time"])
    a.update_time.FromDatetime(row["update_time"])
    if row["end_time"] is not None:
        a.end_time.FromDatetime(row["end_time"])
    return a


def prediction_pb(row: asyncpg.Record, identity: Identity) -> aiops_pb2.Prediction:
    p = aiops_pb2.Prediction(
        id=str(row["id"]), site_id=row["site_id"], region=row["region"],
        tenant_ids=_visible_tenants(identity, row["tenant_ids"]), kind=row["kind"], confidence=row["confidence"],
        outcome=row["outcome"], detector=row["detector"],
        inputs=aiops_pb2.Explanation.FromString(row["inputs"]).features)
    p.predict_time.FromDatetime(row["predict_time"])
    p.expected_time.FromDatetime(row["expected_time"])
    if row["outcome_time"] is not None:
        p.outcome_time.FromDatetime(row["outcome_time"])
    if row["actual_time"] is not None:
        p.actual_time.FromDatetime(row["actual_time"])
    return p




def _check_id(value: str, field: str) -> str:
    """A malformed id can name nothing: NOT_FOUND, like an id the caller may not see."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{field} {value!r} not found", field, value) from None


class AiopsServicer(aiops_pb2_grpc.AiopsServiceServicer):
    def __init__(self, pool: asyncpg.Pool, *, watch_poll_s: float = 1.0) -> None:
        self.pool = pool
        self.watch_poll_s = watch_poll_s
        self._tick = asyncio.Event()

    async def ListAnomalies(self, request: aiops_pb2.ListAnomaliesRequest, context: Any
                            ) -> aiops_pb2.ListAnomaliesResponse:
        identity = _reader()
        scope = tenant_scope(identity, request.tenant_id)
        lo, hi = paging.time_bounds(request.range, request.HasField("range"))
        after = paging.page_after(request.page.token)
        size = domain.page_size(request.page.size)
        async with self.pool.acquire() as conn:
            rows = await store.list_anomalies(
                conn, tenant=scope, site_id=request.site_id, region=request.region, detector=request.detector,
                min_severity=request.min_severity, state=request.state, start_from=lo, start_to=hi, after=after,
                limit=size + 1)
        resp = aiops_pb2.ListAnomaliesResponse(anomalies=[anomaly_pb(r, identity) for r in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            resp.page.next_token = paging.encode_keyset(last["start_time"], str(last["id"]))
        return resp

    async def GetAnomaly(self, request: aiops_pb2.GetAnomalyRequest, context: Any) -> aiops_pb2.GetAnomalyResponse:
        identity = _reader()
        aid = _check_id(request.anomaly_id, "anomaly")
        async with self.pool.acquire() as conn:
            row = await store.get_anomaly(conn, tenant=tenant_scope(identity), anomaly_id=aid)
        if row is None:
            raise NotFound(f"anomaly {request.anomaly_id} not found", "anomaly", request.anomaly_id)
        return aiops_pb2.GetAnomalyResponse(anomaly=anomaly_pb(row, identity))

    async def ListPredictions(self, request: aiops_pb2.ListPredictionsRequest, context: Any
                              ) -> aiops_pb2.ListPredictionsResponse:
        identity = _reader()
        scope = tenant_scope(identity, request.tenant_id)
        lo, hi = paging.time_bounds(request.range, request.HasField("range"))
        after = paging.page_after(request.page.token)
        size = domain.page_size(request.page.size)
        async with self.pool.acquire() as conn:
            rows = await store.list_predictions(
                conn, tenant=scope, site_id=request.site_id, region=request.region, kind=request.kind,
                outcome=request.outcome, start_from=lo, start_to=hi, after=after, limit=size + 1)
        resp = aiops_pb2.ListPredictionsResponse(predictions=[prediction_pb(r, identity) for r in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            resp.page.next_token = paging.encode_keyset(last["predict_time"], str(last["id"]))
        return resp

    async def GetPrediction(self, request: aiops_pb2.GetPredictionRequest, context: Any
                            ) -> aiops_pb2.GetPredictionResponse:
        identity = _reader()
        pid = _check_id(request.prediction_id, "prediction")
        async with self.pool.acquire() as conn:
            row = await store.get_prediction(conn, tenant=tenant_scope(identity), prediction_id=pid)
        if row is None:
            raise NotFound(f"prediction {request.prediction_id} not found", "prediction", request.prediction_id)
        return aiops_pb2.GetPredictionResponse(prediction=prediction_pb(row, identity))

    async def GetDetectorStatus(self, request: aiops_pb2.GetDetectorStatusRequest, context: Any
                                ) -> aiops_pb2.GetDetectorStatusResponse:
        scope = tenant_scope(_reader())  # a tenant's counts are of its own sites only
        async with self.pool.acquire() as conn:
            counts = {r["detector"]: r for r in await store.detector_counts(conn, tenant=scope)}
            models = await store.models(conn)
            summary = await store.engine_summary(conn, tenant=scope)
        resp = aiops_pb2.GetDetectorStatusResponse(sites_tracked=summary["sites"])
        for name, layer, description in DETECTORS:
            c = counts.get(name)
            resp.detectors.add(name=name, version=c["version"] if c else "1", layer=layer, description=description,
                               open_anomalies=c["open"] if c else 0, total_anomalies=c["total"] if c else 0)
        for m in models:
            info = resp.models.add(site_class=m["site_class"], algorithm=m["algorithm"], version=m["version"],
                                   samples_seen=m["samples"], features=list(m["features"]))
            info.trained_at.FromDatetime(m["trained_at"])
        if summary["latest"] is not None:
            resp.latest_sample_time.FromDatetime(summary["latest"])
        return resp

    async def RecordFeedback(self, request: aiops_pb2.RecordFeedbackRequest, context: Any
                             ) -> aiops_pb2.RecordFeedbackResponse:
        identity = current_identity()
        aid = _check_id(request.anomaly_id, "anomaly")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_anomaly(conn, tenant=tenant_scope(identity), anomaly_id=aid)
            if row is None:  # checked before the role, so a refusal never confirms it exists
                raise NotFound(f"anomaly {request.anomaly_id} not found", "anomaly", request.anomaly_id)
            require_role(*FEEDBACK_ROLES)
            row = await store.record_feedback(conn, anomaly_id=aid, kind=request.kind, note=request.note,
                                              subject=identity.subject)
            key = domain.adjustment_key(row["detector"], row["metrics"], row["tenant_id"])
            factor, suppressed = await store.get_adjustment(conn, site_id=row["site_id"], key=key)
            factor, suppressed = domain.adjust(request.kind, row["layer"], factor, suppressed)
            await store.set_adjustment(conn, site_id=row["site_id"], key=key, factor=factor, suppressed=suppressed)
        return aiops_pb2.RecordFeedbackResponse(anomaly=anomaly_pb(row, identity))

    async def WatchAnomalies(self, request: aiops_pb2.WatchAnomaliesRequest, context: Any
                             ) -> AsyncIterator[aiops_pb2.WatchAnomaliesResponse]:
        """Replay the aiops outbox after `after_sequence`, then follow new rows (woken by its
        NOTIFY through `listen()`, polling as a fallback). A tenant gets only the anomalies of
        sites it leases."""
        identity = _reader()
        scope = tenant_scope(identity)
        after = request.after_sequence
        while True:
            tick = self._tick
            async with self.pool.acquire() as conn:
                rows = await store.outbox_since(conn, after_id=after, limit=WATCH_BATCH)
            for seq, env in rows:
                after = seq
                if env.type not in (DETECTED, CLEARED) or not domain.visible(scope, env.tenant_ids):
                    continue
                payload = aiops_pb2.AnomalyDetected() if env.type == DETECTED else aiops_pb2.AnomalyCleared()
                if not env.payload.Unpack(payload):
                    continue
                a = payload.anomaly
                if not domain.visible(scope, a.tenant_ids, a.tenant_id):  # another tenant's own anomaly
                    continue
                if (request.site_id and a.site_id != request.site_id) or a.severity < request.min_severity:
                    continue
                a.tenant_ids[:] = _visible_tenants(identity, list(a.tenant_ids))
                change = aiops_pb2.ANOMALY_CHANGE_DETECTED if env.type == DETECTED else aiops_pb2.ANOMALY_CHANGE_CLEARED
                yield aiops_pb2.WatchAnomaliesResponse(sequence=seq, change=change, anomaly=a)
            if len(rows) < WATCH_BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tick.wait(), timeout=self.watch_poll_s)

    def notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def listen(self, database_url: str) -> None:
        """LISTEN on the aiops outbox channel and wake watchers (mesh.listener: reconnects, and
        wakes them on each reconnect to catch up on what was missed) until cancelled."""
        await PgListener(outbox.channel(SCHEMA), on_notify=self.notify, database_url=database_url,
                         application_name="towerco:aiops-watch").run()
