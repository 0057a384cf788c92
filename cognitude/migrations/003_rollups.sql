-- Hourly rollup bookkeeping (DESIGN §8, §10): usage_hourly is kept equal to
-- "GROUP BY org, hour, model, provider" over usage_log by cognitude.maintenance, which
-- recomputes (replaces, never adds) a bounded set of hours per round:
--   * every hour from (watermark - lateness) on: rows of recent hours, however they arrive;
--   * every hour named in usage_rollup_dirty: rows that arrive late for an older hour
--     (spill replay after an outage, a proxy whose clock lags, a user's manual INSERT).
-- See cognitude/maintenance.py for the exact guarantee.

-- Singleton row (id is always true). watermark: transaction start time of the last global
-- refresh; NULL until the first one, which then backfills from the oldest raw row.
CREATE TABLE usage_rollup_state (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),
    watermark    timestamptz,
    refreshed_at timestamptz,
    rounds       bigint      NOT NULL DEFAULT 0
);
INSERT INTO usage_rollup_state DEFAULT VALUES;

-- Hours (UTC) that received late rows since the last refresh. Append-only on purpose: no
-- unique key, so inserting never waits on or merges into a row a concurrent refresh is
-- deleting (a merged mark could be deleted before its rows commit, and be lost). The
-- refresh deletes exactly the marks its snapshot sees; marks committed later stay.
CREATE TABLE usage_rollup_dirty (
    hour timestamptz NOT NULL
);

-- Runs once per INSERT/COPY statement (not per row) on usage_log, over the statement's
-- rows. Live traffic (ts within minutes of now) writes nothing here; only rows older than
-- 5 minutes mark their hour. Cost measured on a 500-row COPY: ~0.3 ms, within noise.
-- The 5 minutes must stay well below maintenance's lateness (default 15 min): the
-- difference bounds how long an inserting transaction may stay open and still be exact.
CREATE FUNCTION cognitude_mark_late_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_rollup_dirty (hour)
    SELECT DISTINCT date_trunc('hour', ts, 'UTC')
    FROM new_rows
    WHERE ts < now() - interval '5 minutes' AND org_id IS NOT NULL;
    RETURN NULL;
END;
$$;

-- Statement-level with a transition table: defined on the partitioned parent, it sees the
-- rows of every partition (including the default one) and fires for COPY too.
CREATE TRIGGER usage_log_mark_late
    AFTER INSERT ON usage_log
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cognitude_mark_late_usage();
