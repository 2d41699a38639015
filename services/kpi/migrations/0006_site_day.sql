-- Daily sums of kpi.site_hour's additive figures (minute counts, DG, fuel, energy), so a month
-- of the whole fleet is ~30 rows per site instead of ~720 (GetFleetSummary, ListWorstSites and
-- the BI energy report read whole days from here and only the hours at a range's edges from
-- kpi.site_hour). The kpi_calculator rewrites a day's row in the same transaction as any of the
-- day's hours (workers/kpi_calculator/store.refresh_days*). Backfilled from the hours already
-- stored.

CREATE TABLE kpi.site_day (
    site_id            text NOT NULL,
    day                timestamptz NOT NULL,
    hours              integer NOT NULL,
    power_known        integer NOT NULL,
    power_ok           integer NOT NULL,
    grid_known         integer NOT NULL,
    grid_present       integer NOT NULL,
    dg_run_minutes     integer NOT NULL,
    dg_starts          integer NOT NULL,
    dg_fail_to_start   integer NOT NULL,
    fuel_consumed_l    double precision NOT NULL,
    fuel_expected_l    double precision NOT NULL,
    fuel_drop_dg_off_l double precision NOT NULL,
    refuel_l           double precision NOT NULL,
    refuels            integer NOT NULL,
    energy_grid_kwh    double precision NOT NULL,
    energy_dg_kwh      double precision NOT NULL,
    energy_battery_kwh double precision NOT NULL,
    PRIMARY KEY (site_id, day)
);
CREATE INDEX site_day_day_idx ON kpi.site_day (day);

INSERT INTO kpi.site_day
SELECT site_id, date_trunc('day', hour, 'UTC'), count(*), sum(power_known), sum(power_ok), sum(grid_known),
       sum(grid_present), sum(dg_run_minutes), sum(dg_starts), sum(dg_fail_to_start), sum(fuel_consumed_l),
       sum(fuel_expected_l), sum(fuel_drop_dg_off_l), sum(refuel_l), sum(refuels), sum(energy_grid_kwh),
       sum(energy_dg_kwh), sum(energy_battery_kwh)
FROM kpi.site_hour GROUP BY 1, 2;
