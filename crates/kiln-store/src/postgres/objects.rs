//! An [`ObjectStore`] in the PostgreSQL database itself: the default object store of a
//! PostgreSQL deployment, so uploaded files and job artifacts are reachable from every node
//! with no shared disk or bucket to set up (S3, GCS or a shared directory remain a
//! `KILN_OBJECT_STORE` away).
//!
//! An object is a row of `objects` (its path, size and version) naming a blob: chunks of at
//! most [`CHUNK`] bytes in `object_chunks`, in `seq` order. Writes are streamed: a put or
//! each part of a multipart upload is written chunk by chunk under a fresh blob, and the
//! object row is pointed at the blob only when the upload completes, in one transaction that
//! also drops the blob it replaces; readers stream the chunks one query at a time, so
//! neither side holds more than a chunk or two in memory. A blob whose upload never
//! completed (its node died) is swept a day later, as the next upload starts.
//!
//! Written here rather than taken from a crate: no maintained `object_store` backend for
//! PostgreSQL exists, and this one reuses the store's pool, TLS and migrations.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Pool};
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use super::row;
use crate::error::StoreError;

/// The largest chunk stored in one row (payloads are cut to it): a reader holds one.
pub const CHUNK: usize = 1 << 20;

/// Chunks per multipart part, at most: part `p`'s chunks have `seq` `p << PART_BITS | i`.
const PART_BITS: u32 = 20;

/// How long an unfinished upload's chunks are kept before they are swept.
const STALE_UPLOAD: &str = "1 day";

const STORE: &str = "PostgreSQL";

/// The object store in a PostgreSQL database (see the module docs).
#[derive(Clone)]
pub struct PgObjects {
    pool: Pool,
}

impl fmt::Debug for PgObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgObjects")
    }
}

impl fmt::Display for PgObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PostgreSQL")
    }
}

impl super::PgStore {
    /// The object store in this store's database, on its connection pool.
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        Arc::new(PgObjects {
            pool: self.pool.clone(),
        })
    }
}

/// A store error as `object_store` reports one; a full database reads as a full disk
/// (`io::ErrorKind::StorageFull`), which is how callers of an object store recognise one.
fn generic(e: StoreError) -> object_store::Error {
    let source: Box<dyn std::error::Error + Send + Sync> = match e {
        StoreError::Full(_) => Box::new(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "the database is full",
        )),
        other => Box::new(other),
    };
    object_store::Error::Generic {
        store: STORE,
        source,
    }
}

fn pg(e: tokio_postgres::Error) -> object_store::Error {
    generic(super::map_err(e))
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: "no such object".into(),
    }
}

impl PgObjects {
    async fn client(&self) -> object_store::Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| generic(super::map_pool_err(e)))
    }

    /// Registers a new upload's blob (sweeping uploads abandoned long ago first).
    async fn begin(&self) -> object_store::Result<uuid::Uuid> {
        let blob = uuid::Uuid::now_v7();
        let db = self.client().await?;
        db.execute(
            &format!(
                "WITH stale AS (
                     DELETE FROM object_uploads WHERE started_at < now() - interval '{STALE_UPLOAD}'
                     RETURNING blob
                 )
                 DELETE FROM object_chunks WHERE blob IN (SELECT blob FROM stale)"
            ),
            &[],
        )
        .await
        .map_err(pg)?;
        db.execute(
            "INSERT INTO object_uploads (blob, started_at) VALUES ($1, now())",
            &[&blob],
        )
        .await
        .map_err(pg)?;
        Ok(blob)
    }

    /// Writes `data` as chunks of `blob` from `seq` on.
    async fn write_chunks(
        &self,
        blob: uuid::Uuid,
        seq: i64,
        data: PutPayload,
    ) -> object_store::Result<()> {
        let db = self.client().await?;
        let mut seq = seq;
        for part in data.iter() {
            for piece in part.chunks(CHUNK) {
                row::execute(
                    &db,
                    "INSERT INTO object_chunks (blob, seq, data) VALUES ($1, $2, $3)",
                    &[&blob, &seq, &piece],
                )
                .await
                .map_err(generic)?;
                seq += 1;
            }
        }
        Ok(())
    }

    /// Points `location` at the finished `blob` (dropping the blob it replaces), or with
    /// `create_only` refuses if it exists; one transaction.
    async fn finish(
        &self,
        location: &Path,
        blob: uuid::Uuid,
        create_only: bool,
    ) -> object_store::Result<PutResult> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg)?;
        let size: i64 = tx
            .query_one(
                "SELECT coalesce(sum(octet_length(data)), 0)::bigint FROM object_chunks
                 WHERE blob = $1",
                &[&blob],
            )
            .await
            .map_err(pg)?
            .get(0);
        let old = tx
            .query_opt(
                "SELECT blob FROM objects WHERE path = $1 FOR UPDATE",
                &[&location.as_ref()],
            )
            .await
            .map_err(pg)?;
        if let Some(old) = old {
            if create_only {
                drop(tx);
                self.discard(blob).await?;
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "the object exists".into(),
                });
            }
            drop_blob(&tx, old.get(0)).await?;
        }
        tx.execute(
            "INSERT INTO objects (path, blob, size, last_modified) VALUES ($1, $2, $3, now())
             ON CONFLICT (path) DO UPDATE SET
                 blob = excluded.blob, size = excluded.size, last_modified = now()",
            &[&location.as_ref(), &blob, &size],
        )
        .await
        .map_err(pg)?;
        tx.execute("DELETE FROM object_uploads WHERE blob = $1", &[&blob])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(PutResult {
            e_tag: Some(blob.to_string()),
            version: None,
        })
    }

    /// Drops an unfinished upload's chunks.
    async fn discard(&self, blob: uuid::Uuid) -> object_store::Result<()> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg)?;
        drop_blob(&tx, blob).await?;
        tx.execute("DELETE FROM object_uploads WHERE blob = $1", &[&blob])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn meta(&self, location: &Path) -> object_store::Result<(ObjectMeta, uuid::Uuid)> {
        let db = self.client().await?;
        let r = row::query_opt(
            &db,
            "SELECT blob, size, last_modified FROM objects WHERE path = $1",
            &[&location.as_ref()],
        )
        .await
        .map_err(generic)?
        .ok_or_else(|| not_found(location))?;
        let blob: uuid::Uuid = r.get(0);
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: r.get(2),
            size: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            e_tag: Some(blob.to_string()),
            version: None,
        };
        Ok((meta, blob))
    }

    /// The objects under `prefix` (whole path segments, as every `object_store` backend
    /// matches), by path.
    async fn under(&self, prefix: Option<&Path>) -> object_store::Result<Vec<ObjectMeta>> {
        let db = self.client().await?;
        // Paths compare bytewise (`COLLATE "C"`): everything from `prefix/` up to, not
        // including, `prefix0` (the byte after `/`).
        let (from, to) = match prefix.map(Path::as_ref).filter(|p| !p.is_empty()) {
            Some(p) => (format!("{p}/"), Some(format!("{p}0"))),
            None => (String::new(), None),
        };
        let rows = row::query(
            &db,
            "SELECT path, blob, size, last_modified FROM objects
             WHERE path >= $1 AND ($2::text IS NULL OR path < $2) ORDER BY path",
            &[&from, &to],
        )
        .await
        .map_err(generic)?;
        rows.iter()
            .map(|r| {
                let blob: uuid::Uuid = r.get(1);
                Ok(ObjectMeta {
                    location: Path::parse(r.get::<_, &str>(0))?,
                    last_modified: r.get(3),
                    size: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                    e_tag: Some(blob.to_string()),
                    version: None,
                })
            })
            .collect()
    }
}

/// Deletes the chunks of `blob` (in the caller's transaction).
async fn drop_blob(db: &impl GenericClient, blob: uuid::Uuid) -> object_store::Result<()> {
    db.execute("DELETE FROM object_chunks WHERE blob = $1", &[&blob])
        .await
        .map(|_| ())
        .map_err(pg)
}

/// The chunks of `blob` overlapping `range`, streamed one query per chunk, cut to `range`.
fn read_chunks(
    pool: Pool,
    blob: uuid::Uuid,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    // (the last seq read, the object offset where the next chunk starts)
    let state = (-1_i64, 0_u64);
    stream::try_unfold(state, move |(seq, offset)| {
        let pool = pool.clone();
        let range = range.clone();
        async move {
            if offset >= range.end {
                return Ok(None);
            }
            let db = pool
                .get()
                .await
                .map_err(|e| generic(super::map_pool_err(e)))?;
            let Some(r) = db
                .query_opt(
                    "SELECT seq, data FROM object_chunks WHERE blob = $1 AND seq > $2
                     ORDER BY seq LIMIT 1",
                    &[&blob, &seq],
                )
                .await
                .map_err(pg)?
            else {
                // The object was replaced or deleted while it was read.
                return Err(object_store::Error::Generic {
                    store: STORE,
                    source: "the object changed while it was read".into(),
                });
            };
            let data: Vec<u8> = r.get(1);
            let end = offset + data.len() as u64;
            let from = range.start.saturating_sub(offset).min(data.len() as u64) as usize;
            let to = (range.end.min(end) - offset) as usize;
            let piece = Bytes::from(data).slice(from..to.max(from));
            Ok(Some((piece, (r.get::<_, i64>(0), end))))
        }
    })
    .try_filter(|b| std::future::ready(!b.is_empty()))
    .boxed()
}

#[async_trait]
impl ObjectStore for PgObjects {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create_only = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => return Err(object_store::Error::NotImplemented),
        };
        let blob = self.begin().await?;
        if let Err(e) = self.write_chunks(blob, 0, payload).await {
            let _ = self.discard(blob).await;
            return Err(e);
        }
        self.finish(location, blob, create_only).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(Upload {
            objects: self.clone(),
            location: location.clone(),
            blob: self.begin().await?,
            parts: Arc::new(AtomicI64::new(0)),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let (meta, blob) = self.meta(location).await?;
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(r) => r
                .as_range(meta.size)
                .map_err(|e| object_store::Error::Generic {
                    store: STORE,
                    source: Box::new(e),
                })?,
            None => 0..meta.size,
        };
        let payload = if options.head || range.is_empty() {
            stream::empty().boxed()
        } else {
            read_chunks(self.pool.clone(), blob, range.clone())
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg)?;
        let gone = tx
            .query_opt(
                "DELETE FROM objects WHERE path = $1 RETURNING blob",
                &[&location.as_ref()],
            )
            .await
            .map_err(pg)?;
        let Some(gone) = gone else {
            return Err(not_found(location));
        };
        drop_blob(&tx, gone.get(0)).await?;
        tx.commit().await.map_err(pg)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        stream::once(async move { this.under(prefix.as_ref()).await })
            .map_ok(|all| stream::iter(all.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let depth = prefix.map_or(0, |p| p.parts().count());
        let mut common_prefixes: Vec<Path> = Vec::new();
        let mut objects = Vec::new();
        for meta in self.under(prefix).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(meta);
            } else if let Some(dir) = parts.get(..=depth) {
                let dir = Path::from_iter(dir.iter().cloned());
                // Listed by path, so one directory's objects are together.
                if common_prefixes.last() != Some(&dir) {
                    common_prefixes.push(dir);
                }
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects,
        })
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.copy_to(from, to, false).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.copy_to(from, to, true).await
    }
}

impl PgObjects {
    async fn copy_to(&self, from: &Path, to: &Path, create_only: bool) -> object_store::Result<()> {
        let (_, source) = self.meta(from).await?;
        let blob = self.begin().await?;
        let copied = async {
            let db = self.client().await?;
            db.execute(
                "INSERT INTO object_chunks (blob, seq, data)
                 SELECT $2, seq, data FROM object_chunks WHERE blob = $1",
                &[&source, &blob],
            )
            .await
            .map_err(pg)
        };
        if let Err(e) = copied.await {
            let _ = self.discard(blob).await;
            return Err(e);
        }
        self.finish(to, blob, create_only).await.map(|_| ())
    }
}

/// A multipart upload: each part's chunks are written as the part arrives (parts may be
/// written concurrently; their `seq` ranges keep them in order).
#[derive(Debug)]
struct Upload {
    objects: PgObjects,
    location: Path,
    blob: uuid::Uuid,
    parts: Arc<AtomicI64>,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.parts.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.clone();
        let blob = self.blob;
        Box::pin(async move {
            if data.content_length() > CHUNK << PART_BITS {
                return Err(object_store::Error::Generic {
                    store: STORE,
                    source: "a part over 1 TiB".into(),
                });
            }
            objects.write_chunks(blob, part << PART_BITS, data).await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.objects.finish(&self.location, self.blob, false).await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.objects.discard(self.blob).await
    }
}
