-- Site-hours whose minutes changed and that wait for re-evaluation. Folding telemetry only marks
-- them (in the same transaction as the minutes, so a crash loses no mark); a separate loop
-- re-evaluates each marked hour once, however many batches touched it meanwhile.
CREATE TABLE kpi.dirty_hour (
    site_id text NOT NULL,
    hour    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, hour)
);
