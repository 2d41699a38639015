"""The ingestor's binary COPY encoder, checked byte by byte against the PostgreSQL format."""

from __future__ import annotations

import struct

from workers.ingestor.store import RowEncoder, payload


def test_encodes_rows_in_pgcopy_binary_format():
    enc = RowEncoder().encode([("S1", "dc_bus_v", "", 946_684_801, 500_000, 53.5),
                               ("S1", "tenant_link_up", "op", 946_684_800, 0, 1.0)])
    assert enc.rows == 2 and enc.min_s == 946_684_800 and enc.max_s == 946_684_801
    data = payload([enc])
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
    assert data.endswith(struct.pack(">h", -1))
    body = data[19:-2]
    expected = (
        struct.pack(">hi", 5, 2) + b"S1" + struct.pack(">i", 8) + b"dc_bus_v" + struct.pack(">i", 0)
        + struct.pack(">iqid", 8, 1_000_500, 8, 53.5)
        + struct.pack(">hi", 5, 2) + b"S1" + struct.pack(">i", 14) + b"tenant_link_up"
        + struct.pack(">i", 2) + b"op" + struct.pack(">iqid", 8, 0, 8, 1.0)
    )
    assert body == expected


def test_min_max_track_any_order():
    enc = RowEncoder().encode([("A", "m", "", t, 0, 0.0) for t in (50, 10, 90, 30)])
    assert (enc.min_s, enc.max_s, enc.rows) == (10, 90, 4)


def test_empty_batch():
    enc = RowEncoder().encode([])
    assert enc.rows == 0 and payload([enc]).endswith(struct.pack(">h", -1))


def test_encoding_samples_directly_gives_the_same_bytes():
    from towerco.telemetry.v1 import telemetry_pb2 as pb

    msg = pb.TelemetryBatch(batch_id="b", partition=0)
    rows = [("S1", "dc_bus_v", "", 1_700_000_000, 5_000, 53.5), ("S2", "tenant_link_up", "op", 1_700_000_060, 0, 1.0),
            ("S1", "load_a", "", 1_699_999_000, 999_999_999, 12.25)]
    for site, metric, tenant, sec, nanos, value in rows:
        s = msg.samples.add(site_id=site, metric=metric, tenant_id=tenant, value=value)
        s.time.seconds, s.time.nanos = sec, nanos
    a, b = RowEncoder().encode(rows), RowEncoder().encode_samples(msg.samples)
    assert payload([a]) == payload([b])
    assert (b.rows, b.min_s, b.max_s) == (3, 1_699_999_000, 1_700_000_060)


def test_payload_groups_series_in_sorted_order_across_messages():
    enc = RowEncoder()
    a = enc.encode([("S2", "load_a", "", 1_700_000_000, 0, 1.0), ("S1", "load_a", "", 1_700_000_000, 0, 2.0)])
    b = enc.encode([("S1", "load_a", "", 1_700_000_060, 0, 3.0), ("S1", "dc_bus_v", "", 1_700_000_060, 0, 4.0)])
    merged = payload([a, b])
    one_by_one = payload([enc.encode([
        ("S1", "dc_bus_v", "", 1_700_000_060, 0, 4.0),
        ("S1", "load_a", "", 1_700_000_000, 0, 2.0),
        ("S1", "load_a", "", 1_700_000_060, 0, 3.0),
        ("S2", "load_a", "", 1_700_000_000, 0, 1.0),
    ])])
    assert merged == one_by_one
    assert payload([a, b]) == merged  # inputs are not consumed
