"""gateway.live.resumed_request: the request that continues a resumable stream from the gateway."""

from __future__ import annotations

from towerco.noc.v1 import noc_pb2

from gateway.live import resumed_request


def test_continues_after_the_last_sequence_sent_keeping_the_filters():
    req = noc_pb2.WatchIncidentsRequest(after_sequence=5, region="north", min_severity=3)
    out = resumed_request(req, "after_sequence", 42)
    assert out.after_sequence == 42 and out.region == "north" and out.min_severity == 3
    assert req.after_sequence == 5  # the original is untouched


def test_nothing_sent_yet_repeats_the_original_cursor():
    req = noc_pb2.WatchIncidentsRequest(after_sequence=7, site_id="TWR-1")
    assert resumed_request(req, "after_sequence", None) == req


def test_a_live_only_stream_continues_by_cursor_once_it_has_one():
    req = noc_pb2.WatchIncidentsRequest(live_only=True)
    out = resumed_request(req, "after_sequence", 99)
    assert out.after_sequence == 99 and not out.live_only  # both together would be INVALID_ARGUMENT


def test_a_live_only_stream_that_sent_nothing_cannot_continue_without_a_gap():
    assert resumed_request(noc_pb2.WatchIncidentsRequest(live_only=True), "after_sequence", None) is None
