-- Daily sums of kpi.tenancy_hour's code counts, so a month of a whole fleet is ~30 rows per
-- tenancy; the worker rewrites a day's rows whenever it rewrites one of its hours. Plus an index
-- that finds the hours holding outage minutes (for outage intervals) without scanning the rest.

CREATE TABLE kpi.tenancy_day (
    tenant_id text NOT NULL,
    site_id   text NOT NULL,
    day       timestamptz NOT NULL,
    up        integer NOT NULL,
    ignored   integer NOT NULL,
    dc_low    integer NOT NULL,
    dc_high   integer NOT NULL,
    link_down integer NOT NULL,
    unknown   integer NOT NULL,
    ex_pm     integer NOT NULL,
    ex_fm     integer NOT NULL,
    ex_tc     integer NOT NULL,
    ex_ad     integer NOT NULL,
    un_pm     integer NOT NULL,
    un_fm     integer NOT NULL,
    un_tc     integer NOT NULL,
    un_ad     integer NOT NULL,
    PRIMARY KEY (tenant_id, day, site_id)
);
CREATE INDEX tenancy_day_site_idx ON kpi.tenancy_day (site_id, day);

CREATE INDEX tenancy_hour_outage_idx ON kpi.tenancy_hour (tenant_id, site_id, hour)
    WHERE dc_low + dc_high + link_down > 0;
