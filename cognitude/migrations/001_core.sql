-- Organizations, API keys and per-org rate limits: the durable state the hot path reads
-- through its in-process key cache.

CREATE TABLE organizations (
    -- text, not uuid: sidecar deployments name their orgs in config.toml ("acme").
    id            text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    name          text NOT NULL,
    email         text UNIQUE,
    password_hash text,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    org_id      text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    -- SHA-256 hex of the full key: keys are >= 32 random bytes, so a fast hash is enough
    -- (no KDF needed for high-entropy secrets) and keeps the hot-path lookup cheap.
    key_hash    text NOT NULL UNIQUE,
    prefix      text NOT NULL,           -- first characters, for display only
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_org ON api_keys (org_id);

CREATE TABLE rate_limit_configs (
    org_id              text PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    requests_per_minute integer CHECK (requests_per_minute > 0),
    requests_per_hour   integer CHECK (requests_per_hour > 0),
    requests_per_day    integer CHECK (requests_per_day > 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
