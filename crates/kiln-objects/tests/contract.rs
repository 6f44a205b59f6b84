//! The storage contract: the same checks of [`Objects`] (uploads, artifacts, listing,
//! pruning, deletes, missing objects, a 100 MB multipart upload) on every backend Kiln
//! stores objects in: memory, a local directory, PostgreSQL (the default object store of
//! a PostgreSQL deployment) and, with the `cloud` feature, S3 (a `moto_server` the test
//! starts) and GCS (a `fake-gcs-server` the test starts, behind an adapter for the XML
//! API's uploads it lacks: `emulators`). The PostgreSQL run is skipped loudly without a
//! server (a failure with `KILN_REQUIRE_POSTGRES=1`), the S3 and GCS runs without their
//! servers (with `KILN_REQUIRE_CLOUD=1`).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use kiln_domain::{JobId, UserId};
use kiln_objects::{NewFile, Objects, ObjectsError};
use object_store::ObjectStore;
use object_store::path::Path;
use sha2::{Digest, Sha256};

#[cfg(feature = "cloud")]
mod emulators;

const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);
const MB: usize = 1 << 20;

fn new_file(name: &str) -> NewFile {
    NewFile {
        name: name.to_owned(),
        content_type: "application/octet-stream".to_owned(),
        created_at: chrono::Utc::now(),
    }
}

/// `len` bytes of a pattern that repeats only every 251 bytes (so a misplaced chunk shows).
fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// `data` as a request body of `piece`-byte pieces.
fn body(data: &[u8], piece: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + use<> {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

/// Every object in the store.
async fn everything(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    let mut all: Vec<String> = store
        .list(None)
        .map_ok(|o| o.location.to_string())
        .try_collect()
        .await
        .unwrap();
    all.sort();
    all
}

async fn read_all(
    s: futures_util::stream::BoxStream<'static, Result<Bytes, ObjectsError>>,
) -> Vec<u8> {
    let parts: Vec<Bytes> = s.try_collect().await.unwrap();
    parts.concat()
}

async fn run_contract(store: Arc<dyn ObjectStore>) {
    let objects = Objects::new(Arc::clone(&store));
    assert!(everything(&store).await.is_empty(), "a fresh store");

    // An upload of several parts reads back byte-exact, with its size and sha256.
    let data = sample(11 * MB + 12_345);
    let meta = objects
        .file_put(
            ALICE,
            new_file("../x/data.bin"),
            body(&data, 70_000),
            1 << 30,
        )
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.sha256, hex::encode(Sha256::digest(&data)));
    assert_eq!(meta.name, "data.bin");
    assert_eq!(meta.content_type, "application/octet-stream");
    let (got, bytes) = objects.file_get(ALICE, meta.id).await.unwrap();
    assert_eq!(got, meta);
    assert_eq!(read_all(bytes).await, data);
    assert_eq!(objects.file_list(ALICE).await.unwrap(), vec![meta.clone()]);

    // Ranges across chunk and part boundaries, and a range past the end.
    let location = everything(&store)
        .await
        .into_iter()
        .find(|p| !p.ends_with(".json"))
        .unwrap();
    let location = Path::from(location);
    for range in [
        0..10,
        MB - 3..MB + 5,
        5 * MB - 1..5 * MB + 1,
        data.len() - 7..data.len(),
    ] {
        let got = store
            .get_range(&location, range.start as u64..range.end as u64)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[range.clone()], "range {range:?}");
    }
    let head = store.head(&location).await.unwrap();
    assert_eq!(head.size, data.len() as u64);

    // Another owner sees nothing of it; its owner deletes it, data and metadata.
    assert!(matches!(
        objects.file_get(BOB, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(matches!(
        objects.file_delete(BOB, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(objects.file_list(BOB).await.unwrap().is_empty());
    objects.file_delete(ALICE, meta.id).await.unwrap();
    assert!(matches!(
        objects.file_meta(ALICE, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(everything(&store).await.is_empty(), "both objects deleted");

    // Over the limit: refused, nothing kept (the parts written so far are aborted).
    let err = objects
        .file_put(
            ALICE,
            new_file("big"),
            body(&sample(6 * MB), 65_536),
            5 * MB as u64,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectsError::TooLarge { .. }), "{err:?}");
    assert!(everything(&store).await.is_empty());

    // An empty file is a file.
    let empty = objects
        .file_put(ALICE, new_file("empty"), body(b"", 1), 10)
        .await
        .unwrap();
    let (_, bytes) = objects.file_get(ALICE, empty.id).await.unwrap();
    assert!(read_all(bytes).await.is_empty());

    // Pruning by upload time reaches every owner's files and nothing newer.
    objects
        .file_put(BOB, new_file("b"), body(b"x\n", 1), 10)
        .await
        .unwrap();
    let hour = chrono::TimeDelta::hours(1);
    assert_eq!(
        objects.file_prune(chrono::Utc::now() - hour).await.unwrap(),
        0
    );
    assert_eq!(
        objects.file_prune(chrono::Utc::now() + hour).await.unwrap(),
        4
    );
    assert!(everything(&store).await.is_empty());

    // Artifacts: per attempt, listed by name, replaced by name, found by job, deleted.
    let job = JobId(uuid::Uuid::now_v7());
    let other = JobId(uuid::Uuid::now_v7());
    objects
        .artifact_put_bytes(job, 1, "b.txt", b"first".to_vec())
        .await
        .unwrap();
    objects
        .artifact_put_bytes(job, 1, "b.txt", b"second".to_vec())
        .await
        .unwrap();
    objects
        .artifact_put_bytes(job, 1, "a.json", b"{}".to_vec())
        .await
        .unwrap();
    objects
        .artifact_put_bytes(job, 2, "c.txt", b"retry".to_vec())
        .await
        .unwrap();
    objects
        .artifact_put_bytes(other, 1, "d.txt", b"d".to_vec())
        .await
        .unwrap();
    let listed: Vec<(String, u64)> = objects
        .artifact_list(job, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.size))
        .collect();
    assert_eq!(listed, [("a.json".into(), 2), ("b.txt".into(), 6)]);
    let (size, bytes) = objects.artifact_get(job, 1, "b.txt").await.unwrap();
    assert_eq!((size, read_all(bytes).await), (6, b"second".to_vec()));
    let mut jobs = objects.artifact_jobs().await.unwrap();
    jobs.sort_by_key(|j| j.0);
    assert_eq!(jobs, [job, other]);
    assert_eq!(objects.artifact_delete_others(job, 2).await.unwrap(), 2);
    assert!(objects.artifact_list(job, 1).await.unwrap().is_empty());
    assert_eq!(objects.artifact_delete(job).await.unwrap(), 1);
    assert_eq!(objects.artifact_delete(other).await.unwrap(), 1);
    assert!(matches!(
        objects.artifact_get(job, 2, "c.txt").await,
        Err(ObjectsError::NotFound)
    ));
    assert!(everything(&store).await.is_empty());

    // A missing object is `NotFound` to every reader, and deleting it again is no error
    // to the caller that only wants it gone.
    let missing = Path::from("files/1/nothing");
    assert!(matches!(
        store.get(&missing).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        store.head(&missing).await,
        Err(object_store::Error::NotFound { .. })
    ));

    // A 100 MB upload, streamed in pieces, reads back whole.
    let big = sample(100 * MB);
    let meta = objects
        .file_put(ALICE, new_file("big.bin"), body(&big, 256 * 1024), 1 << 30)
        .await
        .unwrap();
    assert_eq!(meta.size, big.len() as u64);
    let (_, bytes) = objects.file_get(ALICE, meta.id).await.unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0;
    let mut bytes = bytes;
    while let Some(piece) = bytes.next().await {
        let piece = piece.unwrap();
        total += piece.len();
        hasher.update(&piece);
    }
    assert_eq!(total, big.len());
    assert_eq!(hex::encode(hasher.finalize()), meta.sha256);
    objects.file_delete(ALICE, meta.id).await.unwrap();
    assert!(everything(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    run_contract(Arc::new(object_store::memory::InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap();
    run_contract(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(db) = kiln_testkit::pg::TempPostgres::create().await else {
        return;
    };
    run_contract(db.store().await.objects()).await;
}

#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3() {
    let Some(moto) = emulators::Moto::start().await else {
        return;
    };
    moto.bucket("kiln-contract");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&moto.endpoint)
        .with_allow_http(true)
        .with_bucket_name("kiln-contract")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    run_contract(Arc::new(store)).await;

    // The URL form a deployment configures reaches the same bucket.
    let objects =
        kiln_objects::Objects::from_url("s3://kiln-contract/under/a/prefix", moto.options())
            .unwrap();
    round_trip(&objects).await;
}

#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs() {
    let Some(gcs) = emulators::FakeGcs::start().await else {
        return;
    };
    gcs.bucket("kiln-contract").await;
    // An emulator's service account: its endpoint, no OAuth (object_store's way to reach
    // one); plain HTTP allowed.
    let store = object_store::gcp::GoogleCloudStorageBuilder::new()
        .with_bucket_name("kiln-contract")
        .with_service_account_key(gcs.service_account_key())
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap();
    run_contract(Arc::new(store)).await;

    // The URL form a deployment configures reaches the same bucket.
    let key = gcs.service_account_key();
    let objects = kiln_objects::Objects::from_url(
        "gs://kiln-contract/under/a/prefix",
        [
            ("google_service_account_key", key.as_str()),
            ("allow_http", "true"),
        ],
    )
    .unwrap();
    round_trip(&objects).await;
}

/// A small file stored and read back through `objects` (a deployment's URL form).
#[cfg(feature = "cloud")]
async fn round_trip(objects: &kiln_objects::Objects) {
    let meta = objects
        .file_put(ALICE, new_file("a.csv"), body(b"a\n1\n", 3), 64)
        .await
        .unwrap();
    let (_, bytes) = objects.file_get(ALICE, meta.id).await.unwrap();
    assert_eq!(read_all(bytes).await, b"a\n1\n");
}
