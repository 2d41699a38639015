"""The object store behind the Files service, through obstore: the local filesystem under
<TOWERCO_HOME>/files by default, or any store obstore opens from a URL (s3://bucket/prefix with
the usual AWS_* variables, gs://, az://, file:///path) when TOWERCO_FILES_STORE_URL is set."""

from __future__ import annotations

from pathlib import Path

import obstore
from obstore.store import LocalStore, from_url


class BlobStore:
    def __init__(self, store: object) -> None:
        self.store = store

    @classmethod
    def open(cls, url: str, default_dir: Path) -> BlobStore:
        if url:
            return cls(from_url(url))
        default_dir.mkdir(parents=True, exist_ok=True)
        return cls(LocalStore(prefix=str(default_dir.resolve()), mkdir=True))

    async def put(self, path: str, data: bytes) -> None:
        await obstore.put_async(self.store, path, data)

    async def get(self, path: str) -> bytes | None:
        """The bytes at path; None when there are none."""
        try:
            result = await obstore.get_async(self.store, path)
        except FileNotFoundError:
            return None
        return bytes(await result.bytes_async())

    async def delete(self, path: str) -> None:
        try:
            await obstore.delete_async(self.store, path)
        except FileNotFoundError:
            pass
