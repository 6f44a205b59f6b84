//! Job artifacts: the files a job's kernel wrote, kept as `artifacts/<job id>/<attempt>/<name>`.
//!
//! Kernels write to a local scratch file (they stream hundreds of MB and read some back);
//! the worker then hands each file to [`Objects::artifact_put_file`]. On the local backend
//! that is a rename into place when scratch and store share a file system (no second copy
//! of a 300 MB CSV); otherwise, and on every other backend, the file is streamed in
//! [`ARTIFACT_PART`] parts through a multipart upload, so memory stays at a few parts.
//!
//! The attempt number in the path fences artifacts like every other write of an attempt
//! (ADR 0003): the API serves the prefix of the job's current attempt only, so a stale
//! attempt that uploads late can never mix its files into a newer attempt's.

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use kiln_domain::JobId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::{Objects, ObjectsError, byte_stream, not_found};

/// Part size of a streamed artifact upload. S3 needs parts of at least 5 MiB (except the
/// last); 8 MiB with two in flight bounds memory at ~24 MiB per upload.
pub const ARTIFACT_PART: usize = 8 << 20;
/// Parts in flight at once per artifact upload.
const PARTS_IN_FLIGHT: usize = 2;

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactMeta {
    /// Its file name (no directories).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// How an artifact got into the store (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Renamed into the local backend's directory: no bytes copied.
    Renamed,
    /// Streamed through the backend's upload.
    Copied,
}

impl Objects {
    /// Stores the local file `path` as artifact `name` of `job`'s `attempt`, replacing one
    /// of that name. The source file is consumed: renamed into place when the local
    /// backend allows it, else copied and then removed. Returns its size and how it went.
    pub async fn artifact_put_file(
        &self,
        job: JobId,
        attempt: u32,
        name: &str,
        path: &std::path::Path,
    ) -> Result<(u64, Placement), ObjectsError> {
        let location = artifact_path(job, attempt, name)?;
        let size = tokio::fs::metadata(path).await?.len();
        if let Some(fs) = &self.local {
            let dest = fs.path_to_filesystem(&location)?;
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            // On another file system (EXDEV), or a rename the platform refuses, the copy
            // below either works or reports its own error.
            if tokio::fs::rename(path, &dest).await.is_ok() {
                return Ok((size, Placement::Renamed));
            }
        }
        self.copy_in(&location, path, size).await?;
        tokio::fs::remove_file(path).await?;
        Ok((size, Placement::Copied))
    }

    /// Stores `bytes` as artifact `name` of `job`'s `attempt` in one put (for small
    /// artifacts made in memory, such as a reported result), replacing one of that name.
    pub async fn artifact_put_bytes(
        &self,
        job: JobId,
        attempt: u32,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<u64, ObjectsError> {
        let location = artifact_path(job, attempt, name)?;
        let size = bytes.len() as u64;
        self.store.put(&location, PutPayload::from(bytes)).await?;
        Ok(size)
    }

    /// Streams the file at `path` into `location`: one put when it fits a part, else a
    /// multipart upload (aborted on error, so nothing partial is left).
    async fn copy_in(
        &self,
        location: &ObjectPath,
        path: &std::path::Path,
        size: u64,
    ) -> Result<(), ObjectsError> {
        let mut file = tokio::fs::File::open(path).await?;
        if size <= ARTIFACT_PART as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).await?;
            self.store.put(location, PutPayload::from(buf)).await?;
            return Ok(());
        }
        let upload = self.store.put_multipart(location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, ARTIFACT_PART);
        match copy_parts(&mut file, &mut writer).await {
            Ok(()) => Ok(writer.finish().await.map(|_| ())?),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// The artifacts of `job`'s `attempt`, sorted by name.
    pub async fn artifact_list(
        &self,
        job: JobId,
        attempt: u32,
    ) -> Result<Vec<ArtifactMeta>, ObjectsError> {
        let prefix = attempt_prefix(job, attempt);
        let listed = self.store.list_with_delimiter(Some(&prefix)).await?;
        let mut out: Vec<ArtifactMeta> = listed
            .objects
            .into_iter()
            .filter_map(|o| {
                let name = o.location.filename()?.to_owned();
                valid_name(&name).then_some(ArtifactMeta { name, size: o.size })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The size and a stream of the bytes of artifact `name` of `job`'s `attempt`;
    /// [`ObjectsError::NotFound`] for a missing or invalid name.
    pub async fn artifact_get(
        &self,
        job: JobId,
        attempt: u32,
        name: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, ObjectsError>>), ObjectsError> {
        let location = artifact_path(job, attempt, name)?;
        let got = self.store.get(&location).await.map_err(not_found)?;
        Ok((got.meta.size, byte_stream(got)))
    }

    /// Deletes every artifact of `job`, of all attempts; returns how many objects went.
    pub async fn artifact_delete(&self, job: JobId) -> Result<usize, ObjectsError> {
        self.delete_prefix(&job_prefix(job)).await
    }

    /// Deletes the artifacts of `job`'s attempts other than `keep`: a retry starts clean.
    pub async fn artifact_delete_others(
        &self,
        job: JobId,
        keep: u32,
    ) -> Result<usize, ObjectsError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&job_prefix(job)))
            .await?;
        let mut deleted = 0;
        for dir in listed.common_prefixes {
            if dir.filename() != Some(keep.to_string().as_str()) {
                deleted += self.delete_prefix(&dir).await?;
            }
        }
        Ok(deleted)
    }

    /// The jobs that have artifacts (for the sweep that removes those of pruned jobs).
    /// One listing of the `artifacts/` level: a page per thousand jobs on S3.
    pub async fn artifact_jobs(&self) -> Result<Vec<JobId>, ObjectsError> {
        let root = ObjectPath::from("artifacts");
        let listed = match self.store.list_with_delimiter(Some(&root)).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| uuid::Uuid::try_parse(p.filename()?).ok())
            .map(JobId)
            .collect())
    }

    async fn delete_prefix(&self, prefix: &ObjectPath) -> Result<usize, ObjectsError> {
        let locations = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        self.delete_all(locations).await
    }
}

/// Copies `file` into `writer` in [`ARTIFACT_PART`] pieces, at most
/// [`PARTS_IN_FLIGHT`] of them uploading at once.
async fn copy_parts(
    file: &mut tokio::fs::File,
    writer: &mut WriteMultipart,
) -> Result<(), ObjectsError> {
    loop {
        let mut buf = BytesMut::with_capacity(ARTIFACT_PART);
        while buf.len() < ARTIFACT_PART {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        writer.put(buf.freeze());
    }
}

fn job_prefix(job: JobId) -> ObjectPath {
    ObjectPath::from_iter(["artifacts".to_owned(), job.0.to_string()])
}

fn attempt_prefix(job: JobId, attempt: u32) -> ObjectPath {
    ObjectPath::from_iter([
        "artifacts".to_owned(),
        job.0.to_string(),
        attempt.to_string(),
    ])
}

fn artifact_path(job: JobId, attempt: u32, name: &str) -> Result<ObjectPath, ObjectsError> {
    if !valid_name(name) {
        return Err(ObjectsError::NotFound);
    }
    Ok(ObjectPath::from_iter([
        "artifacts".to_owned(),
        job.0.to_string(),
        attempt.to_string(),
        name.to_owned(),
    ]))
}

/// Names kernels write: letters, digits, `.`, `-`, `_`, at most 128 bytes, not starting with
/// a dot (so no `..`, no path separators, and never the local backend's `name#N` staging
/// files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests;
