"""The Files service on its S3 backend (TOWERCO_FILES_STORE_URL=s3://bucket/prefix), against a real
S3-compatible server: moto's standalone server (`moto_server`, a dev dependency) in its own
process on a loopback port. Upload (the bytes land in the bucket under the prefix), download
with the checksum verified (a damaged object is refused, never served), a signed link through
the gateway, delete (the object is gone)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from kpi_support import serve_asgi
from towerco.files.v1 import files_pb2, files_pb2_grpc

from mesh import bootstrap
from mesh.auth import mint_token
from mesh.config import Settings, reset_settings
from mesh.embedded import free_port
from mesh.migrate import migrate

boto3 = pytest.importorskip("boto3")
U = uuid.uuid4().hex[:6]
TENANT = f"s3t-{U}"
BUCKET = f"towerco-files-{U}"
PREFIX = "exports"
PDF = b"%PDF-1.4\n" + os.urandom(4000) + b"\n%%EOF\n"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


def _moto_binary() -> str:
    exe = Path(sys.executable).with_name("moto_server")
    return str(exe) if exe.exists() else (shutil.which("moto_server") or "")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    exe = _moto_binary()
    if not exe:
        pytest.fail("moto_server is not installed: `pip install -e .[dev]` brings moto[server]")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # up when it answers HTTP at all
        try:
            httpx.get(endpoint, timeout=2)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def s3(s3_server):
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
async def files_s3(stack, s3_server, s3, tmp_path_factory):
    from services.files.server import setup

    await migrate(stack.database_url, components=["files"])
    reset_settings()
    settings = dataclasses.replace(Settings.from_env(), home=tmp_path_factory.mktemp("files-s3-home"))
    env = {**AWS, "AWS_ENDPOINT": s3_server, "TOWERCO_FILES_STORE_URL": f"s3://{BUCKET}/{PREFIX}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:  # obstore reads the AWS_* variables when the store is built, at start-up
        srv = await bootstrap.start("files", setup, port=0, metrics_port=-1, settings=settings, nats=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        yield settings, srv.port, files_pb2_grpc.FilesServiceStub(channel)
    finally:
        await channel.close()
        await srv.stop(grace=1, drain_s=0)


def _md(settings, *roles, tenant="*"):
    return (("authorization", "Bearer " + mint_token(subject="s3-tester", tenant=tenant, roles=list(roles),
                                                      settings=settings)),)


async def test_upload_download_link_delete_on_s3(files_s3, s3):
    settings, port, stub = files_s3
    admin = _md(settings, "admin")
    f = (await stub.UploadFile(files_pb2.UploadFileRequest(
        tenant_id=TENANT, kind=files_pb2.FILE_KIND_EXPORT, name="statement.pdf", content_type="application/pdf",
        content=PDF), metadata=admin)).file
    assert f.size_bytes == len(PDF) and f.sha256 == hashlib.sha256(PDF).hexdigest()
    key = f"{PREFIX}/{TENANT}/{f.id}"
    obj = s3.get_object(Bucket=BUCKET, Key=key)  # the bytes are in the bucket, under the prefix
    assert obj["Body"].read() == PDF
    assert not (settings.home / "files").exists()  # and nothing on the local disk

    viewer = _md(settings, "tenant_viewer", tenant=TENANT)
    dl = await stub.DownloadFile(files_pb2.DownloadFileRequest(file_id=f.id), metadata=viewer)
    assert dl.body.data == PDF and hashlib.sha256(dl.body.data).hexdigest() == f.sha256

    from gateway.app import create_app
    from gateway.config import GatewayConfig

    link = await stub.CreateDownloadLink(files_pb2.CreateDownloadLinkRequest(file_id=f.id, ttl_seconds=60),
                                         metadata=viewer)
    app = create_app(GatewayConfig(services=("files",), targets={"files": f"127.0.0.1:{port}"}, rate_per_s=0),
                     settings)
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.get(link.url)  # the signed link alone, served from S3
        assert r.status_code == 200, r.text
        assert r.content == PDF and r.headers["content-type"] == "application/pdf"

        # an object changed behind the service's back fails its checksum: refused, not served
        s3.put_object(Bucket=BUCKET, Key=key, Body=PDF[:-10] + b"tampered!\n")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.DownloadFile(files_pb2.DownloadFileRequest(file_id=f.id), metadata=viewer)
        assert e.value.code() == grpc.StatusCode.INTERNAL and "damaged" in e.value.details()
        r = await http.get(link.url)
        assert r.status_code == 500 and r.json()["code"] == grpc.StatusCode.INTERNAL.value[0], r.text

    await stub.DeleteFile(files_pb2.DeleteFileRequest(file_id=f.id), metadata=admin)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{TENANT}/")
    assert listed.get("KeyCount", 0) == 0
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetFile(files_pb2.GetFileRequest(file_id=f.id), metadata=admin)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
