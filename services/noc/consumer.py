"""The NOC's input from the AIOps engine: a durable pull consumer on the EVENTS stream filtered on
towerco.aiops.anomaly.> (TOWERCO_NOC_DURABLE, "noc-anomalies"), inside the NOC process.

Each fetched batch is one correlation transaction (correlator.Correlator.process): detected and
cleared anomalies become signals (forecasts are not alarms and are skipped). Idempotent on
redelivery: each signal's (source "aiops", anomaly id[/cleared]) is recorded in noc.alarm_source
in the batch's transaction, so a batch redelivered after a crash changes nothing the second time.
The batch is acknowledged only after its transaction committed; an undecodable message is
dead-lettered (events.Poison); an anomaly of a site the register does not know is logged and
dropped (nothing could be correlated for it). While the Sites service cannot answer for a site
the facts cache does not hold, the batch waits in hand (retried with backoff; the consumer keeps
it from redelivery with in-progress acks) rather than being failed towards the DLQ.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from towerco.aiops.v1 import aiops_pb2
from towerco.events.v1 import events_pb2

from mesh import events, subjects
from services.noc import domain
from services.noc.correlator import Correlator

log = logging.getLogger("towerco.noc.consumer")

SITES_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def sites_down(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in SITES_DOWN


def signal_of(env: events_pb2.Envelope) -> domain.Signal | None:
    """The signal an anomaly event carries, or None (a forecast, an unknown type)."""
    if env.type == subjects.AIOPS_ANOMALY_DETECTED:
        msg: aiops_pb2.AnomalyDetected | aiops_pb2.AnomalyCleared = aiops_pb2.AnomalyDetected()
        cleared = False
    elif env.type == subjects.AIOPS_ANOMALY_CLEARED:
        msg = aiops_pb2.AnomalyCleared()
        cleared = True
    else:
        return None
    if not env.payload.Unpack(msg):
        return None
    a = msg.anomaly
    if cleared:
        t = a.end_time if a.HasField("end_time") else a.update_time
    else:
        t = a.detect_time if a.HasField("detect_time") else a.start_time
    return domain.signal_from_anomaly(
        anomaly_id=a.id, site_id=a.site_id, detector=a.detector, metrics=list(a.metrics), tenant_id=a.tenant_id,
        severity=int(a.severity), time=t.ToNanoseconds() / 1e9, summary=a.explanation.summary, cleared=cleared)


class AnomalyConsumer:
    def __init__(self, js: JetStreamContext, correlator: Correlator, *, durable: str = "noc-anomalies",
                 batch: int = 500, ack_wait_s: float = 60.0, lanes: int = 2) -> None:
        self.correlator = correlator
        self.lanes = lanes
        self.consumer = events.PullConsumer(
            js, stream=events.EVENTS_STREAM, durable=durable, filter_subject=subjects.AIOPS_ANOMALY_EVENTS,
            handler=self.handle, batch=batch, ack_wait=ack_wait_s, fetch_timeout=1.0)
        self.handled = 0

    async def handle(self, msgs: list[Msg]) -> None:
        signals = []
        for m in msgs:
            try:
                env = events_pb2.Envelope.FromString(m.data)
            except Exception as exc:  # noqa: BLE001 - undecodable: nothing to retry
                raise events.Poison(f"not an Envelope: {exc}", msgs=[m]) from exc
            sig = signal_of(env)
            if sig is not None:
                signals.append(sig)
        delay = 1.0
        while True:
            try:
                results = await self.correlator.process(signals, lanes=self.lanes)
                break
            except Exception as exc:
                if not sites_down(exc):
                    raise
                log.warning("noc: the Sites service cannot answer (%s); batch of %d kept, retrying in %.0fs",
                            exc.code().name, len(signals), delay)  # type: ignore[attr-defined]
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        for r in results:
            if r.unknown_site:
                log.warning("noc: anomaly %s of unknown site %s dropped", r.signal.source_alarm_id, r.signal.site_id)
        self.handled += len(msgs)

    async def run(self) -> None:
        await self.consumer.run()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.consumer.stop()
