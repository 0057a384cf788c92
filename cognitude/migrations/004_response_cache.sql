-- The cold cache tier (DESIGN §7): the same entries as Redis, read on a Redis miss when
-- cache.cold_tier = true. Keyed by the full org-namespaced Redis key.

CREATE TABLE response_cache (
    cache_key  text PRIMARY KEY,
    org_id     text NOT NULL,
    value      bytea NOT NULL,          -- flag byte + body, exactly as stored in Redis
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- For the periodic purge of expired entries.
CREATE INDEX response_cache_expires ON response_cache (expires_at);
