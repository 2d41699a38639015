-- Energy prices per region and per site, overriding the deployment's defaults (TOWERCO_BI_*)
-- field by field: NULL takes the next level's (site -> region -> default). docs/bi.md "Tariffs".
CREATE TABLE bi.energy_tariff (
    scope                    text        NOT NULL CHECK (scope IN ('region', 'site')),
    name                     text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    grid_price_minor_per_kwh double precision CHECK (grid_price_minor_per_kwh BETWEEN 0 AND 1000000),
    fuel_price_minor_per_l   double precision CHECK (fuel_price_minor_per_l BETWEEN 0 AND 1000000),
    grid_kg_co2e_per_kwh     double precision CHECK (grid_kg_co2e_per_kwh BETWEEN 0 AND 10),
    description              text        NOT NULL DEFAULT '',
    updated_by               text        NOT NULL DEFAULT '',
    update_time              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, name),
    CHECK (num_nonnulls(grid_price_minor_per_kwh, fuel_price_minor_per_l, grid_kg_co2e_per_kwh) > 0)
);

-- The bi_engine's scheduled monthly exports: one row per report, tenant, month and format, so a
-- restarted or repeated run files nothing twice (the Files upload carries the same key as well).
CREATE TABLE bi.monthly_export (
    report      text        NOT NULL CHECK (report IN ('statement', 'energy')),
    tenant_id   text        NOT NULL,
    month       text        NOT NULL CHECK (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    format      text        NOT NULL CHECK (format IN ('csv', 'xlsx', 'pdf')),
    file_id     uuid        NOT NULL,
    sha256      text        NOT NULL,
    size_bytes  bigint      NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (report, tenant_id, month, format)
);
