-- The kpi schema, owned by the kpi_calculator worker and read by the KPI service (one domain).
-- Reference data (site, tenancy, calendar_window) is a copy the worker keeps from the Sites
-- service's API and towerco.sites.* events; the KPI side never reads the sites schema.
-- Minute codes of the *_map / minutes columns are documented in docs/kpis.md.

CREATE SCHEMA IF NOT EXISTS kpi;

CREATE TABLE kpi.site (
    site_id          text PRIMARY KEY,
    region           text NOT NULL DEFAULT '',
    dg_capacity_kva  double precision NOT NULL DEFAULT 0,
    dg_start_delay_s double precision NOT NULL DEFAULT 0,
    battery_bank_ah  double precision NOT NULL DEFAULT 0,
    update_time      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX site_region_idx ON kpi.site (region, site_id);

CREATE TABLE kpi.tenancy (
    tenancy_id  text PRIMARY KEY,
    site_id     text NOT NULL,
    tenant_id   text NOT NULL,
    sla_target  double precision NOT NULL DEFAULT 0,
    dc_min_v    double precision NOT NULL DEFAULT 43,
    dc_max_v    double precision NOT NULL DEFAULT 60,
    update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenancy_site_idx ON kpi.tenancy (site_id);
CREATE INDEX tenancy_tenant_idx ON kpi.tenancy (tenant_id, site_id);

CREATE TABLE kpi.calendar_window (
    window_id  text PRIMARY KEY,
    site_id    text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time   timestamptz NOT NULL,
    category   smallint NOT NULL,
    tenant_ids text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX calendar_window_site_idx ON kpi.calendar_window (site_id, start_time);

-- Per-tenant availability policy (KpiService.UpdateAvailabilityPolicy); no row = the default.
CREATE TABLE kpi.policy (
    tenant_id          text PRIMARY KEY,
    unknown_policy     smallint NOT NULL DEFAULT 1 CHECK (unknown_policy BETWEEN 1 AND 3),
    min_outage_minutes integer NOT NULL DEFAULT 0 CHECK (min_outage_minutes BETWEEN 0 AND 1440),
    update_time        timestamptz NOT NULL DEFAULT now()
);

-- Mergeable per-minute sample aggregates: {"<metric>[:<tenant>]": [n, sum, min, max, last_t, last_v]}.
CREATE TABLE kpi.site_minute (
    site_id text NOT NULL,
    minute  timestamptz NOT NULL,
    aggs    jsonb NOT NULL,
    PRIMARY KEY (site_id, minute)
);

-- TELEMETRY messages already folded in ("<batch_id>:<partition>"), so a redelivery is skipped.
CREATE TABLE kpi.consumed (
    batch_key   text PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consumed_at_idx ON kpi.consumed (consumed_at);

CREATE TABLE kpi.site_hour (
    site_id            text NOT NULL,
    hour               timestamptz NOT NULL,
    grid_map           text NOT NULL,
    power_map          text NOT NULL,
    dg_map             text NOT NULL,
    source_map         text NOT NULL,
    power_known        smallint NOT NULL,
    power_ok           smallint NOT NULL,
    grid_known         smallint NOT NULL,
    grid_present       smallint NOT NULL,
    dg_run_minutes     smallint NOT NULL,
    dg_starts          integer NOT NULL DEFAULT 0,
    dg_fail_to_start   integer NOT NULL DEFAULT 0,
    fuel_consumed_l    double precision NOT NULL DEFAULT 0,
    fuel_expected_l    double precision NOT NULL DEFAULT 0,
    fuel_drop_dg_off_l double precision NOT NULL DEFAULT 0,
    refuel_l           double precision NOT NULL DEFAULT 0,
    refuels            integer NOT NULL DEFAULT 0,
    energy_grid_kwh    double precision NOT NULL DEFAULT 0,
    energy_dg_kwh      double precision NOT NULL DEFAULT 0,
    energy_battery_kwh double precision NOT NULL DEFAULT 0,
    soc_pct            double precision,
    load_a             double precision,
    soc_time           timestamptz,
    revision           integer NOT NULL DEFAULT 1,
    published_revision integer NOT NULL DEFAULT 0,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, hour)
);
CREATE INDEX site_hour_unpublished_idx ON kpi.site_hour (hour) WHERE revision > published_revision;

-- One row per tenancy-hour: the 60 minute codes and their counts (for fast whole-hour sums).
CREATE TABLE kpi.tenancy_hour (
    tenant_id text NOT NULL,
    site_id   text NOT NULL,
    hour      timestamptz NOT NULL,
    minutes   text NOT NULL,
    up        smallint NOT NULL,  -- U
    ignored   smallint NOT NULL,  -- u
    dc_low    smallint NOT NULL,  -- L
    dc_high   smallint NOT NULL,  -- H
    link_down smallint NOT NULL,  -- N
    unknown   smallint NOT NULL,  -- ?
    ex_pm     smallint NOT NULL,  -- P
    ex_fm     smallint NOT NULL,  -- F
    ex_tc     smallint NOT NULL,  -- T
    ex_ad     smallint NOT NULL,  -- A
    un_pm     smallint NOT NULL,  -- p
    un_fm     smallint NOT NULL,  -- f
    un_tc     smallint NOT NULL,  -- t
    un_ad     smallint NOT NULL,  -- a
    PRIMARY KEY (tenant_id, hour, site_id)
);
CREATE INDEX tenancy_hour_site_idx ON kpi.tenancy_hour (site_id, hour);

CREATE TABLE IF NOT EXISTS kpi.outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    envelope     bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON kpi.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON kpi.outbox (published_at) WHERE published_at IS NOT NULL;

