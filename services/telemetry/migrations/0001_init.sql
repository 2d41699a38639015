-- The telemetry schema: raw samples (range-partitioned by UTC day), the message ids the
-- ingestor has written (exactly-once effect under redelivery), and partition upkeep functions.
-- The telemetry service reads these tables; the ingestor worker (workers/ingestor) writes them.
CREATE SCHEMA IF NOT EXISTS telemetry;

CREATE TABLE telemetry.samples (
    site_id   text             NOT NULL,
    metric    text             NOT NULL,
    tenant_id text             NOT NULL DEFAULT '',
    time      timestamptz      NOT NULL,
    value     double precision NOT NULL
) PARTITION BY RANGE (time);

-- Serves QuerySamples (one site, some metrics, a time range) and LatestSnapshot.
CREATE INDEX samples_site_metric_time ON telemetry.samples (site_id, metric, time);

-- One row per TELEMETRY message written ("<batch_id>:<partition>"), inserted in the same
-- transaction as the message's rows: a redelivered message finds its id and is skipped.
CREATE TABLE telemetry.ingested_messages (
    msg_id      text        PRIMARY KEY,
    samples     integer     NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingested_messages_ingested_at ON telemetry.ingested_messages (ingested_at);

-- Create the partition holding one UTC day unless it exists. Safe to call from many replicas.
CREATE FUNCTION telemetry.ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'samples_' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass('telemetry.' || part) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('telemetry.samples partitions'));
    IF to_regclass('telemetry.' || part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE telemetry.%I PARTITION OF telemetry.samples FOR VALUES FROM (%L) TO (%L)',
                   part, lo, hi);
    RETURN true;
END;
$$;

-- Create every day partition from first to last (inclusive); returns how many were created.
CREATE FUNCTION telemetry.ensure_partitions(first date, last date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date := first;
    made integer := 0;
BEGIN
    WHILE d <= last LOOP
        IF telemetry.ensure_partition(d) THEN
            made := made + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN made;
END;
$$;

-- Drop the day partitions that end on or before the cutoff day; returns their names.
CREATE FUNCTION telemetry.drop_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('telemetry.samples partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE n.nspname = 'telemetry' AND p.relname = 'samples' AND c.relname ~ '^samples_[0-9]{8}$'
        ORDER BY c.relname
    LOOP
        IF to_date(substr(part, 9), 'YYYYMMDD') < cutoff THEN
            EXECUTE format('DROP TABLE telemetry.%I', part);
            RETURN NEXT part;
        END IF;
    END LOOP;
END;
$$;
