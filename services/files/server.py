"""Wiring of the Files service (port 7007): `python -m services.files.server`. The object store
and the upload limit come from mesh.config.FilesSettings (docs/files.md)."""

from __future__ import annotations

from towerco.files.v1 import files_pb2_grpc

from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.config import FilesSettings, load
from mesh.migrate import migrate
from services.files.blobs import BlobStore
from services.files.servicer import FilesServicer

SERVICE = "files"
FULL_NAME = "towerco.files.v1.FilesService"


async def setup(rt: Runtime) -> list[ServiceSpec]:
    await migrate(rt.settings.database_url, components=["files"])
    cfg = load(FilesSettings)
    blobs = BlobStore.open(cfg.store_url, rt.settings.home / "files")
    servicer = FilesServicer(rt.pool, blobs, rt.settings, max_bytes=cfg.max_bytes)
    return [ServiceSpec(FULL_NAME, servicer, files_pb2_grpc.add_FilesServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup, nats=False)
