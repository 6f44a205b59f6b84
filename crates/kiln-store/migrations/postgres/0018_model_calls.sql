-- Token buckets shared by every node (the model API's requests and tokens per minute): a
-- bucket's level when last changed and that time, by the database's clock. A take refills
-- the bucket for the time since, then takes its cost if the level allows (one upsert).
CREATE TABLE rate_buckets (
    name  TEXT             PRIMARY KEY,
    level DOUBLE PRECISION NOT NULL,
    at    TIMESTAMPTZ      NOT NULL
);

-- The model's answers by what was asked (file hash, prompt, model), so a retried
-- `pdf_analyze` job whose analysis already succeeded does not ask again. Kept a week.
CREATE TABLE model_answers (
    key        TEXT        PRIMARY KEY,
    answer     JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
