-- Partition leases of the kpi worker replicas (mesh/leases.py: who is alive, who owns which
-- TELEMETRY partition; the text of mesh.leases.lease_ddl("kpi")).
CREATE TABLE IF NOT EXISTS kpi.lease_member (
    grp          text        NOT NULL,
    member       text        NOT NULL,
    token        text        NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    PRIMARY KEY (grp, member)
);
CREATE TABLE IF NOT EXISTS kpi.partition_lease (
    grp          text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    owner        text,
    member       text,
    epoch        bigint      NOT NULL DEFAULT 0,
    expires_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grp, partition)
);
