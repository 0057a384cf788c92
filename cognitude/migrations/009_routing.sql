-- Smart routing (DESIGN §8, §11). usage_log.complexity: the classifier's class of every
-- chat request (simple | medium | complex), smart or not, so analytics can price what
-- routing would have saved; NULL for embeddings and rows from before this column.
ALTER TABLE usage_log ADD COLUMN complexity text;

-- An organization's own routing policy (PUT /routing/config), read by the hot path's key
-- lookup: {"default_mode", "rules": [{"match": {...}, "model" | "class"}],
-- "exclude_models", "exclude_providers"}, validated by cognitude/routing/rules.py on write
-- and again on read (a model the config no longer serves makes it ignored, loudly).
CREATE TABLE routing_configs (
    org_id     text PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    policy     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The rollup gains the dimensions /routing/stats reads: the class and the route (the smart
-- mode and class, a fallback, an alias). '' (not NULL) so they can be part of the key.
ALTER TABLE usage_hourly ADD COLUMN complexity text NOT NULL DEFAULT '';
ALTER TABLE usage_hourly ADD COLUMN route text NOT NULL DEFAULT '';
ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_pkey;
ALTER TABLE usage_hourly ADD PRIMARY KEY (org_id, hour, model_used, provider, complexity, route);
