//! Unit tests of [`Objects`] on a temp directory (and the in-memory backend for the
//! scratch-copy path).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use kiln_domain::UserId;
use sha2::{Digest, Sha256};

use super::*;

const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);

fn new_file(name: &str) -> NewFile {
    NewFile {
        name: name.to_owned(),
        content_type: "text/csv".to_owned(),
        created_at: chrono::Utc::now(),
    }
}

/// `data` as a stream of `chunk`-byte pieces.
fn chunks(data: &[u8], chunk: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(pieces)
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Every regular file under `dir` (none if it does not exist).
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_put_file_reads_back_byte_exact_with_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::local(&dir.path().join("objects")).unwrap();
    let data = sample(3 * PART_SIZE + 12_345);
    let meta = objects
        .file_put(
            ALICE,
            new_file("../x/data.csv"),
            chunks(&data, 70_000),
            1 << 30,
        )
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.sha256, hex::encode(Sha256::digest(&data)));
    assert_eq!(meta.name, "data.csv");
    assert_eq!(objects.file_meta(ALICE, meta.id).await.unwrap(), meta);
    let (got_meta, stream) = objects.file_get(ALICE, meta.id).await.unwrap();
    let bytes: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(got_meta, meta);
    assert_eq!(bytes.concat(), data);
    let local = objects
        .file_local(ALICE, meta.id, dir.path())
        .await
        .unwrap();
    assert!(!local.is_copy());
    assert_eq!(std::fs::read(local.path()).unwrap(), data);
}

#[tokio::test]
async fn over_the_limit_is_too_large_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::local(&root).unwrap();
    let data = sample(2 * PART_SIZE + 1);
    let err = objects
        .file_put(
            ALICE,
            new_file("big"),
            chunks(&data, 4096),
            2 * PART_SIZE as u64,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectsError::TooLarge { limit } if limit == 2 * PART_SIZE as u64));
    assert_eq!(files_under(&root), Vec::<std::path::PathBuf>::new());
    // Exactly at the limit is fine.
    let meta = objects
        .file_put(ALICE, new_file("ok"), chunks(&data[..100], 7), 100)
        .await
        .unwrap();
    assert_eq!(meta.size, 100);
}

#[tokio::test]
async fn a_failing_body_stream_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::local(&root).unwrap();
    let body = stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(std::io::Error::other("client went away")),
    ]);
    let err = objects
        .file_put(ALICE, new_file("x"), body, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectsError::Body(_)), "{err:?}");
    assert!(files_under(&root).is_empty());
}

#[tokio::test]
async fn an_upload_dropped_midway_leaves_nothing_behind() {
    // A client that goes away or a request timeout drops the upload future mid-stream.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::local(&root).unwrap();
    let first = sample(3 * PART_SIZE);
    let body = chunks(&first, 65_536).chain(stream::pending());
    let put = objects.file_put(ALICE, new_file("slow"), body, 1 << 30);
    let timed_out = tokio::time::timeout(std::time::Duration::from_millis(300), put).await;
    assert!(timed_out.is_err());
    // The staging file is removed by a blocking task spawned on drop.
    for _ in 0..200 {
        if files_under(&root).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(files_under(&root), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn another_owner_sees_nothing_and_delete_removes_both_objects() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::local(&root).unwrap();
    let meta = objects
        .file_put(ALICE, new_file("a.csv"), chunks(b"a,b\n1,2\n", 3), 1024)
        .await
        .unwrap();
    assert!(matches!(
        objects.file_meta(BOB, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(matches!(
        objects.file_get(BOB, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(matches!(
        objects.file_delete(BOB, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert_eq!(files_under(&root).len(), 2);
    objects.file_delete(ALICE, meta.id).await.unwrap();
    assert!(files_under(&root).is_empty());
    assert!(matches!(
        objects.file_meta(ALICE, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(matches!(
        objects.file_delete(ALICE, meta.id).await,
        Err(ObjectsError::NotFound)
    ));
    assert!(matches!(
        FileId::parse("../../etc"),
        Err(ObjectsError::NotFound)
    ));
}

#[tokio::test]
async fn a_prune_deletes_every_user_s_files_uploaded_before_the_cutoff_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::local(&root).unwrap();
    for (owner, name) in [(ALICE, "a.csv"), (BOB, "b.csv")] {
        objects
            .file_put(owner, new_file(name), chunks(b"x\n1\n", 2), 1024)
            .await
            .unwrap();
    }
    let hour = chrono::TimeDelta::hours(1);
    // Uploaded after the cutoff: kept.
    assert_eq!(
        objects.file_prune(chrono::Utc::now() - hour).await.unwrap(),
        0
    );
    assert_eq!(files_under(&root).len(), 4);
    // Uploaded before it: the data and the metadata of both users' files go.
    assert_eq!(
        objects.file_prune(chrono::Utc::now() + hour).await.unwrap(),
        4
    );
    assert!(objects.file_list(ALICE).await.unwrap().is_empty());
    assert!(objects.file_list(BOB).await.unwrap().is_empty());
    assert!(files_under(&root).is_empty());
    // Nothing to prune is no error.
    assert_eq!(
        objects.file_prune(chrono::Utc::now() + hour).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_remote_backend_gives_kernels_a_scratch_copy_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::new(Arc::new(object_store::memory::InMemory::new()));
    let data = sample(5000);
    let meta = objects
        .file_put(BOB, new_file("m.bin"), chunks(&data, 999), 1 << 20)
        .await
        .unwrap();
    let local = objects
        .file_local(BOB, meta.id, &dir.path().join("scratch"))
        .await
        .unwrap();
    assert!(local.is_copy());
    assert_eq!(std::fs::read(local.path()).unwrap(), data);
    let path = local.path().to_path_buf();
    drop(local);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_url_names_the_backend_and_a_prefix_within_it() {
    let objects = Objects::from_url("memory:///kiln/prod", [("unused_key", "x")]).unwrap();
    let meta = objects
        .file_put(ALICE, new_file("u.csv"), chunks(b"a\n1\n", 2), 64)
        .await
        .unwrap();
    assert_eq!(objects.file_meta(ALICE, meta.id).await.unwrap(), meta);
    let no_options: [(&str, &str); 0] = [];
    assert!(matches!(
        Objects::from_url("not a url", no_options),
        Err(ObjectsError::Config(_))
    ));
    #[cfg(not(feature = "cloud"))]
    assert!(Objects::from_url("s3://bucket/x", no_options).is_err());
}

#[test]
fn client_file_names_lose_their_directories() {
    assert_eq!(clean_name("C:\\Users\\me\\data.csv"), "data.csv");
    assert_eq!(clean_name("/etc/passwd"), "passwd");
    assert_eq!(clean_name(".."), "file");
    assert_eq!(clean_name(""), "file");
    assert_eq!(clean_name("a\u{0}b"), "ab");
    assert_eq!(clean_name(&"é".repeat(200)).len(), 254);
}

#[test]
fn an_error_chain_says_its_cause_once() {
    let e = crate::ObjectsError::from(std::io::Error::other("disk full"));
    assert_eq!(e.to_string(), "local I/O: disk full");
    assert!(std::error::Error::source(&e).is_none());
}

#[test]
fn a_full_disk_is_recognised_through_the_object_store_error() {
    use std::io::{Error, ErrorKind};
    let full = || Error::from(ErrorKind::StorageFull);
    assert!(ObjectsError::Io(full()).is_full());
    let wrapped = object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(full()),
    };
    assert!(ObjectsError::Store(wrapped).is_full());
    assert!(ObjectsError::Io(Error::from(ErrorKind::QuotaExceeded)).is_full());
    assert!(!ObjectsError::Io(Error::from(ErrorKind::PermissionDenied)).is_full());
    assert!(!ObjectsError::NotFound.is_full());
}
