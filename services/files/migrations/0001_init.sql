-- Metadata of the files whose bytes are in the object store (services/files/blobs.py).
CREATE SCHEMA IF NOT EXISTS files;

CREATE TABLE files.file (
    id           uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    site_id      text        NOT NULL DEFAULT '',
    kind         smallint    NOT NULL CHECK (kind BETWEEN 1 AND 2),
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    content_type text        NOT NULL,
    size_bytes   bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256       text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    blob_path    text        NOT NULL,
    created_by   text        NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX file_tenant_idx ON files.file (tenant_id, create_time DESC);
CREATE INDEX file_site_idx ON files.file (site_id, create_time DESC) WHERE site_id <> '';
