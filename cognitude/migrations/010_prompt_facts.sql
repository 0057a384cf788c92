-- What the ledger notes about each prompt, for the analytics that find waste (DESIGN §8,
-- §12; cognitude/ledger/prompt_facts.py): never the text, only hashes and sizes.
--   prompt_hash   the response-cache digest of the request (same prompt, same hash)
--   prefix_hash   xxh3_64 of everything before the latest user message (system prompt,
--                 earlier turns); NULL when there is nothing before it
--   prefix_tokens that prefix's size, estimated at 4 characters a token
--   max_tokens    max_completion_tokens, else max_tokens, as the request asked
-- NULL in rows written before this migration (and spill files from then, which replay).
ALTER TABLE usage_log
    ADD COLUMN prompt_hash   text,
    ADD COLUMN prefix_hash   text,
    ADD COLUMN prefix_tokens integer,
    ADD COLUMN max_tokens    integer;
