-- The Sites service's register: sites (with their power configuration), tenants, tenancies and
-- site calendar windows, plus the transactional outbox its events leave through.
-- Enum-like columns hold the lower-case proto enum name without its prefix (e.g. 'greenfield').

CREATE SCHEMA IF NOT EXISTS sites;

CREATE TABLE sites.sites (
    id                    text PRIMARY KEY CHECK (id ~ '^[A-Z0-9][A-Z0-9-]{2,31}$'),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    region                text NOT NULL CHECK (length(region) BETWEEN 1 AND 64),
    latitude              double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude             double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    type                  text NOT NULL DEFAULT 'unspecified',
    status                text NOT NULL DEFAULT 'active',
    -- power configuration
    grid                  text NOT NULL DEFAULT 'unspecified',
    dg_capacity_kva       double precision NOT NULL DEFAULT 0 CHECK (dg_capacity_kva >= 0),
    fuel_tank_l           double precision NOT NULL DEFAULT 0 CHECK (fuel_tank_l >= 0),
    battery_bank_ah       double precision NOT NULL DEFAULT 0 CHECK (battery_bank_ah >= 0),
    battery_voltage_v     double precision NOT NULL DEFAULT 0 CHECK (battery_voltage_v >= 0),
    solar_kwp             double precision NOT NULL DEFAULT 0 CHECK (solar_kwp >= 0),
    rectifier_capacity_kw double precision NOT NULL DEFAULT 0 CHECK (rectifier_capacity_kw >= 0),
    dg_start_delay_s      double precision NOT NULL DEFAULT 0 CHECK (dg_start_delay_s >= 0),
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now()
);
-- list filters; every list is ordered by id, so filtered indexes end with id for keyset pages
CREATE INDEX sites_region_idx ON sites.sites (region, id);
CREATE INDEX sites_status_idx ON sites.sites (status, id);
CREATE INDEX sites_lat_lon_idx ON sites.sites (latitude, longitude);

CREATE TABLE sites.tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9-]{1,31}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sites.tenancies (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id                 text NOT NULL REFERENCES sites.sites (id) ON DELETE CASCADE,
    -- a tenant cannot be deleted while it still has tenancies
    tenant_id               text NOT NULL REFERENCES sites.tenants (id) ON DELETE RESTRICT,
    sla_availability_target double precision NOT NULL DEFAULT 0
                            CHECK (sla_availability_target BETWEEN 0 AND 1),
    dc_voltage_min_v        double precision NOT NULL DEFAULT 0 CHECK (dc_voltage_min_v >= 0),
    dc_voltage_max_v        double precision NOT NULL DEFAULT 0 CHECK (dc_voltage_max_v >= 0),
    monthly_fee_minor       bigint NOT NULL DEFAULT 0 CHECK (monthly_fee_minor >= 0),
    currency_code           text NOT NULL DEFAULT '',
    create_time             timestamptz NOT NULL DEFAULT now(),
    update_time             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenancies_site_tenant_key UNIQUE (site_id, tenant_id)
);
-- the tenant-scoped queries join through (tenant_id, site_id)
CREATE INDEX tenancies_tenant_idx ON sites.tenancies (tenant_id, site_id);

CREATE TABLE sites.windows (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id     text NOT NULL REFERENCES sites.sites (id) ON DELETE CASCADE,
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    category    text NOT NULL,
    tenant_ids  text[] NOT NULL DEFAULT '{}',
    description text NOT NULL DEFAULT '',
    created_by  text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT windows_end_after_start CHECK (end_time > start_time)
);
-- overlap queries ("windows of this site touching [a, b)") and the start-time ordered lists
CREATE INDEX windows_site_start_idx ON sites.windows (site_id, start_time, id);
CREATE INDEX windows_start_idx ON sites.windows (start_time, id);
CREATE INDEX windows_range_idx ON sites.windows USING gist (tstzrange(start_time, end_time, '[)'));

-- The transactional outbox (text of mesh.outbox.outbox_ddl('sites')); WatchChanges replays it.
CREATE TABLE IF NOT EXISTS sites.outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    envelope     bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON sites.outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON sites.outbox (published_at) WHERE published_at IS NOT NULL;
