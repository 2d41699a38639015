"""The Files service over gRPC and through the gateway: uploads with metadata and checksums in
PostgreSQL and bytes in the object store (a local folder here), limits and bad types refused with
field violations, tenant isolation, and signed download links that open one file and expire."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import uuid

import grpc
import httpx
import pytest
from kpi_support import serve_asgi
from towerco.files.v1 import files_pb2, files_pb2_grpc

from mesh import bootstrap
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.errors import status_of, violations_of
from mesh.migrate import migrate

U = uuid.uuid4().hex[:6]
ACME, BETA = f"fa-{U}", f"fb-{U}"
PDF = b"%PDF-1.4\n" + os.urandom(2000) + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(500)
MAX = 64 * 1024


class World:
    def __init__(self, settings, port, home):
        self.settings, self.port, self.home = settings, port, home
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = files_pb2_grpc.FilesServiceStub(self.channel)

    def token(self, *roles, tenant="*"):
        return mint_token(subject="files-tester", tenant=tenant, roles=list(roles), settings=self.settings)

    def md(self, *roles, tenant="*"):
        return (("authorization", f"Bearer {self.token(*roles, tenant=tenant)}"),)

    async def upload(self, tenant=ACME, content=PDF, content_type="application/pdf", name="lease.pdf",
                     kind=files_pb2.FILE_KIND_SITE_DOCUMENT, site_id="NBO-0001", md=None):
        r = await self.stub.UploadFile(files_pb2.UploadFileRequest(
            tenant_id=tenant, site_id=site_id, kind=kind, name=name, content_type=content_type, content=content),
            metadata=md or self.md("admin"))
        return r.file


@pytest.fixture(scope="module")
async def world(stack, tmp_path_factory):
    from services.files.server import setup

    await migrate(stack.database_url, components=["files"])
    reset_settings()
    home = tmp_path_factory.mktemp("files-home")
    settings = dataclasses.replace(Settings.from_env(), home=home)
    os.environ["TOWERCO_FILES_MAX_BYTES"] = str(MAX)
    try:
        srv = await bootstrap.start("files", setup, port=0, metrics_port=-1, settings=settings, nats=False)
    finally:
        del os.environ["TOWERCO_FILES_MAX_BYTES"]
    w = World(settings, srv.port, home)
    try:
        yield w
    finally:
        await w.channel.close()
        await srv.stop(grace=1, drain_s=0)


def refused(exc_info) -> list[str]:
    assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc_info.value
    return [v.field for v in violations_of(status_of(exc_info.value))]


async def test_upload_keeps_metadata_checksum_and_bytes(world):
    f = await world.upload()
    assert f.tenant_id == ACME and f.name == "lease.pdf" and f.content_type == "application/pdf"
    assert f.size_bytes == len(PDF) and f.sha256 == hashlib.sha256(PDF).hexdigest()
    assert (world.home / "files" / ACME / f.id).read_bytes() == PDF  # the local object store
    got = (await world.stub.GetFile(files_pb2.GetFileRequest(file_id=f.id), metadata=world.md("viewer"))).file
    assert got == f
    dl = await world.stub.DownloadFile(files_pb2.DownloadFileRequest(file_id=f.id), metadata=world.md("viewer"))
    assert dl.body.data == PDF and dl.body.content_type == "application/pdf"


async def test_limits_and_bad_types_are_refused_with_field_violations(world):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.upload(content_type="application/x-msdownload", content=b"MZ\x90\x00")
    assert refused(e) == ["content_type"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.upload(content=b"%PDF-" + b"x" * MAX)
    assert refused(e) == ["content"]
    assert "at most 65536 bytes" in violations_of(status_of(e.value))[0].description
    with pytest.raises(grpc.aio.AioRpcError) as e:  # a PNG declared as PDF
        await world.upload(content=PNG)
    assert refused(e) == ["content"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.upload(content_type="text/csv", content=b"\xff\xfe\x00bad")
    assert refused(e) == ["content"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.upload(name="../../etc/passwd")
    assert refused(e) == ["name"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.upload(site_id="")
    assert refused(e) == ["site_id"]
    with pytest.raises(grpc.aio.AioRpcError) as e:  # tenants' viewers do not upload
        await world.upload(md=world.md("tenant_viewer", tenant=ACME))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_tenants_see_only_their_files(world):
    mine = await world.upload(content=PNG, content_type="image/png", name="site photo.png")
    theirs = await world.upload(tenant=BETA, content=PNG, content_type="image/png", name="other.png")
    acme = world.md("tenant_viewer", tenant=ACME)
    listed = (await world.stub.ListFiles(files_pb2.ListFilesRequest(), metadata=acme)).files
    ids = {f.id for f in listed}
    assert mine.id in ids and theirs.id not in ids and {f.tenant_id for f in listed} == {ACME}
    listed = (await world.stub.ListFiles(files_pb2.ListFilesRequest(tenant_id=BETA), metadata=acme)).files
    assert list(listed) == []
    staff = (await world.stub.ListFiles(files_pb2.ListFilesRequest(tenant_id=BETA), metadata=world.md("viewer"))).files
    assert [f.id for f in staff] == [theirs.id]
    for call in (world.stub.GetFile(files_pb2.GetFileRequest(file_id=theirs.id), metadata=acme),
                 world.stub.DownloadFile(files_pb2.DownloadFileRequest(file_id=theirs.id), metadata=acme),
                 world.stub.CreateDownloadLink(files_pb2.CreateDownloadLinkRequest(file_id=theirs.id), metadata=acme)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.stub.GetFile(files_pb2.GetFileRequest(file_id="not-a-uuid"), metadata=acme)
    assert refused(e) == ["file_id"]
    await world.stub.DeleteFile(files_pb2.DeleteFileRequest(file_id=theirs.id), metadata=world.md("admin"))
    assert not (world.home / "files" / BETA / theirs.id).exists()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.stub.GetFile(files_pb2.GetFileRequest(file_id=theirs.id), metadata=world.md("viewer"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
async def test_signed_links_through_the_gateway_open_one_file_and_expire(world):
    from gateway.app import create_app
    from gateway.config import GatewayConfig

    f = await world.upload()
    other = await world.upload(name="other.pdf")
    acme = world.md("tenant_viewer", tenant=ACME)
    link = await world.stub.CreateDownloadLink(files_pb2.CreateDownloadLinkRequest(file_id=f.id, ttl_seconds=1),
                                               metadata=acme)
    assert link.url.startswith(f"/api/v1/files/{f.id}:download?access_token=")
    app = create_app(GatewayConfig(services=("files",), targets={"files": f"127.0.0.1:{world.port}"},
                                   rate_per_s=0), world.settings)
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.get(link.url)  # no other credential
        assert r.status_code == 200, r.text
        assert r.content == PDF and r.headers["content-type"] == "application/pdf"
        # the link's token opens that file only, and nothing else on the platform
        r = await http.get(f"/api/v1/files/{other.id}:download", params={"access_token": link.token})
        assert r.status_code == 404, r.text
        r = await http.get(f"/api/v1/files/{f.id}", headers={"authorization": f"Bearer {link.token}"})
        assert r.status_code == 403, r.text
        # uploads over REST: bytes as base64 in the JSON body, the same checks
        admin = {"authorization": f"Bearer {world.token('admin')}"}
        r = await http.post("/api/v1/files", headers=admin, json={
            "tenantId": ACME, "kind": "FILE_KIND_EXPORT", "name": "notes.txt", "contentType": "text/plain",
            "content": base64.b64encode(b"hello").decode()})
        assert r.status_code == 200, r.text
        assert r.json()["sha256"] == hashlib.sha256(b"hello").hexdigest()
        r = await http.post("/api/v1/files", headers=admin, json={
            "tenantId": ACME, "kind": "FILE_KIND_EXPORT", "name": "x.exe", "contentType": "application/x-msdownload",
            "content": base64.b64encode(b"MZ").decode()})
        assert r.status_code == 400, r.text
        fvs = [fv["field"] for d in r.json()["details"] for fv in d.get("fieldViolations", [])]
        assert fvs == ["content_type"]
        await asyncio.sleep(1 + 5 + 1.5)  # past the expiry and the verifier's 5 s leeway
        r = await http.get(link.url)
        assert r.status_code == 401, r.text
        assert "expired" in r.text


async def test_an_idempotency_key_stores_one_file(world):
    """The same key twice (a retry, a restarted job): the first file answers, nothing new is
    stored; the key is per tenant; concurrent uploads with one key still store one file."""
    key = f"job/{U}/statement.pdf"
    first = (await world.stub.UploadFile(files_pb2.UploadFileRequest(
        tenant_id=ACME, kind=files_pb2.FILE_KIND_EXPORT, name="statement.pdf", content_type="application/pdf",
        content=PDF, idempotency_key=key), metadata=world.md("service"))).file
    again = await world.stub.UploadFile(files_pb2.UploadFileRequest(
        tenant_id=ACME, kind=files_pb2.FILE_KIND_EXPORT, name="statement.pdf", content_type="application/pdf",
        content=PDF + b"later", idempotency_key=key), metadata=world.md("service"))
    assert again.replayed and again.file == first
    other = await world.stub.UploadFile(files_pb2.UploadFileRequest(
        tenant_id=BETA, kind=files_pb2.FILE_KIND_EXPORT, name="statement.pdf", content_type="application/pdf",
        content=PDF, idempotency_key=key), metadata=world.md("service"))
    assert not other.replayed and other.file.id != first.id
    with pytest.raises(grpc.aio.AioRpcError) as e:  # the key of another file: refused, not taken over
        await world.stub.UploadFile(files_pb2.UploadFileRequest(
            tenant_id=ACME, kind=files_pb2.FILE_KIND_EXPORT, name="statement.csv", content_type="text/csv",
            content=b"a,b\n", idempotency_key=key), metadata=world.md("service"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "statement.pdf" in e.value.details()
    race = f"race/{U}"
    answers = await asyncio.gather(*(world.stub.UploadFile(files_pb2.UploadFileRequest(
        tenant_id=ACME, kind=files_pb2.FILE_KIND_EXPORT, name="r.pdf", content_type="application/pdf",
        content=PDF, idempotency_key=race), metadata=world.md("service")) for i in range(5)))
    assert len({a.file.id for a in answers}) == 1 and sum(not a.replayed for a in answers) == 1
    listed = (await world.stub.ListFiles(files_pb2.ListFilesRequest(tenant_id=ACME, limit=1000),
                                         metadata=world.md("viewer"))).files
    names = [f.name for f in listed]
    assert names.count("statement.pdf") == 1 and names.count("r.pdf") == 1 and "statement.csv" not in names
    blobs = {p.name for p in (world.home / "files" / ACME).iterdir()}
    assert answers[0].file.id in blobs and first.id in blobs
    assert len([b for b in blobs if b not in {f.id for f in listed}]) == 0  # the losers' bytes are gone
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await world.stub.UploadFile(files_pb2.UploadFileRequest(
            tenant_id=ACME, kind=files_pb2.FILE_KIND_EXPORT, name="x.pdf", content_type="application/pdf",
            content=PDF, idempotency_key="../bad key"), metadata=world.md("service"))
    assert refused(e) == ["idempotency_key"]
