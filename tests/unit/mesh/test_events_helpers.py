"""Pure parts of mesh.events: partitioning, envelopes, stream settings, header propagation."""

from __future__ import annotations

import uuid
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js import api

from mesh import events, subjects
from sdk import context as sdk_context


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=256))
def test_partition_is_stable_and_in_range(site_id, partitions):
    p = subjects.partition_of(site_id, partitions)
    assert 0 <= p < partitions
    assert p == zlib.crc32(site_id.encode("utf-8")) % partitions
    assert subjects.site_telemetry_subject(site_id, partitions) == f"telemetry.samples.{p}"


def test_partition_known_values_and_bad_count():
    # Fixed expectations: changing the hash would re-route every site to another replica.
    assert subjects.partition_of("site-0001", 16) == 2
    assert subjects.partition_of("IN-DL-0042", 16) == 0
    assert subjects.partition_of("टावर-7", 16) == 1  # UTF-8 bytes, not code points
    with pytest.raises(ValueError):
        subjects.partition_of("x", 0)


def test_envelope_round_trip():
    payload = wrappers_pb2.StringValue(value="hello")
    before = datetime.now(UTC)
    env = events.make_envelope(event_type="towerco.test.said", source="tests", subject="towerco.test.said",
                               payload=payload, tenant_ids=["t1", "t2"], sequence=42)
    uuid.UUID(env.id)  # a real UUID
    assert env.type == "towerco.test.said" and env.source == "tests" and env.subject == "towerco.test.said"
    assert list(env.tenant_ids) == ["t1", "t2"] and env.sequence == 42
    when = env.time.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= when <= datetime.now(UTC) + timedelta(seconds=1)
    assert events.payload_type(env) == "google.protobuf.StringValue"

    again = events.Envelope.FromString(env.SerializeToString())
    assert events.unpack(again, wrappers_pb2.StringValue).value == "hello"
    with pytest.raises(ValueError, match="google.protobuf.Int64Value"):
        events.unpack(again, wrappers_pb2.Int64Value)
    other = events.make_envelope(event_type="x", source="y", subject="towerco.x", payload=payload)
    assert other.id != env.id


def test_stream_configs(monkeypatch):
    monkeypatch.delenv("TOWERCO_TELEMETRY_STREAM_MAX_AGE_S", raising=False)
    cfgs = {c.name: c for c in events.stream_configs()}
    assert cfgs["TELEMETRY"].subjects == ["telemetry.samples.*"]
    assert cfgs["EVENTS"].subjects == ["towerco.>"]
    assert cfgs["DLQ"].subjects == ["dlq.>"]
    assert all(c.storage == api.StorageType.FILE for c in cfgs.values())
    assert all(c.duplicate_window == 120 for c in cfgs.values())
    assert cfgs["TELEMETRY"].max_age == 7 * 86400
    assert cfgs["EVENTS"].max_age == cfgs["DLQ"].max_age == 30 * 86400

    monkeypatch.setenv("TOWERCO_TELEMETRY_STREAM_MAX_AGE_S", "3600")
    assert {c.name: c for c in events.stream_configs()}["TELEMETRY"].max_age == 3600
    monkeypatch.setenv("TOWERCO_TELEMETRY_STREAM_MAX_AGE_S", "a week")
    with pytest.raises(ValueError, match="TOWERCO_TELEMETRY_STREAM_MAX_AGE_S"):
        events.stream_configs()


def test_headers_carry_correlation_and_trace_context():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("mesh-tests")
    with sdk_context.bind(correlation_id="corr-123"), tracer.start_as_current_span("publish") as span:
        headers = events.headers_out({"X-Extra": "1"})
        trace_id = span.get_span_context().trace_id
    assert headers[events.CORRELATION_HEADER] == "corr-123"
    assert headers["X-Extra"] == "1"
    assert headers["traceparent"].split("-")[1] == f"{trace_id:032x}"

    msg = Msg(_client=None, subject="towerco.x", headers=headers, data=b"")
    ctx = events.context_in(msg)
    assert ctx.correlation_id == "corr-123"
    assert sdk_context.current_correlation_id() is None
    with ctx.activate():
        assert sdk_context.current_correlation_id() == "corr-123"
        assert trace.get_current_span().get_span_context().trace_id == trace_id
    assert sdk_context.current_correlation_id() is None

    bare = events.context_in(Msg(_client=None, subject="towerco.x", headers=None, data=b""))
    assert bare.correlation_id is None
    with bare.activate():
        assert sdk_context.current_correlation_id() is None


def test_no_context_means_no_headers():
    assert events.headers_out() == {}


def test_transient_classification():
    import asyncpg
    import nats.errors

    assert events.is_transient(ConnectionRefusedError())
    assert events.is_transient(asyncpg.ConnectionDoesNotExistError("gone"))
    assert events.is_transient(nats.errors.TimeoutError())
    assert not events.is_transient(ValueError("bad payload"))
    assert not events.is_transient(events.Poison("never"))
    assert not events.is_transient(FileNotFoundError(2, "missing"))


def test_dead_letter_headers_are_one_line_and_bounded():
    assert events.dead_letter_headers(" HTTP 500: \n", stream="S", consumer="c", deliveries=1)[
        "Towerco-Dlq-Reason"] == "HTTP 500:"
    h = events.dead_letter_headers("bad\r\nthing " + "x" * 2000, stream="EVENTS", consumer="notifier",
                                   deliveries=8, extra={"Towerco-Dlq-Kind": "notification"})
    assert h["Towerco-Dlq-Reason"].startswith("bad  thing x") and len(h["Towerco-Dlq-Reason"]) == 1000
    assert "\n" not in h["Towerco-Dlq-Reason"] and "\r" not in h["Towerco-Dlq-Reason"]
    assert (h["Towerco-Dlq-Stream"], h["Towerco-Dlq-Consumer"], h["Towerco-Dlq-Deliveries"]) == ("EVENTS", "notifier", "8")
    assert h["Towerco-Dlq-Kind"] == "notification"
    assert "Towerco-Dlq-Subject" not in h  # only a stream message has an original subject
