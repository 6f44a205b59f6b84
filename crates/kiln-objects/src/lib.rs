//! Kiln's object storage: the files users upload, kept in an [`ObjectStore`] (a local
//! directory by default), with their metadata stored beside them as JSON, and the
//! artifacts jobs write.
//!
//! # Layout
//! - this file: [`Objects`] (the handle), [`FileMeta`], [`FileId`], [`ObjectsError`].
//! - [`artifact`]: job artifacts (`artifacts/<job id>/<attempt>/<name>`), moved in from the
//!   worker's scratch files, listed, streamed and deleted.
//! - [`local`]: [`LocalFile`], a path on the local disk a kernel can read a file from.
//!
//! # Objects
//! A file of owner `u` with id `f` is two objects: `files/u/f` (the bytes) and
//! `files/u/f.json` (its [`FileMeta`]). Owner scoping is therefore a path prefix: another
//! owner's id simply does not exist under your prefix. Metadata lives here rather than in
//! the database so that any store backend works unchanged, and a file and its metadata are
//! removed together. The bytes are written first and the metadata last, so a file whose
//! metadata can be read is complete; an interrupted upload leaves no metadata (and the
//! backend's multipart upload is aborted, so no bytes either).
#![warn(missing_docs)]

pub mod artifact;
pub mod local;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use kiln_domain::UserId;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetResult, GetResultPayload, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use artifact::{ArtifactMeta, Placement};
pub use local::LocalFile;
/// The backend interface an [`Objects`] wraps (for a caller that brings its own backend).
pub use object_store::ObjectStore;

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Bytes buffered before a part is handed to the backend: S3's minimum part size (every
/// part but the last must be at least 5 MiB, or the upload is refused when it completes).
/// With two parts in flight an upload holds about 15 MiB; local uploads write each part at
/// its offset.
const PART_SIZE: usize = 5 << 20;
/// Parts in flight at once per upload, so a fast client cannot fill memory.
const PARTS_IN_FLIGHT: usize = 2;

/// Why an object operation failed.
///
/// Each variant's message already holds its cause's, so none reports a `source()` as well:
/// a printed error chain says each thing once. (thiserror's `#[from]` always makes the
/// field a source too, hence the hand-written `From`s below.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectsError {
    /// No such file for this owner (or it belongs to someone else), or no such artifact.
    #[error("no such object")]
    NotFound,
    /// The upload went past its size limit; nothing was kept.
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The uploaded byte stream failed (the client went away, a malformed body).
    #[error("the upload failed: {0}")]
    Body(BoxError),
    /// The backend failed.
    #[error("object store: {0}")]
    Store(object_store::Error),
    /// Local file-system I/O failed (the scratch copy of a remote file).
    #[error("local I/O: {0}")]
    Io(std::io::Error),
    /// The storage URL or its options are invalid.
    #[error("object store configuration: {0}")]
    Config(String),
    /// Stored metadata did not parse.
    #[error("corrupt file metadata: {0}")]
    Corrupt(serde_json::Error),
}

impl ObjectsError {
    /// Whether the failure is a full disk (or a disk quota): somewhere in its causes is an
    /// I/O error saying no room is left.
    pub fn is_full(&self) -> bool {
        // The variants report no `source()` (see above): start from the inner error.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = match self {
            Self::Io(e) => Some(e),
            Self::Store(e) => Some(e),
            Self::Body(e) => Some(e.as_ref()),
            _ => None,
        };
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

impl From<object_store::Error> for ObjectsError {
    fn from(e: object_store::Error) -> Self {
        Self::Store(e)
    }
}

impl From<std::io::Error> for ObjectsError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<serde_json::Error> for ObjectsError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e)
    }
}

/// A file's id: a UUIDv7, so ids sort by upload time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileId(pub uuid::Uuid);

impl FileId {
    /// A new id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Parses an id; anything else is [`ObjectsError::NotFound`] (no such file can exist).
    pub fn parse(text: &str) -> Result<Self, ObjectsError> {
        uuid::Uuid::parse_str(text)
            .map(Self)
            .map_err(|_| ObjectsError::NotFound)
    }
}

impl Default for FileId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What is known about a stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Its id: what `csv_aggregate {file_id}` and `/api/v1/files/{id}` take.
    pub id: FileId,
    /// The name it was uploaded under (no directories).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The media type the client declared (`application/octet-stream` if none).
    pub content_type: String,
    /// When the upload finished.
    pub created_at: DateTime<Utc>,
}

/// What a new file is called and declared to be.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// The file name (directories are stripped).
    pub name: String,
    /// The declared media type.
    pub content_type: String,
    /// The upload time.
    pub created_at: DateTime<Utc>,
}

/// The object store handle; cheap to clone.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The local backend, when the store is one: kernels then read files in place.
    local: Option<Arc<LocalFileSystem>>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects")
            .field("store", &self.store.to_string())
            .finish()
    }
}

impl Objects {
    /// Objects in the local directory `root`, created if missing.
    pub fn local(root: &std::path::Path) -> Result<Self, ObjectsError> {
        std::fs::create_dir_all(root)?;
        // Deleting a file removes the owner's directory once it is empty.
        let fs = Arc::new(LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true));
        Ok(Self {
            store: fs.clone(),
            local: Some(fs),
        })
    }

    /// Objects in any backend (S3, GCS, in-memory for tests); kernels read a scratch copy.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, local: None }
    }

    /// Objects at `url`: `file:///dir` (as [`Objects::local`]: a directory several nodes
    /// may share over a network file system) and `memory:///` always; `s3://bucket/prefix`
    /// and `gs://bucket/prefix` with the `cloud` feature, configured by `options`
    /// (object_store's config keys such as `aws_region`, `aws_access_key_id`,
    /// `google_service_account`; unknown keys are ignored). Everything is stored under the
    /// URL's path.
    pub fn from_url<I, K, V>(url: &str, options: I) -> Result<Self, ObjectsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let parsed = url::Url::parse(url).map_err(|e| ObjectsError::Config(e.to_string()))?;
        if parsed.scheme() == "file" {
            let root = parsed
                .to_file_path()
                .map_err(|()| ObjectsError::Config(format!("`{url}` is not a local path")))?;
            return Self::local(&root);
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self::new(store))
    }

    /// Stores `body` as a new file of `owner`, computing its SHA-256 on the way. The body
    /// is streamed to the backend in 5 MiB parts (S3's minimum) and never held whole. Past `limit`
    /// bytes the upload is aborted and [`ObjectsError::TooLarge`] returned: nothing is kept.
    pub async fn file_put<S, E>(
        &self,
        owner: UserId,
        file: NewFile,
        body: S,
        limit: u64,
    ) -> Result<FileMeta, ObjectsError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BoxError>,
    {
        let id = FileId::new();
        let data = data_path(owner, id);
        let upload = self.store.put_multipart(&data).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        match write_body(&mut writer, body, limit).await {
            Ok((size, sha256)) => {
                writer.finish().await?;
                let meta = FileMeta {
                    id,
                    name: clean_name(&file.name),
                    size,
                    sha256,
                    content_type: file.content_type,
                    created_at: file.created_at,
                };
                let json = serde_json::to_vec(&meta)?;
                if let Err(e) = self
                    .store
                    .put(&meta_path(owner, id), PutPayload::from(json))
                    .await
                {
                    let _ = self.store.delete(&data).await;
                    return Err(e.into());
                }
                Ok(meta)
            }
            Err(e) => {
                // Abort removes the parts written so far (the local backend's staging file).
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// The metadata of `owner`'s file `id`.
    pub async fn file_meta(&self, owner: UserId, id: FileId) -> Result<FileMeta, ObjectsError> {
        let got = self
            .store
            .get(&meta_path(owner, id))
            .await
            .map_err(not_found)?;
        let bytes = got.bytes().await.map_err(not_found)?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The metadata and a stream of the bytes of `owner`'s file `id`.
    pub async fn file_get(
        &self,
        owner: UserId,
        id: FileId,
    ) -> Result<(FileMeta, BoxStream<'static, Result<Bytes, ObjectsError>>), ObjectsError> {
        let meta = self.file_meta(owner, id).await?;
        let got = self
            .store
            .get(&data_path(owner, id))
            .await
            .map_err(not_found)?;
        Ok((meta, byte_stream(got)))
    }

    /// `owner`'s files, newest first: the metadata objects under their folder (one list
    /// call, then one read per file).
    pub async fn file_list(&self, owner: UserId) -> Result<Vec<FileMeta>, ObjectsError> {
        let folder = ObjectPath::from_iter(["files".to_owned(), owner.0.to_string()]);
        let metas: Vec<ObjectPath> = self
            .store
            .list(Some(&folder))
            .map_ok(|o| o.location)
            .try_filter(|p| futures_util::future::ready(p.as_ref().ends_with(".json")))
            .try_collect()
            .await?;
        let mut files = Vec::with_capacity(metas.len());
        for path in metas {
            // A file deleted between the list and the read is simply not listed.
            let Ok(got) = self.store.get(&path).await else {
                continue;
            };
            if let Ok(bytes) = got.bytes().await
                && let Ok(meta) = serde_json::from_slice::<FileMeta>(&bytes)
            {
                files.push(meta);
            }
        }
        // Ids are UUIDv7: by id is by upload time.
        files.sort_by_key(|f| std::cmp::Reverse(f.id.0));
        Ok(files)
    }

    /// Deletes `owner`'s file `id`: the metadata first, so it stops being visible at once.
    pub async fn file_delete(&self, owner: UserId, id: FileId) -> Result<(), ObjectsError> {
        self.file_meta(owner, id).await?;
        self.store
            .delete(&meta_path(owner, id))
            .await
            .map_err(not_found)?;
        match self.store.delete(&data_path(owner, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every user's files uploaded before `before` (retention, like finished
    /// jobs): one listing of `files/`, the upload time read from each file's id (a UUIDv7),
    /// no object read. A file half-deleted by an interrupted prune is finished by the next.
    /// Returns how many objects (data and metadata) went.
    pub async fn file_prune(&self, before: DateTime<Utc>) -> Result<usize, ObjectsError> {
        let cutoff_ms = u64::try_from(before.timestamp_millis()).unwrap_or(0);
        let root = ObjectPath::from("files");
        let old = self
            .store
            .list(Some(&root))
            .try_filter(move |o| {
                let uploaded_ms = o
                    .location
                    .filename()
                    .map(|name| name.trim_end_matches(".json"))
                    .and_then(|id| uuid::Uuid::try_parse(id).ok())
                    .and_then(|id| id.get_timestamp())
                    .map(|t| {
                        let (secs, nanos) = t.to_unix();
                        secs * 1000 + u64::from(nanos / 1_000_000)
                    });
                futures_util::future::ready(uploaded_ms.is_some_and(|ms| ms < cutoff_ms))
            })
            .map_ok(|o| o.location)
            .boxed();
        self.delete_all(old).await
    }

    /// Deletes every object `locations` yields; returns how many went. One deleted
    /// meanwhile (a concurrent delete) is what was wanted, not an error.
    pub(crate) async fn delete_all(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> Result<usize, ObjectsError> {
        let mut results = self.store.delete_stream(locations);
        let mut deleted = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    /// A local path holding `owner`'s file `id`, for a kernel to read: the stored file
    /// itself on the local backend, else a scratch copy in `scratch_dir` (removed when the
    /// [`LocalFile`] is dropped).
    pub async fn file_local(
        &self,
        owner: UserId,
        id: FileId,
        scratch_dir: &std::path::Path,
    ) -> Result<LocalFile, ObjectsError> {
        let meta = self.file_meta(owner, id).await?;
        if let Some(fs) = &self.local {
            let path = fs.path_to_filesystem(&data_path(owner, id))?;
            return Ok(LocalFile::in_place(meta, path));
        }
        let (meta, stream) = self.file_get(owner, id).await?;
        local::download(meta, stream, scratch_dir).await
    }
}

/// Writes the body into `writer`; returns its size and SHA-256 (hex).
async fn write_body<S, E>(
    writer: &mut WriteMultipart,
    body: S,
    limit: u64,
) -> Result<(u64, String), ObjectsError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ObjectsError::Body(e.into()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ObjectsError::TooLarge { limit });
        }
        hasher.update(&chunk);
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        writer.write(&chunk);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn data_path(owner: UserId, id: FileId) -> ObjectPath {
    ObjectPath::from_iter(["files".to_owned(), owner.0.to_string(), id.to_string()])
}

fn meta_path(owner: UserId, id: FileId) -> ObjectPath {
    ObjectPath::from_iter([
        "files".to_owned(),
        owner.0.to_string(),
        format!("{id}.json"),
    ])
}

/// Read size when streaming a local file: object_store's own stream of a local file reads
/// 8 KiB per blocking task, and the hand-offs cost more than the I/O (300 MiB from the page
/// cache: ~1 s against ~0.1 s in 256 KiB reads).
const LOCAL_READ: usize = 256 * 1024;

/// The bytes of `got` as a stream: a local file in [`LOCAL_READ`] pieces, anything else as
/// the backend streams it.
fn byte_stream(got: GetResult) -> BoxStream<'static, Result<Bytes, ObjectsError>> {
    match got.payload {
        GetResultPayload::File(file, _) => {
            let file = tokio::fs::File::from_std(file);
            tokio_util::io::ReaderStream::with_capacity(file, LOCAL_READ)
                .map_err(ObjectsError::from)
                .boxed()
        }
        GetResultPayload::Stream(s) => s.map_err(ObjectsError::from).boxed(),
    }
}

fn not_found(e: object_store::Error) -> ObjectsError {
    match e {
        object_store::Error::NotFound { .. } => ObjectsError::NotFound,
        other => ObjectsError::Store(other),
    }
}

/// The last path component of a client's file name, without control characters, at most
/// 255 bytes; `file` when nothing is left.
pub fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out: String = base.chars().filter(|c| !c.is_control()).collect();
    while out.len() > 255 {
        out.pop();
    }
    if out.is_empty() || out == "." || out == ".." {
        return "file".to_owned();
    }
    out
}

#[cfg(test)]
mod tests;
