-- The object store in the database (uploaded files and job artifacts of a PostgreSQL
-- deployment): an object names a blob, a blob is chunks of at most 1 MiB in `seq` order.
-- Paths compare bytewise, so a prefix is a range of the primary key. Chunks are stored
-- uncompressed (uploads are often compressed already) and out of line.
CREATE TABLE objects (
    path          text COLLATE "C" PRIMARY KEY,
    blob          uuid        NOT NULL,
    size          bigint      NOT NULL,
    last_modified timestamptz NOT NULL
);
CREATE TABLE object_chunks (
    blob uuid   NOT NULL,
    seq  bigint NOT NULL,
    data bytea  NOT NULL,
    PRIMARY KEY (blob, seq)
);
ALTER TABLE object_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
-- Uploads in progress: a blob whose upload never completed is swept after a day.
CREATE TABLE object_uploads (
    blob       uuid        PRIMARY KEY,
    started_at timestamptz NOT NULL
);
