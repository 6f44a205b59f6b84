//! Artifacts on the local backend (the rename path) and in memory (the streamed copy).

use std::sync::Arc;

use futures_util::stream::TryStreamExt;
use kiln_domain::JobId;

use super::*;

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn scratch_file(dir: &std::path::Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

async fn read_back(objects: &Objects, job: JobId, attempt: u32, name: &str) -> (u64, Vec<u8>) {
    let (size, stream) = objects.artifact_get(job, attempt, name).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    (size, chunks.concat())
}

fn memory() -> Objects {
    Objects::new(Arc::new(object_store::memory::InMemory::new()))
}

#[tokio::test]
async fn on_the_local_backend_an_artifact_is_renamed_into_place_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::local(&dir.path().join("objects")).unwrap();
    let data = sample(1_000_003);
    let src = scratch_file(&dir.path().join("scratch"), "primes.npy", &data);
    let job = JobId::new();

    let (size, how) = objects
        .artifact_put_file(job, 1, "primes.npy", &src)
        .await
        .unwrap();

    assert_eq!((size, how), (data.len() as u64, Placement::Renamed));
    assert!(!src.exists(), "the scratch file was moved");
    assert_eq!(
        read_back(&objects, job, 1, "primes.npy").await,
        (data.len() as u64, data)
    );
}

#[tokio::test]
async fn a_large_artifact_streams_into_a_remote_backend_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let objects = memory();
    // Two and a half parts: a multipart upload with a short last part.
    let data = sample(2 * ARTIFACT_PART + ARTIFACT_PART / 2 + 7);
    let src = scratch_file(dir.path(), "data.csv", &data);
    let job = JobId::new();

    let (size, how) = objects
        .artifact_put_file(job, 3, "data.csv", &src)
        .await
        .unwrap();

    assert_eq!((size, how), (data.len() as u64, Placement::Copied));
    assert!(!src.exists(), "the scratch file was removed after the copy");
    let (got_size, got) = read_back(&objects, job, 3, "data.csv").await;
    assert_eq!(got_size, data.len() as u64);
    assert!(got == data, "the bytes differ");
}

#[tokio::test]
async fn listing_shows_one_attempt_and_a_retry_clears_the_others() {
    let dir = tempfile::tempdir().unwrap();
    for objects in [
        Objects::local(&dir.path().join("objects")).unwrap(),
        memory(),
    ] {
        let job = JobId::new();
        let scratch = dir.path().join("scratch");
        for (attempt, name, len) in [(1, "old.npy", 10), (2, "b.csv", 5), (2, "a.json", 3)] {
            let src = scratch_file(&scratch, name, &sample(len));
            objects
                .artifact_put_file(job, attempt, name, &src)
                .await
                .unwrap();
        }

        let listed = objects.artifact_list(job, 2).await.unwrap();
        assert_eq!(
            listed,
            [
                ArtifactMeta {
                    name: "a.json".into(),
                    size: 3
                },
                ArtifactMeta {
                    name: "b.csv".into(),
                    size: 5
                },
            ]
        );
        assert_eq!(objects.artifact_jobs().await.unwrap(), [job]);

        assert_eq!(objects.artifact_delete_others(job, 2).await.unwrap(), 1);
        assert!(objects.artifact_list(job, 1).await.unwrap().is_empty());
        assert_eq!(objects.artifact_list(job, 2).await.unwrap().len(), 2);

        assert_eq!(objects.artifact_delete(job).await.unwrap(), 2);
        assert!(objects.artifact_list(job, 2).await.unwrap().is_empty());
        assert!(objects.artifact_jobs().await.unwrap().is_empty());
        assert_eq!(objects.artifact_delete(job).await.unwrap(), 0, "idempotent");
    }
    // The local backend leaves no files behind.
    let left: Vec<_> = crate::tests::files_under(&dir.path().join("objects"));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn missing_and_unsafe_names_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::local(&dir.path().join("objects")).unwrap();
    let job = JobId::new();
    let src = scratch_file(dir.path(), "x.npy", b"x");
    objects
        .artifact_put_file(job, 1, "x.npy", &src)
        .await
        .unwrap();
    for name in [
        "missing.npy",
        "..",
        "../x.npy",
        "a/b",
        ".x.npy",
        "x.npy#1",
        "",
    ] {
        assert!(
            matches!(
                objects.artifact_get(job, 1, name).await,
                Err(ObjectsError::NotFound)
            ),
            "{name}"
        );
    }
    // Another attempt's prefix does not serve it either.
    assert!(matches!(
        objects.artifact_get(job, 2, "x.npy").await,
        Err(ObjectsError::NotFound)
    ));
}

#[test]
fn only_plain_file_names_are_valid() {
    for good in ["primes.npy", "data.csv", "a_b-c.1"] {
        assert!(valid_name(good), "{good}");
    }
    for bad in [
        "", ".", "..", "../x", "a/b", ".hidden", "a\\b", "x y", "é.csv", "a#1",
    ] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[tokio::test]
async fn a_job_without_artifacts_lists_and_clears_to_nothing_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    // Before anything was stored (no `artifacts/` directory yet), then beside another job.
    let local = Objects::local(&dir.path().join("objects")).unwrap();
    for objects in [local.clone(), memory(), local] {
        let job = JobId::new();
        assert!(objects.artifact_list(job, 1).await.unwrap().is_empty());
        assert_eq!(objects.artifact_delete_others(job, 2).await.unwrap(), 0);
        assert_eq!(objects.artifact_delete(job).await.unwrap(), 0);
        let src = scratch_file(&dir.path().join("scratch"), "x.csv", b"x");
        objects
            .artifact_put_file(JobId::new(), 1, "x.csv", &src)
            .await
            .unwrap();
    }
}
