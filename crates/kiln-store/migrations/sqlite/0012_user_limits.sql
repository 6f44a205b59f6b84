-- Limits an admin set for one user, each overriding the server's default for them; a NULL
-- column keeps the default, and a user without a row has every default.
CREATE TABLE user_limits (
    user_id      INTEGER NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    submit_rate  TEXT,
    submit_burst INTEGER,
    max_active   INTEGER,
    slot_share   REAL,
    storage      INTEGER
);
