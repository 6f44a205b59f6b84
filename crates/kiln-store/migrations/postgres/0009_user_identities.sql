-- Users who sign in with an external identity (OpenID Connect bearer tokens): the issuer and
-- the subject id it vouches for, linked to the Kiln user made on first sight. The pair, not
-- a name, is the identity: a token's `preferred_username` never selects an existing user.
CREATE TABLE user_identities (
    issuer     text        NOT NULL,
    subject    text        NOT NULL,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, subject)
);
