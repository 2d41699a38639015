-- The BI service's own records: tenants' penalty rule sets (versioned, never edited in place)
-- and the frozen statements of closed months. Everything else a statement shows is asked of the
-- KPI and Sites services over gRPC.

CREATE SCHEMA IF NOT EXISTS bi;

CREATE TABLE bi.penalty_rule_set (
    tenant_id            text        NOT NULL,
    version              integer     NOT NULL CHECK (version >= 1),
    effective_month      text        NOT NULL CHECK (effective_month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    -- [{"from_points": f, "to_points": t, "penalty_percent": p}, ...] in the order given
    bands                jsonb       NOT NULL DEFAULT '[]',
    cap_percent          double precision NOT NULL DEFAULT 0 CHECK (cap_percent BETWEEN 0 AND 100),
    incident_min_minutes integer     NOT NULL DEFAULT 0 CHECK (incident_min_minutes >= 0),
    incident_percent     double precision NOT NULL DEFAULT 0 CHECK (incident_percent BETWEEN 0 AND 100),
    description          text        NOT NULL DEFAULT '',
    created_by           text        NOT NULL DEFAULT '',
    create_time          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);

-- A closed month: the statement as it was when closed (a serialized towerco.bi.v1.SlaStatement).
CREATE TABLE bi.closed_month (
    tenant_id  text        NOT NULL,
    month      text        NOT NULL CHECK (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    statement  bytea       NOT NULL,
    closed_by  text        NOT NULL DEFAULT '',
    close_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month)
);
