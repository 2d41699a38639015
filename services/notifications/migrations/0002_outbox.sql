-- The notifier's outbox (mesh/outbox.py, outbox_ddl("notifications")): a notification that is
-- dead-lettered is marked DEAD and its dead letter (an Envelope with the Notification, for
-- dlq.EVENTS.<durable> on the DLQ stream) written in one transaction; the notifier's relay
-- publishes it, so a NATS outage delays a dead letter but never loses one (docs/notifications.md).

CREATE TABLE IF NOT EXISTS notifications.outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    envelope     bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON notifications.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON notifications.outbox (published_at) WHERE published_at IS NOT NULL;
