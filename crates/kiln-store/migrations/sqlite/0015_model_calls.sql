-- Token buckets (see the PostgreSQL migration `0018_model_calls.sql`); on SQLite judged by the
-- one process's clock. `at` in Unix milliseconds.
CREATE TABLE rate_buckets (
    name  TEXT    PRIMARY KEY,
    level REAL    NOT NULL,
    at    INTEGER NOT NULL
);

-- The model's answers by what was asked (see the PostgreSQL migration `0018_model_calls.sql`).
CREATE TABLE model_answers (
    key        TEXT    PRIMARY KEY,
    answer     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
