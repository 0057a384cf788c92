-- Retries and fallbacks (DESIGN §8, §11): how many upstream calls a request made. The
-- deployment that answered is already recorded in provider / model_used, and a fallback's
-- route in route ("fallback:<from>-><to>"). 0: no upstream call (a hit, a refusal); NULL:
-- rows written before this column existed (and spill files from then, which still replay).
ALTER TABLE usage_log ADD COLUMN attempts smallint;
