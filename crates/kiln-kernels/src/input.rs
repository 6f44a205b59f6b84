//! [`Inputs`]: the uploaded files a job may read — its owner's, and no one else's.

use std::path::PathBuf;

use kiln_domain::UserId;
use kiln_objects::{FileId, LocalFile, Objects, ObjectsError};

use crate::KernelError;

/// The files of one job's owner, as a kernel reads them.
#[derive(Debug, Clone)]
pub struct Inputs {
    objects: Objects,
    owner: UserId,
    scratch: PathBuf,
}

impl Inputs {
    /// `owner`'s files in `objects`; copies of remote files go to `scratch`.
    pub fn new(objects: Objects, owner: UserId, scratch: PathBuf) -> Self {
        Self {
            objects,
            owner,
            scratch,
        }
    }

    /// A local path holding the owner's file `file_id`. A file that is gone (deleted after
    /// the job was submitted) or not the owner's is a permanent `file_not_found`; a backend
    /// failure is retryable.
    pub async fn local(&self, file_id: &str) -> Result<LocalFile, KernelError> {
        let missing = || KernelError::Permanent {
            code: "file_not_found",
            source: format!("no file {file_id} (it may have been deleted)").into(),
        };
        let id = FileId::parse(file_id).map_err(|_| missing())?;
        match self.objects.file_local(self.owner, id, &self.scratch).await {
            Ok(file) => Ok(file),
            Err(ObjectsError::NotFound) => Err(missing()),
            Err(e) => Err(KernelError::Retryable {
                code: "file_read",
                source: e.into(),
            }),
        }
    }
}
