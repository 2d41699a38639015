-- An upload may carry an idempotency key: one file per tenant and key, so a retried or replayed
-- upload (the bi_engine's scheduled exports after a restart) answers the first file.
ALTER TABLE files.file ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX file_idempotency_idx ON files.file (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
