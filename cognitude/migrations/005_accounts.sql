-- Accounts: per-key request limits and case-insensitive email uniqueness.

-- Per-key limits (NULL: only the org's limits apply). They narrow a key within its org: a
-- request must be admitted by both the key's windows and the org's.
ALTER TABLE api_keys
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN requests_per_hour   integer CHECK (requests_per_hour > 0),
    ADD COLUMN requests_per_day    integer CHECK (requests_per_day > 0);

-- The API stores emails lower-cased; this index also stops "A@x.io" and "a@x.io" from
-- becoming two accounts through any other writer (SQL, future endpoints).
CREATE UNIQUE INDEX organizations_email_lower ON organizations (lower(email));
