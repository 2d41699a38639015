-- The bi_engine's latest recommendations (workers/bi_engine rewrites one kind at a time, in one
-- transaction, so readers see either the previous run or the new one).
CREATE TABLE bi.recommendation (
    kind         smallint    NOT NULL CHECK (kind BETWEEN 1 AND 4),
    site_id      text        NOT NULL,
    region       text        NOT NULL DEFAULT '',
    title        text        NOT NULL,
    evidence     jsonb       NOT NULL DEFAULT '[]',  -- [[name, value], ...]
    saving_minor bigint      NOT NULL DEFAULT 0,
    currency     text        NOT NULL DEFAULT '',
    due_date     text        NOT NULL DEFAULT '',
    run          text        NOT NULL DEFAULT '',
    compute_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, site_id)
);
CREATE INDEX recommendation_saving_idx ON bi.recommendation (saving_minor DESC);
