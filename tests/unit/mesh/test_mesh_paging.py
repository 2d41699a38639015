"""Keyset page tokens and time bounds (mesh/paging.py), shared by the AIOps and NOC lists."""

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_interceptor.exceptions import GrpcException
from towerco.common.v1 import common_pb2

from mesh import paging

ROW = "00000000-0000-0000-0000-000000000001"
T0 = 1_796_000_000.0


def test_round_trip_from_a_datetime_and_from_epoch_seconds():
    t = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert paging.decode_keyset(paging.encode_keyset(t, ROW)) == (t, ROW)
    when, rid = paging.decode_keyset(paging.encode_keyset(T0 + 0.25, ROW))
    assert when.timestamp() == T0 + 0.25 and rid == ROW
    assert paging.decode_keyset("") is None


def test_a_token_it_did_not_issue_is_refused():
    for bad in ("!!", "%%%", "bm90IGEgY3Vyc29y", "bm9waXBl", "eHx5", paging.encode_keyset(T0, "short")):
        with pytest.raises(ValueError):
            paging.decode_keyset(bad)
    with pytest.raises(GrpcException) as err:
        paging.page_after("bm9waXBl")
    assert err.value.status_code == grpc.StatusCode.INVALID_ARGUMENT


def test_time_bounds():
    lo, hi = Timestamp(seconds=int(T0)), Timestamp(seconds=int(T0) + 60)
    assert paging.time_bounds(common_pb2.TimeRange(), False) == (None, None)
    start, end = paging.time_bounds(common_pb2.TimeRange(start_time=lo), True)
    assert start is not None and start.timestamp() == T0 and end is None
    assert paging.time_bounds(common_pb2.TimeRange(start_time=lo, end_time=hi), True)[1].timestamp() == T0 + 60
    with pytest.raises(GrpcException) as err:
        paging.time_bounds(common_pb2.TimeRange(start_time=hi, end_time=lo), True)
    assert err.value.status_code == grpc.StatusCode.INVALID_ARGUMENT
