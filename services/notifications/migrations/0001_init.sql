-- The notifications schema: one domain, owned by the Notifications service (configuration:
-- channels, routes, escalation policies, schedules, silences; reads of the delivery log) and its
-- notifier worker (incident copies, groups, escalations, notifications and their attempts). Every
-- timer is a row with a due time, so a killed notifier loses none (docs/notifications.md).

CREATE SCHEMA IF NOT EXISTS notifications;

-- configuration (written by the service)

CREATE TABLE notifications.channel (
    id             uuid PRIMARY KEY,
    tenant_id      text NOT NULL DEFAULT '',          -- '' = the towerco's own (internal)
    name           text NOT NULL,
    kind           smallint NOT NULL,                  -- ChannelKind
    webhook_url    text NOT NULL DEFAULT '',
    signing_secret text NOT NULL DEFAULT '',           -- write-only: never returned by the API
    email_address  text NOT NULL DEFAULT '',
    create_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_tenant_idx ON notifications.channel (tenant_id, name, id);

CREATE TABLE notifications.route (
    id          uuid PRIMARY KEY,
    position    integer NOT NULL,
    name        text NOT NULL,
    body        bytea NOT NULL,                        -- the Route message
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications.escalation_policy (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    body        bytea NOT NULL,                        -- the EscalationPolicy message
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications.schedule (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    body        bytea NOT NULL,                        -- the Schedule message (with its overrides)
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications.silence (
    id          uuid PRIMARY KEY,
    body        bytea NOT NULL,                        -- the Silence message
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX silence_end_idx ON notifications.silence (end_time);

-- the notifier's state

CREATE TABLE notifications.processed_event (
    event_id     text PRIMARY KEY,                     -- Envelope.id: a redelivered event is skipped
    process_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications.incident (
    id          text PRIMARY KEY,
    body        bytea NOT NULL,                        -- the latest towerco.noc.v1.Incident seen
    update_time timestamptz NOT NULL                   -- its update_time (older events are ignored)
);

CREATE TABLE notifications.alert_group (
    route_id   uuid NOT NULL,
    group_key  text NOT NULL,
    created    timestamptz NOT NULL,
    flushed    timestamptz,
    sent       timestamptz,
    changed    boolean NOT NULL DEFAULT true,
    firing     boolean NOT NULL DEFAULT true,
    next_flush timestamptz,                            -- the timer: NULL = nothing left to say
    PRIMARY KEY (route_id, group_key)
);
CREATE INDEX alert_group_due_idx ON notifications.alert_group (next_flush) WHERE next_flush IS NOT NULL;

CREATE TABLE notifications.group_member (
    route_id    uuid NOT NULL,
    group_key   text NOT NULL,
    incident_id text NOT NULL,
    firing      boolean NOT NULL,
    PRIMARY KEY (route_id, group_key, incident_id)
);

CREATE TABLE notifications.escalation (
    incident_id text NOT NULL,
    route_id    uuid NOT NULL,
    policy_id   uuid NOT NULL,
    step        integer NOT NULL DEFAULT 0,            -- the next step to run (0-based)
    round       integer NOT NULL DEFAULT 0,
    due         timestamptz,                           -- the timer: NULL = stopped or exhausted
    state       smallint NOT NULL DEFAULT 1,           -- 1 active, 2 stopped (ack/resolve), 3 exhausted
    paged       uuid[] NOT NULL DEFAULT '{}',          -- channels paged so far (the stop notice goes there)
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, route_id)
);
CREATE INDEX escalation_due_idx ON notifications.escalation (due) WHERE due IS NOT NULL;

CREATE TABLE notifications.notification (
    id               uuid PRIMARY KEY,
    channel_id       uuid NOT NULL,
    tenant_id        text NOT NULL DEFAULT '',
    kind             smallint NOT NULL,                -- NotificationKind
    route_id         uuid,
    group_key        text NOT NULL DEFAULT '',
    incident_ids     text[] NOT NULL DEFAULT '{}',
    escalation_step  integer NOT NULL DEFAULT 0,
    escalation_round integer NOT NULL DEFAULT 0,
    summary          text NOT NULL DEFAULT '',
    payload          jsonb NOT NULL,                   -- the body, frozen at creation: every attempt sends it
    state            smallint NOT NULL DEFAULT 1,      -- DeliveryState
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text NOT NULL DEFAULT '',
    create_time      timestamptz NOT NULL DEFAULT now(),
    due              timestamptz NOT NULL DEFAULT now(),   -- the next attempt, while pending
    lease_until      timestamptz,                      -- a claimed attempt not finished by then is retried
    finish_time      timestamptz
);
CREATE INDEX notification_due_idx ON notifications.notification (due) WHERE state = 1;
CREATE INDEX notification_lease_idx ON notifications.notification (lease_until) WHERE state = 2;
CREATE INDEX notification_list_idx ON notifications.notification (create_time DESC, id DESC);
CREATE INDEX notification_channel_idx ON notifications.notification (channel_id, create_time DESC);
CREATE INDEX notification_incidents_idx ON notifications.notification USING gin (incident_ids);

CREATE TABLE notifications.delivery_attempt (
    notification_id uuid NOT NULL REFERENCES notifications.notification (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,                  -- (notification, attempt) is claimed once
    start_time      timestamptz NOT NULL,
    response_code   integer NOT NULL DEFAULT 0,
    latency_ms      double precision NOT NULL DEFAULT 0,
    error           text NOT NULL DEFAULT '',
    ok              boolean,                           -- NULL: the process died during the attempt
    PRIMARY KEY (notification_id, attempt)
);
