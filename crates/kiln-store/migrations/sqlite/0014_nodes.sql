-- The registry of nodes (see the PostgreSQL migration of the same name). On SQLite one
-- process owns the file, so it holds the only live row; the table keeps `/admin/nodes`
-- the same on both backends.
CREATE TABLE nodes (
    id           TEXT    PRIMARY KEY,
    instance     BLOB    NOT NULL,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    slots        INTEGER NOT NULL,
    objects      TEXT    NOT NULL,
    ttl_ms       INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
