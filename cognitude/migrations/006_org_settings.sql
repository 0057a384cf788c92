-- Per-org settings the management API writes and the hot path reads through its key cache:
-- provider credentials (encrypted) and cache settings. Rate limits live in
-- rate_limit_configs (001).

CREATE TABLE provider_credentials (
    org_id     text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    provider   text NOT NULL,
    -- AES-256-GCM: nonce || ciphertext || tag, with AAD "<org_id>:<provider>" so a value
    -- copied to another row does not decrypt (cognitude/crypto.py). Never the plaintext.
    ciphertext bytea NOT NULL,
    base_url   text,                    -- NULL: the provider's base_url from config
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, provider)
);

-- NULL columns fall back to the [cache] defaults of the config file.
CREATE TABLE cache_configs (
    org_id             text PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    enabled            boolean,
    ttl_s              integer CHECK (ttl_s > 0),
    only_deterministic boolean,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
