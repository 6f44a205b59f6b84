-- Kiln's PostgreSQL schema, version 4: payloads and results are stored as `json` (the text
-- as written), not `jsonb`.
--
-- Kiln never queries inside them; it writes them once and reads them whole, and every read
-- hands them to a client as they are. `jsonb` had PostgreSQL parse them into its binary
-- form on every write and render them back into text on every read (the largest cost of
-- reading a job with an 11 KB result); `json` validates on write and returns the stored
-- text. Errors stay `jsonb` (small, and read as a structure). The change rewrites the table.
ALTER TABLE jobs
    ALTER COLUMN payload TYPE json USING payload::json,
    ALTER COLUMN result TYPE json USING result::json;
