//! The artifacts of one attempt: the scratch directory its kernel writes to, and how those
//! files reach the object store once the attempt has succeeded (ADR 0008). The sweep of
//! artifacts left by pruned jobs and dead attempts is here too; `upkeep` calls it.
//!
//! Only a succeeded attempt publishes: the files of a failed, cancelled or timed-out
//! attempt may be half-written and are discarded. Publishing happens before the outcome is
//! stored, so a job that reads `succeeded` already has all its artifacts in place.

use kiln_api::ArtifactLink;
use kiln_domain::{Failure, Job, JobId, JobState};
use kiln_kernels::Artifacts;
use kiln_objects::{Objects, artifact::valid_name};
use kiln_store::{Outcome, StoreError};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use crate::Shared;

/// The scratch directory of `job`'s current attempt. A retry first deletes the stored
/// artifacts of earlier attempts (normally none: only a success publishes, but a stale
/// attempt whose lease was lost may have); failing that is a retryable failure.
pub(crate) async fn prepare(shared: &Shared, job: &Job) -> Result<Artifacts, Failure> {
    let artifacts = Artifacts::for_attempt(&shared.config.artifact_scratch, job.id, job.attempts);
    // The first attempt has nothing to clear: no object-store call on every job's path.
    if job.attempts > 1
        && let Some(objects) = &shared.config.objects
        && let Err(e) = objects.artifact_delete_others(job.id, job.attempts).await
    {
        return Err(Failure::retryable(
            "artifact_clear",
            format!("cannot clear the artifacts of earlier attempts: {e}"),
        ));
    }
    Ok(artifacts)
}

/// Moves a succeeded attempt's files into the object store, lists them in the result
/// (`artifacts: [{name, bytes, content_type, url}]`, when the result is an object) and
/// removes the scratch directory whatever the outcome. A failed upload turns success into a
/// retryable failure, and one still running at `deadline` (the job's timeout) into a
/// timeout; either way what this attempt had stored is deleted, so no partial set is ever
/// served.
pub(crate) async fn publish(
    shared: &Shared,
    job: &Job,
    artifacts: &Artifacts,
    outcome: Option<Outcome>,
    deadline: Option<Instant>,
) -> Option<Outcome> {
    if !artifacts.written() {
        return outcome;
    }
    let outcome = match (outcome, &shared.config.objects) {
        (Some(Outcome::Succeeded(_)), Some(objects))
            if let Some(failure) = over_quota(shared, objects, job, artifacts).await =>
        {
            Some(shared.failed(job, failure, shared.clock.now()))
        }
        (Some(Outcome::Succeeded(mut value)), Some(objects)) => {
            let stored = match deadline {
                Some(at) => timeout_at(at, upload(objects, job, artifacts)).await,
                None => Ok(upload(objects, job, artifacts).await),
            };
            let failure = match stored {
                Ok(Ok(links)) => {
                    let bytes = links.iter().map(|l| l.bytes).sum();
                    if let Value::Object(fields) = &mut value {
                        fields.insert("artifacts".into(), links_value(&links));
                    }
                    // Counted against the owner's storage quota from now on.
                    match shared.store.job_artifacts_set(None, job.id, bytes).await {
                        Ok(()) => None,
                        Err(e) => Some(Failure::retryable(
                            "artifact_store",
                            format!("cannot record the size of the job's artifacts: {e}"),
                        )),
                    }
                }
                Ok(Err(e)) => Some(Failure::retryable(
                    "artifact_store",
                    format!("cannot store the job's artifacts: {e}"),
                )),
                Err(_elapsed) => {
                    let ms = shared.catalogue.get(job.job_type).policy.timeout();
                    Some(Failure::timeout(ms.map_or(0, |t| t.as_millis() as u64)))
                }
            };
            match failure {
                None => Some(Outcome::Succeeded(value)),
                Some(failure) => {
                    if let Err(e) = objects.artifact_delete(job.id).await {
                        tracing::warn!(job_id = %job.id, error = %e, "partial artifacts left");
                    }
                    Some(shared.failed(job, failure, shared.clock.now()))
                }
            }
        }
        (Some(Outcome::Succeeded(value)), None) => {
            tracing::warn!(job_id = %job.id, "no object storage: the job's artifacts are discarded");
            Some(Outcome::Succeeded(value))
        }
        (other, _) => other,
    };
    discard(artifacts.dir()).await;
    outcome
}

/// A permanent `storage_quota` failure when the attempt's files would take the owner past
/// their storage quota (uploaded files and their jobs' artifacts together); `None` when
/// they fit, when the owner has no quota, or when the usage cannot be read (the upload then
/// goes ahead: a quota is not worth failing finished work for a read error).
async fn over_quota(
    shared: &Shared,
    objects: &Objects,
    job: &Job,
    artifacts: &Artifacts,
) -> Option<Failure> {
    let quota = shared.storage_quota_of(job.owner).await?;
    let new = scratch_bytes(artifacts.dir()).await;
    let files: u64 = match objects.file_list(job.owner).await {
        Ok(files) => files.iter().map(|f| f.size).sum(),
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "cannot read the owner's stored files");
            return None;
        }
    };
    let artifacts = match shared.store.owner_artifact_bytes(job.owner).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "cannot read the owner's artifact bytes");
            return None;
        }
    };
    let used = files.saturating_add(artifacts);
    (used.saturating_add(new) > quota).then(|| {
        Failure::permanent(
            "storage_quota",
            format!(
                "the job's artifacts ({new} bytes) do not fit its owner's storage quota \
                 ({used} of {quota} bytes in use by files and artifacts)"
            ),
        )
    })
}

/// The bytes of the files in an attempt's scratch directory.
async fn scratch_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0u64;
    if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            if let Ok(meta) = entry.metadata().await
                && meta.is_file()
            {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

fn links_value(links: &[ArtifactLink]) -> Value {
    serde_json::to_value(links).unwrap_or_else(|_| Value::Array(Vec::new()))
}

/// Stores every file of the scratch directory under the attempt's prefix; their links,
/// sorted by name.
async fn upload(
    objects: &Objects,
    job: &Job,
    artifacts: &Artifacts,
) -> Result<Vec<ArtifactLink>, kiln_objects::ObjectsError> {
    let mut links = Vec::new();
    let mut entries = tokio::fs::read_dir(artifacts.dir()).await?;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| valid_name(n)) else {
            tracing::warn!(job_id = %job.id, name = ?name, "artifact with an unusable name skipped");
            continue;
        };
        if !entry.file_type().await?.is_file() {
            continue;
        }
        let started = std::time::Instant::now();
        let (size, how) = objects
            .artifact_put_file(job.id, job.attempts, name, &entry.path())
            .await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(job_id = %job.id, name, size, how = ?how, ms, "artifact stored");
        links.push(ArtifactLink::new(job.id, name, size));
    }
    links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(links)
}

async fn discard(dir: &std::path::Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an attempt's scratch files");
    }
}

/// Deletes the stored artifacts of jobs a prune has just deleted (those whose result
/// listed artifacts): one prefix delete each, no listing of the whole store. A failure is
/// logged and left to the next reconciliation ([`sweep_stored`]).
pub(crate) async fn delete_pruned(shared: &Shared, jobs: &[JobId]) {
    let Some(objects) = &shared.config.objects else {
        return;
    };
    for &id in jobs {
        if let Err(e) = objects.artifact_delete(id).await {
            tracing::warn!(job_id = %id, error = %e, "cannot remove a pruned job's artifacts");
        }
    }
}

/// Deletes the stored artifacts of jobs that no longer exist, whatever removed them
/// (deleted while the node serving the delete could not reach the object store, pruned by a
/// node that died before its deletes). One listing of the job prefixes and one store
/// lookup per job that has artifacts: `upkeep` runs it at start-up and daily.
pub(crate) async fn sweep_stored(shared: &Shared) {
    let Some(objects) = &shared.config.objects else {
        return;
    };
    let jobs = match objects.artifact_jobs().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the stored artifacts");
            return;
        }
    };
    for id in jobs {
        if let Err(StoreError::NotFound) = shared.store.job_get(None, id).await
            && let Err(e) = objects.artifact_delete(id).await
        {
            tracing::warn!(job_id = %id, error = %e, "cannot remove a pruned job's artifacts");
        }
    }
}

/// Removes scratch directories no attempt is writing any more: their job is gone, not
/// running, or running a later attempt (left by a crash, or by a stale attempt).
pub(crate) async fn sweep_scratch(shared: &Shared) {
    let Ok(mut entries) = tokio::fs::read_dir(&shared.config.artifact_scratch).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let Some((id, attempt)) = name.to_str().and_then(parse_scratch_name) else {
            continue;
        };
        let live = match shared.store.job_get(None, id).await {
            Ok(job) => job.state == JobState::Running && job.attempts == attempt,
            Err(StoreError::NotFound) => false,
            // Unknown: keep it until the next sweep.
            Err(_) => true,
        };
        if !live {
            discard(&entry.path()).await;
        }
    }
}

/// `<job id, simple>.<attempt>`, as [`Artifacts::for_attempt`] names a directory.
fn parse_scratch_name(name: &str) -> Option<(JobId, u32)> {
    let (id, attempt) = name.split_once('.')?;
    Some((
        JobId(uuid::Uuid::try_parse(id).ok()?),
        attempt.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests;
