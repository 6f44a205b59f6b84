//! Upload and download throughput of one 100 MiB file through [`Objects`]: `file_put` of a
//! stream in 256 KiB pieces (as an HTTP upload arrives), then `file_get` read to the end.
//!
//! ```text
//! cargo run --release -p kiln-objects --example throughput --features cloud -- BACKEND [RUNS]
//! ```
//! BACKEND is `local` (a temporary directory), `moto` or `fake-gcs` (the S3 server and the
//! GCS emulator the storage contract starts, from `KILN_PY_VENV`: see
//! `tests/emulators/mod.rs`), or a URL `Objects::from_url` takes (`s3://…`, `gs://…`), its
//! options in `KILN_BENCH_OPTIONS` as `key=value,key=value`. Each of RUNS (3) uploads a new
//! file, reads it back, checks its size and deletes it; MB/s are 10^6 bytes a second.

#![allow(clippy::unwrap_used)] // a benchmark that cannot unwrap should fail loudly

#[cfg(feature = "cloud")]
#[path = "../tests/emulators/mod.rs"]
mod emulators;

use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use kiln_domain::UserId;
use kiln_objects::{NewFile, Objects};

const SIZE: usize = 100 << 20;
const PIECE: usize = 256 << 10;

fn mb_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let backend = args
        .next()
        .expect("usage: throughput local|moto|fake-gcs|URL [RUNS]");
    let runs: usize = args.next().map_or(3, |n| n.parse().unwrap());

    let _dir;
    #[cfg(feature = "cloud")]
    let mut _server: Option<Box<dyn std::any::Any>> = None;
    let objects = match backend.as_str() {
        "local" => {
            _dir = tempfile::tempdir().unwrap();
            Objects::local(_dir.path()).unwrap()
        }
        #[cfg(feature = "cloud")]
        "moto" => {
            let moto = emulators::Moto::start().await.expect("moto_server");
            moto.bucket("kiln-bench");
            let objects = Objects::from_url("s3://kiln-bench", moto.options()).unwrap();
            _server = Some(Box::new(moto));
            objects
        }
        #[cfg(feature = "cloud")]
        "fake-gcs" => {
            let gcs = emulators::FakeGcs::start().await.expect("fake-gcs-server");
            gcs.bucket("kiln-bench").await;
            let key = gcs.service_account_key();
            let objects = Objects::from_url(
                "gs://kiln-bench",
                [
                    ("google_service_account_key", key.as_str()),
                    ("allow_http", "true"),
                ],
            )
            .unwrap();
            _server = Some(Box::new(gcs));
            objects
        }
        url => {
            let options = std::env::var("KILN_BENCH_OPTIONS").unwrap_or_default();
            let options: Vec<(String, String)> = options
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("KILN_BENCH_OPTIONS: key=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            Objects::from_url(url, options).unwrap()
        }
    };

    // The same 251-byte cycle as the storage contract: no run compresses better than another.
    let data: Vec<Bytes> = (0..SIZE)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .chunks(PIECE)
        .map(Bytes::copy_from_slice)
        .collect();
    let owner = UserId(1);
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let body = stream::iter(data.clone().into_iter().map(Ok::<_, std::io::Error>));
        let file = NewFile {
            name: "bench.bin".to_owned(),
            content_type: "application/octet-stream".to_owned(),
            created_at: chrono::Utc::now(),
        };
        let started = Instant::now();
        let meta = objects
            .file_put(owner, file, body, SIZE as u64)
            .await
            .unwrap();
        let up = mb_per_s(SIZE, started.elapsed().as_secs_f64());

        let started = Instant::now();
        let (_, mut bytes) = objects.file_get(owner, meta.id).await.unwrap();
        let mut read = 0;
        while let Some(piece) = bytes.next().await {
            read += piece.unwrap().len();
        }
        let down = mb_per_s(SIZE, started.elapsed().as_secs_f64());
        assert_eq!(read, SIZE);
        objects.file_delete(owner, meta.id).await.unwrap();
        println!("{backend} run {run}: upload {up:.1} MB/s, download {down:.1} MB/s");
        ups.push(up);
        downs.push(down);
    }
    println!(
        "{backend} median of {runs}: upload {:.1} MB/s, download {:.1} MB/s",
        median(ups),
        median(downs)
    );
}
