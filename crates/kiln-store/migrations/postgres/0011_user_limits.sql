-- Limits an admin set for one user, each overriding the server's default for them; a NULL
-- column keeps the default, and a user without a row has every default.
CREATE TABLE user_limits (
    user_id      bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    submit_rate  text,
    submit_burst bigint,
    max_active   bigint,
    slot_share   double precision,
    storage      bigint
);
