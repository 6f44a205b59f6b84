//! [`LocalFile`]: a stored file as a path on the local disk, for kernels that read files
//! with ordinary (and parallel, seeking) file I/O rather than a byte stream.

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::{FileMeta, ObjectsError};

/// A readable local copy of a stored file. On the local backend it is the stored file
/// itself; otherwise a scratch copy that is removed when this value is dropped.
#[derive(Debug)]
pub struct LocalFile {
    meta: FileMeta,
    path: std::path::PathBuf,
    /// Keeps the scratch copy alive; deleting it on drop.
    scratch: Option<tempfile::TempPath>,
}

impl LocalFile {
    pub(crate) fn in_place(meta: FileMeta, path: std::path::PathBuf) -> Self {
        Self {
            meta,
            path,
            scratch: None,
        }
    }

    /// Where to read it. Valid as long as this value lives.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Its metadata.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// Whether this is a scratch copy (a remote backend) rather than the stored file.
    pub fn is_copy(&self) -> bool {
        self.scratch.is_some()
    }
}

/// Copies `stream` into a new scratch file under `dir` (created if missing).
pub(crate) async fn download(
    meta: FileMeta,
    mut stream: BoxStream<'static, Result<Bytes, ObjectsError>>,
    dir: &std::path::Path,
) -> Result<LocalFile, ObjectsError> {
    tokio::fs::create_dir_all(dir).await?;
    let temp = tempfile::Builder::new()
        .prefix("kiln-input-")
        .tempfile_in(dir)?;
    let (file, path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    Ok(LocalFile {
        meta,
        path: path.to_path_buf(),
        scratch: Some(path),
    })
}
