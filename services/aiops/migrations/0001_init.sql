-- The aiops schema: one domain, owned by the AIOps service and its aiops_engine worker (the
-- worker writes detections, state and models; the service reads them and writes feedback).
-- Reference data (site, window) is a copy the worker keeps from the Sites service's API and its
-- towerco.sites.* events; nothing here reads the sites schema.

CREATE SCHEMA IF NOT EXISTS aiops;

CREATE TABLE aiops.site (
    site_id          text PRIMARY KEY,
    region           text NOT NULL DEFAULT '',
    tenant_ids       text[] NOT NULL DEFAULT '{}',
    has_grid         boolean NOT NULL DEFAULT true,
    dg_capacity_kva  double precision NOT NULL DEFAULT 0,
    dg_start_delay_s double precision NOT NULL DEFAULT 0,
    battery_bank_ah  double precision NOT NULL DEFAULT 0,
    fuel_tank_l      double precision NOT NULL DEFAULT 0,
    dc_min_v         double precision NOT NULL DEFAULT 43,
    dc_max_v         double precision NOT NULL DEFAULT 60,
    update_time      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE aiops.tenancy (
    tenancy_id text PRIMARY KEY,
    site_id    text NOT NULL,
    tenant_id  text NOT NULL,
    dc_min_v   double precision NOT NULL DEFAULT 43,
    dc_max_v   double precision NOT NULL DEFAULT 60
);
CREATE INDEX tenancy_site_idx ON aiops.tenancy (site_id);

CREATE TABLE aiops.calendar_window (
    window_id  text PRIMARY KEY,
    site_id    text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time   timestamptz NOT NULL,
    category   smallint NOT NULL
);
CREATE INDEX calendar_window_site_idx ON aiops.calendar_window (site_id);

-- One row per anomaly. `key` names the site's detector instance (detector|metric|tenant); at
-- most one open anomaly per site and key, and the id is derived from site, key and onset, so a
-- redelivered batch can never store one twice.
CREATE TABLE aiops.anomaly (
    id               uuid PRIMARY KEY,
    site_id          text NOT NULL,
    region           text NOT NULL DEFAULT '',
    tenant_ids       text[] NOT NULL DEFAULT '{}',
    key              text NOT NULL,
    detector         text NOT NULL,
    detector_version text NOT NULL,
    layer            smallint NOT NULL,
    metrics          text[] NOT NULL DEFAULT '{}',
    tenant_id        text NOT NULL DEFAULT '',
    score            double precision NOT NULL,
    severity         smallint NOT NULL,
    state            smallint NOT NULL,              -- 1 open, 2 cleared
    start_time       timestamptz NOT NULL,
    detect_time      timestamptz NOT NULL,
    end_time         timestamptz,
    explanation      bytea NOT NULL,                 -- towerco.aiops.v1.Explanation
    feedback         smallint NOT NULL DEFAULT 0,
    feedback_note    text NOT NULL DEFAULT '',
    update_time      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX anomaly_open_key_idx ON aiops.anomaly (site_id, key) WHERE state = 1;
CREATE INDEX anomaly_start_idx ON aiops.anomaly (start_time DESC, id DESC);
CREATE INDEX anomaly_site_idx ON aiops.anomaly (site_id, start_time DESC);
CREATE INDEX anomaly_tenants_idx ON aiops.anomaly USING gin (tenant_ids);

CREATE TABLE aiops.prediction (
    id            uuid PRIMARY KEY,
    site_id       text NOT NULL,
    region        text NOT NULL DEFAULT '',
    tenant_ids    text[] NOT NULL DEFAULT '{}',
    kind          smallint NOT NULL,
    detector      text NOT NULL,
    predict_time  timestamptz NOT NULL,
    expected_time timestamptz NOT NULL,
    confidence    double precision NOT NULL,
    inputs        bytea NOT NULL,                    -- towerco.aiops.v1.Explanation (features only)
    outcome       smallint NOT NULL DEFAULT 1,       -- 1 pending, 2 right, 3 wrong, 4 averted
    outcome_time  timestamptz,
    actual_time   timestamptz
);
CREATE INDEX prediction_time_idx ON aiops.prediction (predict_time DESC, id DESC);
CREATE INDEX prediction_tenants_idx ON aiops.prediction USING gin (tenant_ids);

-- The detectors' memory of each site (baselines, timers, open keys), JSON; written in the same
-- transaction as the anomalies it produced and the message ids it consumed.
CREATE TABLE aiops.site_state (
    site_id     text PRIMARY KEY,
    state       bytea NOT NULL,
    last_sample timestamptz,
    update_time timestamptz NOT NULL DEFAULT now()
);

-- TELEMETRY messages already folded in ("<batch_id>:<partition>"), so a redelivery is skipped.
CREATE TABLE aiops.consumed (
    batch_key   text PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consumed_at_idx ON aiops.consumed (consumed_at);

-- Multivariate models per site class; the newest version of a class is the active one.
CREATE TABLE aiops.model (
    site_class  text NOT NULL,
    version     bigint NOT NULL,
    algorithm   text NOT NULL,
    features    text[] NOT NULL,
    samples     bigint NOT NULL,
    trained_at  timestamptz NOT NULL DEFAULT now(),
    blob        bytea NOT NULL,
    PRIMARY KEY (site_class, version)
);

-- Operator feedback (RecordFeedback), and what the engine makes of it per site and detector key:
-- a threshold factor (statistical/model detectors) or a suppression (rules) until reviewed.
CREATE TABLE aiops.feedback (
    id          bigserial PRIMARY KEY,
    anomaly_id  uuid NOT NULL,
    kind        smallint NOT NULL,
    note        text NOT NULL DEFAULT '',
    subject     text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE aiops.adjustment (
    site_id     text NOT NULL,
    key         text NOT NULL,                       -- detector, or detector|metric
    factor      double precision NOT NULL DEFAULT 1,
    suppressed  boolean NOT NULL DEFAULT false,
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, key)
);

CREATE TABLE IF NOT EXISTS aiops.outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    envelope     bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON aiops.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON aiops.outbox (published_at) WHERE published_at IS NOT NULL;

