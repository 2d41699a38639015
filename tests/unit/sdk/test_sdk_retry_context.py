"""The retry service config (which methods, which policy) and the propagation context."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

import sdk
from sdk import context, retry
from sdk.interceptors import PropagationInterceptor


def _service(methods: dict[str, int | None]) -> object:
    """A throw-away service descriptor whose methods carry the given idempotency levels."""
    fdp = descriptor_pb2.FileDescriptorProto(name="t/idem.proto", package="t.v1", syntax="proto3")
    fdp.message_type.add(name="M")
    svc = fdp.service.add(name="IdemService")
    for name, level in methods.items():
        m = svc.method.add(name=name, input_type=".t.v1.M", output_type=".t.v1.M")
        if level is not None:
            m.options.idempotency_level = level
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool.FindServiceByName("t.v1.IdemService")


MO = descriptor_pb2.MethodOptions


def test_descriptor_option_wins_over_the_name():
    svc = _service(
        {
            "CreateThing": MO.IDEMPOTENT,
            "RecomputeThing": MO.NO_SIDE_EFFECTS,
            "GetThing": MO.IDEMPOTENCY_UNKNOWN,
            "ListThings": None,
            "DeleteThing": None,
        }
    )
    assert retry.idempotent_methods([svc]) == [
        ("t.v1.IdemService", "CreateThing"),
        ("t.v1.IdemService", "RecomputeThing"),
        ("t.v1.IdemService", "ListThings"),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("GetSite", True),
        ("ListSites", True),
        ("QuerySamples", True),
        ("LatestSnapshot", True),
        ("WatchChanges", True),
        ("TailSamples", True),
        ("Get", True),
        ("Getaway", False),  # the prefix must end at a word boundary
        ("Listen", False),
        ("CreateSite", False),
        ("UpdateSite", False),
        ("DeleteSite", False),
        ("Ingest", False),
        ("IngestStream", False),
    ],
)
def test_name_rule(name, expected):
    svc = _service({name: None})
    assert retry.is_idempotent(svc.methods_by_name[name]) is expected


def test_service_config_covers_reads_of_the_generated_services_only():
    services = [sites_pb2.DESCRIPTOR.services_by_name["SitesService"], telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"]]
    cfg = retry.service_config(services)
    assert cfg["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}
    (method_config,) = cfg["methodConfig"]
    assert method_config["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = {(n["service"].rsplit(".", 1)[1], n["method"]) for n in method_config["name"]}
    assert ("SitesService", "GetSite") in names and ("TelemetryService", "QuerySamples") in names
    assert ("SitesService", "WatchChanges") in names and ("TelemetryService", "TailSamples") in names
    assert not {m for _, m in names} & {"CreateSite", "UpdateSite", "DeleteSite", "Ingest", "IngestStream"}


def test_default_services_are_found_in_the_generated_code():
    names = {s.full_name for s in retry.default_services()}
    assert {"towerco.sites.v1.SitesService", "towerco.telemetry.v1.TelemetryService"} <= names


def test_retry_options_are_valid_json_channel_options():
    opts = dict(retry.retry_options(policy=retry.RetryPolicy(max_attempts=3, initial_backoff_s=0.25)))
    assert opts["grpc.enable_retries"] == 1
    cfg = json.loads(opts["grpc.service_config"])
    assert cfg["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 3
    assert cfg["methodConfig"][0]["retryPolicy"]["initialBackoff"] == "0.25s"


def test_no_idempotent_methods_means_throttling_only():
    cfg = retry.service_config([_service({"CreateThing": None})])
    assert "methodConfig" not in cfg and "retryThrottling" in cfg


# -- context ---------------------------------------------------------------------------------------


def test_bind_sets_and_restores_and_strips_bearer():
    assert context.current_token() is None
    with context.bind(token="Bearer abc", correlation_id="c1"):
        assert context.current_token() == "abc"
        assert context.current_correlation_id() == "c1"
        with context.bind(token="inner"):
            assert context.current_token() == "inner"
            assert context.current_correlation_id() == "c1"
        assert context.current_token() == "abc"
        with context.bind(token=None):
            assert context.current_token() is None
    assert context.current_token() is None and context.current_correlation_id() is None


def test_bind_never_extends_a_deadline():
    near = time.monotonic() + 1
    with context.bind(deadline=near):
        with context.bind(deadline=near + 100):
            assert context.current_deadline() == near
        with context.bind(deadline=near - 0.5):
            assert context.current_deadline() == near - 0.5
            assert 0 < context.remaining() <= 0.5
    assert context.current_deadline() is None and context.remaining() is None


async def test_context_is_per_task():
    seen = []

    async def worker(tok: str) -> None:
        with context.bind(token=tok):
            await asyncio.sleep(0.01)
            seen.append(context.current_token())

    await asyncio.gather(worker("a"), worker("b"))
    assert sorted(seen) == ["a", "b"]


# -- the propagation interceptor's decisions, without a server ----------------------------------------


async def _details_after(interceptor: PropagationInterceptor, **call) -> grpc.aio.ClientCallDetails:
    """Run the unary-unary hook with a continuation that just returns the details it got."""
    details = grpc.aio.ClientCallDetails(
        method="/towerco.sites.v1.SitesService/GetSite",
        timeout=call.get("timeout"),
        metadata=call.get("metadata"),
        credentials=None,
        wait_for_ready=None,
    )

    async def continuation(d, _request):
        return d

    return await interceptor.intercept_unary_unary(continuation, details, object())


async def test_interceptor_timeout_is_the_smaller_of_explicit_and_context():
    icp = PropagationInterceptor(margin_s=0.1)
    assert (await _details_after(icp, timeout=3.0)).timeout == 3.0
    assert (await _details_after(icp)).timeout is None
    with context.bind(deadline=context.deadline_in(1.0)):
        t = (await _details_after(icp, timeout=3.0)).timeout
        assert 0.85 < t <= 0.9
        assert (await _details_after(icp, timeout=0.2)).timeout == 0.2


async def test_interceptor_refuses_a_spent_deadline():
    icp = PropagationInterceptor()
    with context.bind(deadline=time.monotonic() + 0.02):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _details_after(icp, timeout=5)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_interceptor_metadata_sources():
    md = dict((await _details_after(PropagationInterceptor("t1"), metadata=(("x-other", "1"),))).metadata)
    assert md["authorization"] == "Bearer t1" and md["x-other"] == "1" and len(md["x-correlation-id"]) == 32
    md = dict((await _details_after(PropagationInterceptor(lambda: None))).metadata)
    assert "authorization" not in md
    with context.bind(token="ctx"):
        md = dict((await _details_after(PropagationInterceptor(lambda: None))).metadata)
    assert md["authorization"] == "Bearer ctx"  # the callable had nothing: the context's token


def test_public_surface():
    for name in ("create_channel", "Client", "CircuitBreaker", "BreakerConfig", "CircuitOpenError", "context"):
        assert hasattr(sdk, name)
