-- The registry of nodes: one row per node id, held by one live process (`instance`) that
-- proves it is alive by heartbeats (stamped with the database's clock); a row whose
-- heartbeat is older than its ttl belongs to a dead node and may be taken over.
CREATE TABLE nodes (
    id           text        PRIMARY KEY,
    instance     uuid        NOT NULL,
    host         text        NOT NULL,
    pid          bigint      NOT NULL,
    version      text        NOT NULL,
    role         text        NOT NULL,
    slots        integer     NOT NULL,
    objects      text        NOT NULL,
    ttl_ms       bigint      NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
