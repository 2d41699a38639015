-- The noc schema: alarms (raw signals), incidents (correlated problems), the alarm -> incident
-- decisions, the audit timeline and the transactional outbox of towerco.noc.incident.* events.
-- Correlation state lives in these rows (the active and recent alarms and incidents of a site
-- are what the correlator reads under the site's advisory lock), so a restart loses nothing.
-- Site facts (region, tenancies, windows) come from the Sites service; nothing here reads the
-- sites schema.

CREATE SCHEMA IF NOT EXISTS noc;

-- One row per alarm (a dedup key's run: repeats within the dedup window and re-raises within
-- the flapping window are the same alarm, `count` and `transitions` grow).
CREATE TABLE noc.alarm (
    id               uuid PRIMARY KEY,
    source           text NOT NULL,
    source_alarm_id  text NOT NULL,              -- the first raise's id at its source
    site_id          text NOT NULL,
    region           text NOT NULL DEFAULT '',
    alarm_type       smallint NOT NULL,
    probable_cause   text NOT NULL,
    specific_problem text NOT NULL DEFAULT '',
    severity         smallint NOT NULL,          -- X.733 perceived severity (PerceivedSeverity)
    dedup_key        text NOT NULL,
    clear_key        text NOT NULL,
    state            smallint NOT NULL,          -- 1 active, 2 cleared
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    clear_time       timestamptz,
    count            bigint NOT NULL DEFAULT 1,
    incident_id      uuid,
    tenant_ids       text[] NOT NULL DEFAULT '{}',
    tenant_id        text NOT NULL DEFAULT '',
    text             text NOT NULL DEFAULT '',
    suppressed       boolean NOT NULL DEFAULT false,
    transitions      bigint NOT NULL DEFAULT 0,
    flap_times       double precision[] NOT NULL DEFAULT '{}'  -- recent transition times (epoch s)
);
CREATE INDEX alarm_site_key_idx ON noc.alarm (site_id, dedup_key, last_seen DESC);
CREATE INDEX alarm_active_idx ON noc.alarm (site_id) WHERE state = 1;
CREATE INDEX alarm_incident_idx ON noc.alarm (incident_id);
CREATE INDEX alarm_first_seen_idx ON noc.alarm (first_seen DESC, id DESC);

-- Every (source, source_alarm_id) ever received, for idempotency: PostAlarm's duplicate check
-- and the anomaly consumer's redelivery check (a signal seen here is not applied twice).
CREATE TABLE noc.alarm_source (
    source          text NOT NULL,
    source_alarm_id text NOT NULL,
    alarm_id        uuid,
    content_hash    text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, source_alarm_id)
);

CREATE TABLE noc.incident (
    id               uuid PRIMARY KEY,
    title            text NOT NULL,
    kind             smallint NOT NULL,
    severity         smallint NOT NULL,
    state            smallint NOT NULL,          -- IncidentState
    site_id          text NOT NULL DEFAULT '',   -- the site ('' for a regional parent)
    site_ids         text[] NOT NULL DEFAULT '{}',
    region           text NOT NULL DEFAULT '',
    root_code        text NOT NULL DEFAULT '',
    root_summary     text NOT NULL DEFAULT '',
    chain            text[] NOT NULL DEFAULT '{}',
    impacts          jsonb NOT NULL DEFAULT '[]'::jsonb,
    tenant_ids       text[] NOT NULL DEFAULT '{}',
    parent_id        uuid,
    alarm_count      bigint NOT NULL DEFAULT 0,
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    assignee         text NOT NULL DEFAULT '',
    acknowledge_time timestamptz,
    acknowledged_by  text NOT NULL DEFAULT '',
    resolve_time     timestamptz,
    close_time       timestamptz,
    suppressed       boolean NOT NULL DEFAULT false,
    suppressed_until timestamptz,                -- the calendar window's end while suppressed
    flapping         boolean NOT NULL DEFAULT false,
    flap_last        timestamptz,                -- the latest alarm transition (flapping hysteresis)
    recurrence_of    uuid,
    reopen_count     integer NOT NULL DEFAULT 0,
    merged_into      uuid,
    clear_since      timestamptz,                -- every alarm cleared since (auto-resolve timer)
    mains_time       timestamptz,                -- first mains failure (regional correlation)
    update_time      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incident_site_idx ON noc.incident (site_id, kind, last_seen DESC);
CREATE INDEX incident_first_seen_idx ON noc.incident (first_seen DESC, id DESC);
CREATE INDEX incident_parent_idx ON noc.incident (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX incident_region_active_idx ON noc.incident (region, kind) WHERE state IN (1, 2);
CREATE INDEX incident_tenants_idx ON noc.incident USING gin (tenant_ids);
-- what the periodic task looks for: auto-resolve timers, window ends, flapping hysteresis
CREATE INDEX incident_due_idx ON noc.incident (id)
    WHERE state IN (1, 2) AND (clear_since IS NOT NULL OR suppressed OR flapping OR kind = 7);

-- Which alarm joined which incident, when, and by which rule (kept across merges and splits).
CREATE TABLE noc.incident_alarm (
    incident_id uuid NOT NULL,
    alarm_id    uuid NOT NULL,
    joined_at   timestamptz NOT NULL,
    rule        text NOT NULL,
    PRIMARY KEY (incident_id, alarm_id)
);

-- The audit timeline: every transition, comment, assignment and correlation decision.
CREATE TABLE noc.timeline (
    id                  bigserial PRIMARY KEY,
    incident_id         uuid NOT NULL,
    time                timestamptz NOT NULL,
    actor               text NOT NULL,
    kind                smallint NOT NULL,       -- TimelineKind
    text                text NOT NULL DEFAULT '',
    alarm_id            text NOT NULL DEFAULT '',
    related_incident_id text NOT NULL DEFAULT ''
);
CREATE INDEX timeline_incident_idx ON noc.timeline (incident_id, id);

CREATE TABLE IF NOT EXISTS noc.outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    envelope     bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON noc.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON noc.outbox (published_at) WHERE published_at IS NOT NULL;
