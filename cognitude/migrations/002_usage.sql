-- Usage ledger (DESIGN §8): one row per request, written in batches by UsageWriter.
-- Column names are a contract: users query this table with their own SQL and BI tools.

CREATE TABLE usage_log (
    -- text, not uuid: X-Request-ID values are opaque strings (the proxy's are uuid4 text).
    request_id           text        NOT NULL,
    ts                   timestamptz NOT NULL,
    -- No foreign keys to organizations/api_keys: the ledger is billing history and must
    -- outlive a deleted org or key, and FK checks would cost every batched COPY a lookup.
    -- NULL only for requests rejected before an org was known (e.g. a bad key).
    org_id               text,
    key_id               text,
    endpoint             text        NOT NULL,
    model_requested      text,
    model_used           text,
    provider             text,
    route                text,
    prompt_tokens        integer     NOT NULL DEFAULT 0,
    completion_tokens    integer     NOT NULL DEFAULT 0,
    -- Integer micro-USD; NULL when the model has no known price (recorded, never guessed).
    cost_micros          bigint,
    baseline_cost_micros bigint,
    cache_status         text,       -- HIT | MISS | BYPASS; NULL when the cache was not consulted
    status_code          smallint    NOT NULL,
    error_type           text,
    stream               boolean     NOT NULL DEFAULT false,
    -- real (4 bytes) keeps ~7 significant digits: sub-millisecond overhead stays visible.
    latency_ms           real        NOT NULL,
    upstream_ms          real,
    overhead_ms          real,
    end_user             text
) PARTITION BY RANGE (ts);

-- Dedup key. A unique index on a partitioned table must contain the partition key, so
-- request_id alone cannot be unique here. That is enough anyway: a record's ts is fixed when
-- the record is created, so a re-sent record (retry after an ambiguous commit, spill replay)
-- carries the same (request_id, ts) and is rejected by this index / skipped by
-- ON CONFLICT (request_id, ts) DO NOTHING. The replay path additionally checks
-- NOT EXISTS (... request_id = ...), which this index serves (request_id is its first column).
CREATE UNIQUE INDEX usage_log_request_id ON usage_log (request_id, ts);
-- Time-range scans (rollups, retention): BRIN is tiny and ts is insert-ordered.
CREATE INDEX usage_log_ts_brin ON usage_log USING brin (ts);
-- Per-org queries (analytics drill-down, budgets).
CREATE INDEX usage_log_org_ts ON usage_log (org_id, ts);

-- Catch-all partition: a missing daily partition (maintenance task down, clock skew, a replay
-- of rows older than retention) must never make an insert fail, because a failed COPY means
-- the whole batch goes to the spill files and keeps failing on replay. Rows that land here
-- are moved into their day's partition by cognitude_ensure_usage_partitions.
CREATE TABLE usage_log_default PARTITION OF usage_log DEFAULT;

-- Creates the daily partitions from today-days_back to today+days_ahead (UTC days) that do
-- not exist yet; returns how many it created. Idempotent, so the (leader-locked) maintenance
-- task can call it as often as it likes.
--
-- A partition is created as a plain table and ATTACHed rather than CREATE ... PARTITION OF:
-- ATTACH takes only SHARE UPDATE EXCLUSIVE on usage_log, so concurrent COPYs keep running,
-- and any rows of that day already sitting in the default partition are moved first
-- (attaching would otherwise fail the default partition's constraint check).
CREATE FUNCTION cognitude_ensure_usage_partitions(days_ahead integer DEFAULT 7,
                                                  days_back integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    today   date := (now() AT TIME ZONE 'UTC')::date;
    d       date;
    lo      timestamptz;
    hi      timestamptz;
    part    text;
    created integer := 0;
BEGIN
    FOR i IN -days_back .. days_ahead LOOP
        d := today + i;
        part := 'usage_log_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE usage_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       part);
        EXECUTE format('WITH moved AS (DELETE FROM usage_log_default'
                       ' WHERE ts >= %L AND ts < %L RETURNING *)'
                       ' INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE usage_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

SELECT cognitude_ensure_usage_partitions(7, 1);

-- Hourly rollup read by analytics so that dashboards never scan raw rows. Maintained by a
-- background task (later). model_used/provider are '' (not NULL) for requests that never
-- reached a model (429s, auth errors) so they can be part of the primary key on any
-- PostgreSQL version (NULLS NOT DISTINCT needs 15+).
CREATE TABLE usage_hourly (
    org_id               text        NOT NULL,
    hour                 timestamptz NOT NULL,
    model_used           text        NOT NULL DEFAULT '',
    provider             text        NOT NULL DEFAULT '',
    requests             bigint      NOT NULL DEFAULT 0,
    prompt_tokens        bigint      NOT NULL DEFAULT 0,
    completion_tokens    bigint      NOT NULL DEFAULT 0,
    cost_micros          bigint      NOT NULL DEFAULT 0,
    baseline_cost_micros bigint      NOT NULL DEFAULT 0,
    cache_hits           bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, hour, model_used, provider)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);
