"""SQL of the files schema. `tenant` scopes every read: None for staff, else that tenant only."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

COLUMNS = "id, tenant_id, site_id, kind, name, content_type, size_bytes, sha256, blob_path, created_by, create_time"


async def insert_file(conn: asyncpg.Connection, *, file_id: str, tenant_id: str, site_id: str, kind: int, name: str,
                      content_type: str, size_bytes: int, sha256: str, blob_path: str,
                      created_by: str, idempotency_key: str = "") -> dict[str, Any] | None:
    """Store a file's row; None when `idempotency_key` is already the tenant's (nothing stored)."""
    row = await conn.fetchrow(
        f"INSERT INTO files.file ({COLUMNS}, idempotency_key) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), NULLIF($11, '')) "
        f"ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING {COLUMNS}",
        uuid.UUID(file_id), tenant_id, site_id, kind, name, content_type, size_bytes, sha256, blob_path, created_by,
        idempotency_key)
    return dict(row) if row else None


async def file_by_key(conn: asyncpg.Connection, *, tenant_id: str, idempotency_key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM files.file WHERE tenant_id = $1 AND idempotency_key = $2", tenant_id, idempotency_key)
    return dict(row) if row else None


async def get_file(conn: asyncpg.Connection, *, file_id: str, tenant: str | None) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM files.file WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        uuid.UUID(file_id), tenant)
    return dict(row) if row else None


async def list_files(conn: asyncpg.Connection, *, tenant: str | None, tenant_id: str, site_id: str, kind: int,
                     limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM files.file WHERE ($1::text IS NULL OR tenant_id = $1) "
        "AND ($2 = '' OR tenant_id = $2) AND ($3 = '' OR site_id = $3) AND ($4 = 0 OR kind = $4) "
        "ORDER BY create_time DESC, id LIMIT $5", tenant, tenant_id, site_id, kind, limit)
    return [dict(r) for r in rows]


async def delete_file(conn: asyncpg.Connection, *, file_id: str, tenant: str | None) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"DELETE FROM files.file WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) RETURNING {COLUMNS}",
        uuid.UUID(file_id), tenant)
    return dict(row) if row else None
