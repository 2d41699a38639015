"""FilesService handlers: check the caller and the upload (domain), keep bytes in the object store
(blobs) and metadata in the files schema (store), map to protobuf."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
from google.api import httpbody_pb2
from towerco.files.v1 import files_pb2, files_pb2_grpc

from mesh.auth import Identity, current_identity, mint_token, require_role, tenant_scope
from mesh.config import Settings
from mesh.errors import (
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.files import domain, store
from services.files.blobs import BlobStore

READ_ROLES = ("viewer", "tenant_viewer")
UPLOAD_ROLES = ("admin", "noc_operator", "service")
DELETE_ROLES = ("admin", "service")


def file_pb(row: dict[str, Any]) -> files_pb2.File:
    f = files_pb2.File(id=str(row["id"]), tenant_id=row["tenant_id"], site_id=row["site_id"], kind=row["kind"],
                       name=row["name"], content_type=row["content_type"], size_bytes=row["size_bytes"],
                       sha256=row["sha256"], created_by=row["created_by"])
    f.create_time.FromDatetime(row["create_time"])
    return f


def _scope(identity: Identity) -> str | None:
    return tenant_scope(identity)


def _file_id(value: str) -> str:
    if not domain.is_file_id(value):
        raise InvalidArgument("invalid file id", [FieldViolation("file_id", "must be a file id (a UUID)")])
    return value


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"file {file_id} not found", "file", file_id)


class FilesServicer(files_pb2_grpc.FilesServiceServicer):
    def __init__(self, pool: asyncpg.Pool, blobs: BlobStore, settings: Settings, *,
                 max_bytes: int = domain.DEFAULT_MAX_BYTES) -> None:
        self.pool = pool
        self.blobs = blobs
        self.settings = settings
        self.max_bytes = max_bytes

    async def _get(self, file_id: str, identity: Identity) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await store.get_file(conn, file_id=_file_id(file_id), tenant=_scope(identity))
        if row is None:
            raise _not_found(file_id)
        return row

    async def UploadFile(self, request, context):
        identity = require_role(*UPLOAD_ROLES)
        tenant_scope(identity, request.tenant_id)  # another tenant: NOT_FOUND
        problems = domain.check_upload(request.content_type, request.content, max_bytes=self.max_bytes)
        if request.kind == files_pb2.FILE_KIND_SITE_DOCUMENT and not request.site_id:
            problems.append(("site_id", "is required for a site document"))
        if not request.kind:
            problems.append(("kind", "is required"))
        if problems:
            raise InvalidArgument("file refused", [FieldViolation(f, d) for f, d in problems])
        key = request.idempotency_key
        first: dict[str, Any] | None = None
        if key:  # a replay: the first upload under the key is the answer (checked again after the insert)
            async with self.pool.acquire() as conn:
                first = await store.file_by_key(conn, tenant_id=request.tenant_id, idempotency_key=key)
            if first is not None:
                return self._replay(first, request)
        file_id = str(uuid.uuid4())
        path = domain.blob_path(request.tenant_id, file_id)
        await self.blobs.put(path, request.content)  # bytes first: a row never points at nothing
        async with self.pool.acquire() as conn:
            row = await store.insert_file(
                conn, file_id=file_id, tenant_id=request.tenant_id, site_id=request.site_id, kind=request.kind,
                name=request.name, content_type=domain.normalise_type(request.content_type),
                size_bytes=len(request.content), sha256=domain.sha256_hex(request.content), blob_path=path,
                created_by=identity.subject, idempotency_key=key)
            if row is None:  # a concurrent upload with the same key won the race: answer its file
                first = await store.file_by_key(conn, tenant_id=request.tenant_id, idempotency_key=key)
        if row is None:
            await self.blobs.delete(path)
            if first is None:  # deleted between the two statements
                raise Internal("the upload with this idempotency key vanished; retry")
            return self._replay(first, request)
        return files_pb2.UploadFileResponse(file=file_pb(row))

    @staticmethod
    def _replay(first: dict[str, Any], request: files_pb2.UploadFileRequest) -> files_pb2.UploadFileResponse:
        """The answer to an upload whose key the tenant already used: the first file, when the
        request names the same file (kind, site, name, type); another file under a used key is
        refused, so a key cannot be taken over by a different upload."""
        same = (first["kind"], first["site_id"], first["name"], first["content_type"]) == (
            request.kind, request.site_id, request.name, domain.normalise_type(request.content_type))
        if not same:
            raise FailedPrecondition(f"idempotency key {request.idempotency_key!r} was used for another file "
                                     f"({first['name']})", "IDEMPOTENCY_KEY_REUSED")
        return files_pb2.UploadFileResponse(file=file_pb(first), replayed=True)

    async def GetFile(self, request, context):
        identity = require_role(*READ_ROLES)
        return files_pb2.GetFileResponse(file=file_pb(await self._get(request.file_id, identity)))

    async def ListFiles(self, request, context):
        identity = require_role(*READ_ROLES)
        async with self.pool.acquire() as conn:
            rows = await store.list_files(conn, tenant=_scope(identity), tenant_id=request.tenant_id,
                                          site_id=request.site_id, kind=request.kind,
                                          limit=request.limit or domain.DEFAULT_LIST)
        return files_pb2.ListFilesResponse(files=[file_pb(r) for r in rows])

    async def DeleteFile(self, request, context):
        identity = require_role(*READ_ROLES, *DELETE_ROLES)
        if not identity.has_role(*DELETE_ROLES):
            await self._get(request.file_id, identity)  # a file it may not see: NOT_FOUND, not 403
            raise PermissionDenied(f"deleting a file needs the {' or '.join(DELETE_ROLES)} role")
        async with self.pool.acquire() as conn:
            row = await store.delete_file(conn, file_id=_file_id(request.file_id), tenant=_scope(identity))
        if row is None:
            raise _not_found(request.file_id)
        await self.blobs.delete(row["blob_path"])
        return files_pb2.DeleteFileResponse()

    async def CreateDownloadLink(self, request, context):
        identity = require_role(*READ_ROLES)
        row = await self._get(request.file_id, identity)
        ttl = domain.link_ttl(request.ttl_seconds)
        token = mint_token(subject=domain.link_subject(str(row["id"])), tenant=row["tenant_id"],
                           roles=[domain.LINK_ROLE], ttl_s=ttl, settings=self.settings)
        resp = files_pb2.CreateDownloadLinkResponse(
            url=f"/api/v1/files/{row['id']}:download?access_token={quote(token)}", token=token)
        resp.expire_time.FromSeconds(int(time.time()) + ttl)
        return resp

    async def DownloadFile(self, request, context):
        identity = current_identity()
        file_id = _file_id(request.file_id)
        if domain.LINK_ROLE in identity.roles and not identity.has_role(*READ_ROLES):
            if not domain.link_allows(identity.subject, identity.roles, file_id):
                raise _not_found(file_id)  # a link opens its own file only
        else:
            require_role(*READ_ROLES)
        row = await self._get(file_id, identity)
        data = await self.blobs.get(row["blob_path"])
        if data is None or domain.sha256_hex(data) != row["sha256"]:
            raise Internal("the stored content is missing or damaged")
        return files_pb2.DownloadFileResponse(
            body=httpbody_pb2.HttpBody(content_type=row["content_type"], data=data), file=file_pb(row))
