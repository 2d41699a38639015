"""The SDK channel against a real in-process grpc.aio server: metadata, deadlines, retries and
the circuit breaker, end to end over the wire."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import pytest
from towerco.sites.v1 import sites_pb2, sites_pb2_grpc
from towerco.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

import sdk
from sdk import context
from sdk.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError, State

GET = sites_pb2.GetSiteRequest(site_id="s-1")
CREATE = sites_pb2.CreateSiteRequest(site=sites_pb2.Site(id="s-1", name="Site"))
# The grpc-timeout header is rounded up on the wire, so the server may see a few ms more.
SLACK = 0.02
SMALL = BreakerConfig(window_size=4, minimum_calls=4, open_base_s=1.0, open_max_s=8.0, half_open_max_calls=2)


def stub_for(target: str, **kw) -> tuple[grpc.aio.Channel, sites_pb2_grpc.SitesServiceStub]:
    channel = sdk.create_channel(target, **kw)
    return channel, sites_pb2_grpc.SitesServiceStub(channel)


# -- propagation -------------------------------------------------------------------------------


async def test_explicit_token_and_new_correlation_id_arrive(peer):
    channel, stub = stub_for(peer.target, token="tok-1")
    async with channel:
        reply = await stub.GetSite(GET, timeout=5)
        await stub.GetSite(GET, timeout=5)
    assert reply.site.id == "s-1"
    first, second = peer.servicer.seen["GetSite"]
    assert first.metadata["authorization"] == "Bearer tok-1"
    assert re.fullmatch(r"[0-9a-f]{32}", first.metadata["x-correlation-id"])
    assert first.metadata["x-correlation-id"] != second.metadata["x-correlation-id"]


async def test_context_token_and_correlation_id_are_forwarded(peer):
    channel, stub = stub_for(peer.target)
    async with channel:
        with context.bind(token="Bearer ctx-token", correlation_id="corr-42"):
            await stub.GetSite(GET, timeout=5)
        await stub.GetSite(GET, timeout=5)  # outside the block nothing is forwarded
    inside, outside = peer.servicer.seen["GetSite"]
    assert inside.metadata["authorization"] == "Bearer ctx-token"
    assert inside.metadata["x-correlation-id"] == "corr-42"
    assert "authorization" not in outside.metadata
    assert outside.metadata["x-correlation-id"] != "corr-42"


async def test_callable_token_beats_context_and_call_metadata_beats_both(peer):
    async def fresh_token() -> str:
        return "from-callable"

    channel, stub = stub_for(peer.target, token=fresh_token)
    async with channel:
        with context.bind(token="ctx", correlation_id="ctx-corr"):
            await stub.GetSite(GET, timeout=5)
            await stub.GetSite(
                GET, timeout=5, metadata=(("authorization", "Bearer per-call"), ("x-correlation-id", "mine"))
            )
    by_callable, per_call = peer.servicer.seen["GetSite"]
    assert by_callable.metadata["authorization"] == "Bearer from-callable"
    assert per_call.metadata["authorization"] == "Bearer per-call"
    assert per_call.metadata["x-correlation-id"] == "mine"


async def test_deadline_shrinks_by_the_margin_and_never_grows(peer):
    channel, stub = stub_for(peer.target, deadline_margin_s=0.2)
    async with channel:
        with context.bind(deadline=context.deadline_in(2.0)):
            await stub.GetSite(GET)  # no explicit timeout: the context's remaining time - margin
            await stub.GetSite(GET, timeout=0.5)  # the explicit timeout is smaller: it wins
            await stub.GetSite(GET, timeout=60)  # larger explicit timeout: the context wins
    from_ctx, explicit_small, explicit_large = peer.servicer.seen["GetSite"]
    assert 1.0 < from_ctx.time_remaining <= 1.8 + SLACK
    assert explicit_small.time_remaining <= 0.5 + SLACK
    assert explicit_large.time_remaining <= 1.8 + SLACK


async def test_spent_deadline_fails_fast_without_calling(peer):
    channel, stub = stub_for(peer.target)
    async with channel:
        with context.bind(deadline=time.monotonic() + 0.01):  # less than the 50 ms margin
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSite(GET, timeout=5)
        with context.bind(deadline=time.monotonic() - 1):
            with pytest.raises(grpc.aio.AioRpcError) as err2:
                await stub.CreateSite(CREATE)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err2.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert peer.servicer.calls["GetSite"] == 0 and peer.servicer.calls["CreateSite"] == 0
    # A refused call is not a server failure: the breaker did not see it.
    assert sdk.breaker_for(peer.target).window_len() == 0


async def test_second_hop_forwards_token_correlation_and_remaining_deadline(peer, make_peer):
    """Service A (peer) calls service B with the context bound from its own request."""
    hop2 = await make_peer()
    downstream_channel = sdk.create_channel(hop2.target)  # no token of its own: uses the caller's
    peer.servicer.downstream = sites_pb2_grpc.SitesServiceStub(downstream_channel)
    channel, stub = stub_for(peer.target, token="caller-token")
    try:
        async with channel:
            with context.bind(correlation_id="trace-me"):
                await stub.GetSite(GET, timeout=3)
    finally:
        await downstream_channel.close()
    first = peer.servicer.seen["GetSite"][0]
    second = hop2.servicer.seen["GetSite"][0]
    assert second.metadata["authorization"] == "Bearer caller-token"
    assert second.metadata["x-correlation-id"] == "trace-me"
    assert second.time_remaining < first.time_remaining <= 3 + SLACK
    assert second.time_remaining <= first.time_remaining - 0.05 + SLACK  # minus the margin


# -- retries -----------------------------------------------------------------------------------


async def test_unavailable_is_retried_for_get_but_not_for_create(peer):
    peer.servicer.always["GetSite"] = grpc.StatusCode.UNAVAILABLE
    peer.servicer.always["CreateSite"] = grpc.StatusCode.UNAVAILABLE
    channel, stub = stub_for(peer.target, breaker=False)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as get_err:
            await stub.GetSite(GET, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as create_err:
            await stub.CreateSite(CREATE, timeout=10)
    assert get_err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert create_err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert peer.servicer.calls["GetSite"] == 4  # maxAttempts
    assert peer.servicer.calls["CreateSite"] == 1


async def test_transient_unavailable_is_hidden_by_retries(peer):
    peer.servicer.script["GetSite"] = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    channel, stub = stub_for(peer.target)
    async with channel:
        reply = await stub.GetSite(GET, timeout=10)
    assert reply.site.id == "s-1"
    assert peer.servicer.calls["GetSite"] == 3
    # Every attempt shared the call's correlation id.
    ids = {s.metadata["x-correlation-id"] for s in peer.servicer.seen["GetSite"]}
    assert len(ids) == 1
    assert sdk.breaker_for(peer.target).failure_rate() == 0.0  # the breaker saw one success


async def test_other_codes_and_retry_off_are_not_retried(peer):
    peer.servicer.always["GetSite"] = grpc.StatusCode.INTERNAL
    peer.servicer.always["ListSites"] = grpc.StatusCode.UNAVAILABLE
    channel, stub = stub_for(peer.target, breaker=False, retry=False)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetSite(GET, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListSites(sites_pb2.ListSitesRequest(), timeout=5)
    assert peer.servicer.calls["GetSite"] == 1
    assert peer.servicer.calls["ListSites"] == 1


# -- circuit breaker ---------------------------------------------------------------------------


async def test_breaker_opens_on_server_failures_then_fails_fast_without_calling(peer, clock):
    peer.servicer.always["CreateSite"] = grpc.StatusCode.INTERNAL
    cb = CircuitBreaker(peer.target, SMALL, clock=clock, rng=lambda: 0.5)
    channel, stub = stub_for(peer.target, breaker=cb)
    async with channel:
        for _ in range(4):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateSite(CREATE, timeout=5)
            assert err.value.code() is grpc.StatusCode.INTERNAL
        assert cb.state is State.OPEN
        started = time.perf_counter()
        for _ in range(50):
            with pytest.raises(CircuitOpenError) as open_err:
                await stub.GetSite(GET, timeout=5)
        per_call = (time.perf_counter() - started) / 50
    assert peer.servicer.calls["CreateSite"] == 4
    assert peer.servicer.calls["GetSite"] == 0
    exc = open_err.value
    assert isinstance(exc, grpc.aio.AioRpcError) and isinstance(exc, grpc.RpcError)
    assert exc.code() is grpc.StatusCode.UNAVAILABLE
    assert re.fullmatch(rf"circuit open for {re.escape(peer.target)}; retry in \d+\.\ds", exc.details())
    assert per_call < 0.05  # generous bound; the benchmark measures the real figure


async def test_client_errors_never_open_the_breaker(peer, clock):
    peer.servicer.always["GetSite"] = grpc.StatusCode.NOT_FOUND
    peer.servicer.always["CreateSite"] = grpc.StatusCode.INVALID_ARGUMENT
    cb = CircuitBreaker(peer.target, SMALL, clock=clock)
    channel, stub = stub_for(peer.target, breaker=cb)
    async with channel:
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetSite(GET, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CreateSite(CREATE, timeout=5)
    assert cb.state is State.CLOSED
    assert peer.servicer.calls["GetSite"] == 6


async def test_slow_calls_count_as_failures(peer, clock):
    peer.servicer.delay_s = 0.06
    cb = CircuitBreaker(peer.target, BreakerConfig(window_size=3, minimum_calls=3, slow_call_threshold_s=0.03))
    channel, stub = stub_for(peer.target, breaker=cb)
    async with channel:
        for _ in range(3):
            await stub.GetSite(GET, timeout=5)  # each succeeds, slowly
        with pytest.raises(CircuitOpenError):
            await stub.GetSite(GET, timeout=5)
    assert peer.servicer.calls["GetSite"] == 3


async def test_half_open_recovers_after_trials_succeed(peer, clock):
    peer.servicer.always["GetSite"] = grpc.StatusCode.UNAVAILABLE
    cb = CircuitBreaker(peer.target, SMALL, clock=clock, rng=lambda: 0.5)
    channel, stub = stub_for(peer.target, breaker=cb, retry=False)
    async with channel:
        for _ in range(4):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetSite(GET, timeout=5)
        assert cb.state is State.OPEN and cb.open_for_s == pytest.approx(1.0)

        # A trial that fails re-opens for longer (2 s nominal; rng 0.5 means no jitter).
        clock.advance(1.01)
        assert cb.state is State.HALF_OPEN
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSite(GET, timeout=5)
        assert not isinstance(err.value, CircuitOpenError)
        assert cb.state is State.OPEN and cb.open_for_s == pytest.approx(2.0)

        # The server recovers; after the open time the trials succeed and the breaker closes.
        del peer.servicer.always["GetSite"]
        clock.advance(2.01)
        calls_before = peer.servicer.calls["GetSite"]
        for _ in range(SMALL.half_open_max_calls):
            await stub.GetSite(GET, timeout=5)
        assert cb.state is State.CLOSED and cb.consecutive_opens == 0
        await stub.GetSite(GET, timeout=5)
    assert peer.servicer.calls["GetSite"] == calls_before + SMALL.half_open_max_calls + 1


async def test_half_open_admits_only_the_trial_calls_at_once(peer, clock):
    cb = CircuitBreaker(peer.target, SMALL, clock=clock, rng=lambda: 0.5)
    cb.force_open()
    clock.advance(1.5)
    peer.servicer.delay_s = 0.2
    channel, stub = stub_for(peer.target, breaker=cb)
    async with channel:
        results = await asyncio.gather(*(stub.GetSite(GET, timeout=5) for _ in range(5)), return_exceptions=True)
    rejected = [r for r in results if isinstance(r, CircuitOpenError)]
    assert len(rejected) == 5 - SMALL.half_open_max_calls
    assert peer.servicer.calls["GetSite"] == SMALL.half_open_max_calls
    assert cb.state is State.CLOSED


async def test_client_cancellation_is_no_outcome_and_frees_the_trial_slot(peer, clock):
    cb = CircuitBreaker(peer.target, SMALL, clock=clock, rng=lambda: 0.5)
    cb.force_open()
    clock.advance(1.5)
    peer.servicer.delay_s = 1.0
    channel, stub = stub_for(peer.target, breaker=cb)
    async with channel:
        calls = [stub.GetSite(GET, timeout=5) for _ in range(SMALL.half_open_max_calls)]
        await asyncio.sleep(0.1)  # every trial slot is taken by a call in flight
        with pytest.raises(CircuitOpenError):
            await stub.GetSite(GET, timeout=5)
        for c in calls:
            c.cancel()
        for c in calls:
            with pytest.raises(asyncio.CancelledError):
                await c
        assert cb.state is State.HALF_OPEN
        peer.servicer.delay_s = 0.0
        for _ in range(SMALL.half_open_max_calls):
            await stub.GetSite(GET, timeout=5)
        assert cb.state is State.CLOSED


async def test_dead_server_opens_the_breaker(make_peer, clock):
    dead = await make_peer()
    await dead.server.stop(0)  # nothing listens on this port any more
    cb = CircuitBreaker(dead.target, SMALL, clock=clock)
    channel, stub = stub_for(dead.target, breaker=cb, retry=False)
    async with channel:
        for _ in range(4):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSite(GET, timeout=2)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(CircuitOpenError):
            await stub.GetSite(GET, timeout=2)


async def _recorded(cb: CircuitBreaker, n: int, wait_s: float = 5.0) -> None:
    """Until the breaker's window holds n outcomes (a watcher task records a stream's outcome)."""
    for _ in range(int(wait_s / 0.005)):
        if cb.window_len() >= n:
            return
        await asyncio.sleep(0.005)


async def _opened(cb: CircuitBreaker, wait_s: float = 5.0) -> None:
    for _ in range(int(wait_s / 0.005)):
        if cb.state is State.OPEN:
            return
        await asyncio.sleep(0.005)


async def test_streams_count_by_first_response_or_end(peer, clock):
    cb = CircuitBreaker(peer.target, SMALL, clock=clock)
    channel, stub = stub_for(peer.target, breaker=cb, retry=False)
    async with channel:
        replies = [r async for r in stub.WatchChanges(sites_pb2.WatchChangesRequest(), timeout=5)]
        assert len(replies) == 3
        await _recorded(cb, 1)
        assert cb.window_len() == 1 and cb.failure_rate() == 0.0

        peer.servicer.always["WatchChanges"] = grpc.StatusCode.UNAVAILABLE
        for i in range(3):  # 1 success + 3 failures: rate 0.75 over the minimum 4 calls
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _r in stub.WatchChanges(sites_pb2.WatchChangesRequest(), timeout=5):
                    pass
            assert not isinstance(err.value, CircuitOpenError)
            if i < 2:
                await _recorded(cb, 2 + i)  # the outcome is recorded by a watcher task
            else:
                await _opened(cb)
        assert cb.state is State.OPEN
        with pytest.raises(CircuitOpenError):
            async for _r in stub.WatchChanges(sites_pb2.WatchChangesRequest(), timeout=5):
                pass
    assert peer.servicer.calls["WatchChanges"] == 4


async def test_breakers_are_shared_per_target(peer):
    a = sdk.create_channel(peer.target)
    b = sdk.create_channel(peer.target)
    try:
        sdk.breaker_for(peer.target).force_open()
        with pytest.raises(CircuitOpenError):
            await sites_pb2_grpc.SitesServiceStub(b).GetSite(GET, timeout=5)
        with pytest.raises(CircuitOpenError):
            await sites_pb2_grpc.SitesServiceStub(a).GetSite(GET, timeout=5)
    finally:
        await a.close()
        await b.close()
    assert peer.servicer.calls["GetSite"] == 0


# -- Client ------------------------------------------------------------------------------------


async def test_client_has_typed_stubs_and_closes(peer):
    async with sdk.Client(peer.target, token="client-token") as client:
        reply = await client.sites.GetSite(GET, timeout=5)
        assert client.stub(sites_pb2_grpc.SitesServiceStub) is client.stub(sites_pb2_grpc.SitesServiceStub)
        assert client.telemetry is not None
    assert reply.site.name == "Site"
    assert peer.servicer.seen["GetSite"][0].metadata["authorization"] == "Bearer client-token"
    with pytest.raises(Exception):  # noqa: B017 - any error: the channel is closed
        await client.sites.GetSite(GET, timeout=1)


# -- client streaming (stream-unary) -----------------------------------------------------------


class _Telemetry(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[dict] = []
        self.fail: grpc.StatusCode | None = None

    async def IngestStream(self, request_iterator, context):
        self.metadata.append(dict(context.invocation_metadata()))
        batches = 0
        async for _batch in request_iterator:
            batches += 1
        if self.fail is not None:
            await context.abort(self.fail, "scripted")
        return telemetry_pb2.IngestStreamResponse(batches=batches)


async def test_client_streaming_carries_metadata_and_feeds_the_breaker(clock):
    servicer = _Telemetry()
    server = grpc.aio.server()
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    cb = CircuitBreaker(target, SMALL, clock=clock)
    channel = sdk.create_channel(target, token="ingest-token", breaker=cb)
    stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
    try:
        with context.bind(correlation_id="batch-7"):
            # The writer API: the interceptors must not hold the call back until it ends.
            call = stub.IngestStream(timeout=5)
            for i in range(3):
                await call.write(telemetry_pb2.IngestStreamRequest(batch_id=f"b{i}"))
            await call.done_writing()
            reply = await call

            async def batches():
                for i in range(2):
                    yield telemetry_pb2.IngestStreamRequest(batch_id=f"c{i}")

            reply2 = await stub.IngestStream(batches(), timeout=5)
        assert (reply.batches, reply2.batches) == (3, 2)
        await asyncio.sleep(0.01)
        assert cb.window_len() == 2 and cb.failure_rate() == 0.0

        servicer.fail = grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(2):  # 2 successes + 2 failures: rate 0.5 over the minimum 4 calls
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestStream(batches(), timeout=5)
            assert not isinstance(err.value, CircuitOpenError)
            await asyncio.sleep(0.01)
        assert cb.state is State.OPEN
        with pytest.raises(CircuitOpenError):
            await stub.IngestStream(batches(), timeout=5)
    finally:
        await channel.close()
        await server.stop(0)
    assert servicer.metadata[0]["authorization"] == "Bearer ingest-token"
    assert all(md["x-correlation-id"] == "batch-7" for md in servicer.metadata[:2])
    assert len(servicer.metadata) == 4


async def test_rejected_call_is_a_finished_unavailable_call_and_leaves_no_garbage(peer):
    import gc

    cb = CircuitBreaker(peer.target, SMALL)
    cb.force_open()
    channel, stub = stub_for(peer.target, breaker=cb)
    async with channel:
        call = stub.GetSite(GET, timeout=5)
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert (await call.details()).startswith(f"circuit open for {peer.target}")
        assert call.done() and not call.cancelled()
        with pytest.raises(CircuitOpenError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        del err, call
        # Rejecting builds no reference cycles: nothing is left for the garbage collector, whose
        # pauses would otherwise show in the fail-fast latency.
        for _ in range(20):  # warm-up
            with pytest.raises(CircuitOpenError):
                await stub.GetSite(GET, timeout=5)
        gc.collect()
        gc.disable()
        try:
            for _ in range(100):
                try:
                    await stub.GetSite(GET, timeout=5)
                except CircuitOpenError:
                    pass
            assert gc.collect() == 0
        finally:
            gc.enable()
    assert peer.servicer.calls["GetSite"] == 0
