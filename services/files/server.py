"""Wiring of the Files service (port 7007): `python -m services.files.server`.

Environment (all optional): TOWERCO_FILES_STORE_URL (an obstore URL such as s3://bucket/prefix;
default: the local folder <TOWERCO_HOME>/files), TOWERCO_FILES_MAX_BYTES (3 MiB).
"""

from __future__ import annotations

import os

from towerco.files.v1 import files_pb2_grpc

from mesh.bootstrap import Runtime, ServiceSpec, main
from mesh.migrate import migrate
from services.files import domain
from services.files.blobs import BlobStore
from services.files.servicer import FilesServicer

SERVICE = "files"
FULL_NAME = "towerco.files.v1.FilesService"


def max_bytes_from_env() -> int:
    raw = os.environ.get("TOWERCO_FILES_MAX_BYTES", "")
    if not raw:
        return domain.DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"TOWERCO_FILES_MAX_BYTES must be an integer, got {raw!r}") from exc
    if value < 1:
        raise ValueError("TOWERCO_FILES_MAX_BYTES must be at least 1")
    return value


async def setup(rt: Runtime) -> list[ServiceSpec]:
    await migrate(rt.settings.database_url, components=["files"])
    blobs = BlobStore.open(os.environ.get("TOWERCO_FILES_STORE_URL", ""), rt.settings.home / "files")
    servicer = FilesServicer(rt.pool, blobs, rt.settings, max_bytes=max_bytes_from_env())
    return [ServiceSpec(FULL_NAME, servicer, files_pb2_grpc.add_FilesServiceServicer_to_server)]


if __name__ == "__main__":
    main(SERVICE, setup, nats=False)
