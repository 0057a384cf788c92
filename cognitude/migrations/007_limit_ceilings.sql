-- Ceilings: how far an organization may raise its own rate limits with its own key.
--
-- NULL: the [rate_limits] default of the config file is the ceiling. A value is what the
-- operator granted (PUT /rate-limits/config with the operator key sets the limit and makes
-- it the ceiling at once). requests_per_* keep their meaning (the org's limit; NULL: the
-- default), so the hot path's key lookup reads them unchanged.
ALTER TABLE rate_limit_configs
    ADD COLUMN ceiling_per_minute integer CHECK (ceiling_per_minute > 0),
    ADD COLUMN ceiling_per_hour   integer CHECK (ceiling_per_hour > 0),
    ADD COLUMN ceiling_per_day    integer CHECK (ceiling_per_day > 0);
