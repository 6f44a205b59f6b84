//! `kiln files upload|ls|rm` and `kiln artifacts`: files streamed both ways, with a
//! progress bar on a terminal.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Method;
use hyper::body::Frame;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::api::Api;
use super::auth::rows;
use super::error::{CliError, CliResult};
use super::output::{Out, field, table, when};
use super::{Conn, resolve_id};

/// `kiln files …`.
#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FilesCommand,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln files upload|ls|rm`.
#[derive(Debug, Clone, Subcommand)]
pub enum FilesCommand {
    /// Uploads files; prints each one's id (for payloads such as `csv_aggregate file_id=…`).
    #[command(after_help = "Example:\n  kiln files upload sales.csv")]
    Upload {
        /// Files to upload.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Lists your files, newest first.
    #[command(after_help = "Example:\n  kiln files ls")]
    Ls,
    /// Deletes files by id.
    #[command(after_help = "Example:\n  kiln files rm 0193a4b2-…")]
    Rm {
        /// File ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Runs a `kiln files` subcommand.
pub async fn files(api: &Api, out: Out, command: FilesCommand) -> CliResult<i32> {
    match command {
        FilesCommand::Upload { paths } => {
            for path in paths {
                let meta = upload(api, &path).await?;
                if out.json {
                    let _ = out.json(&meta, true);
                } else {
                    let _ = out.line(&format!(
                        "{} {} ({} bytes)",
                        field(&meta["id"]),
                        field(&meta["name"]),
                        field(&meta["size"])
                    ));
                }
            }
        }
        FilesCommand::Ls => {
            let list = api.get("/api/v1/files").await?;
            if out.json {
                let _ = out.json(&list, false);
            } else {
                let rows = rows(&list, |f| {
                    vec![
                        field(&f["id"]),
                        field(&f["name"]),
                        field(&f["size"]),
                        field(&f["content_type"]),
                        when(&f["created_at"]),
                    ]
                });
                let _ = out.line(&table(&["id", "name", "bytes", "type", "uploaded"], rows));
            }
        }
        FilesCommand::Rm { ids } => {
            for id in ids {
                api.json(Method::DELETE, &format!("/api/v1/files/{id}"), None)
                    .await?;
                if out.json {
                    let _ = out.json(&json!({"id": id, "deleted": true}), true);
                } else {
                    let _ = out.line(&format!("Deleted file {id}."));
                }
            }
        }
    }
    Ok(0)
}

/// The multipart boundary of uploads.
const BOUNDARY: &str = "kiln-cli-3f8a91c2e7d54b06";

/// Streams one file as `multipart/form-data` (field `file`), with a progress bar.
async fn upload(api: &Api, path: &Path) -> CliResult<serde_json::Value> {
    let fail = |e: std::io::Error| CliError::usage(format!("cannot read {}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(fail)?;
    let size = file.metadata().await.map_err(fail)?.len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\r', '\n'], "_"))
        .unwrap_or_else(|| "upload".to_owned());
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let bar = bar(size, &format!("uploading {name}"));
    let counted = bar.clone();
    let bytes = ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
        if let Ok(c) = &chunk {
            counted.inc(c.len() as u64);
        }
        chunk
    });
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(bytes)
        .chain(futures_util::stream::once(
            async move { Ok(Bytes::from(tail)) },
        ))
        .map(|chunk| chunk.map(Frame::data));
    let body = BodyExt::boxed(StreamBody::new(stream));
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let answer = api.upload("/api/v1/files", content_type, body).await;
    bar.finish_and_clear();
    answer
}

/// `kiln artifacts`.
#[derive(Debug, Clone, Args)]
pub struct ArtifactsArgs {
    /// Job id, or a unique prefix of at least 8 characters.
    pub id: String,
    /// The artifact to download; without it, the job's artifacts are listed.
    pub name: Option<String>,
    /// Where to write it (`-`: stdout) [default: ./NAME].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln artifacts ID [NAME] [-o FILE]`.
pub async fn artifacts(api: &Api, out: Out, args: ArtifactsArgs) -> CliResult<i32> {
    let id = resolve_id(api, &args.id).await?;
    let Some(name) = args.name else {
        let list = api.get(&format!("/api/v1/jobs/{id}/artifacts")).await?;
        if out.json {
            let _ = out.json(&list, false);
        } else {
            let rows = rows(&list, |a| {
                vec![field(&a["name"]), field(&a["bytes"]), field(&a["url"])]
            });
            let _ = out.line(&table(&["name", "bytes", "url"], rows));
        }
        return Ok(0);
    };
    if name.contains('/') {
        return Err(CliError::usage("an artifact name has no `/`"));
    }
    let resp = api
        .open(&format!("/api/v1/jobs/{id}/artifacts/{name}"), "*/*")
        .await?;
    let size = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let target = args.output.unwrap_or_else(|| PathBuf::from(&name));
    let written = download(resp.into_body(), &target, size, &name).await?;
    if out.json {
        let _ = out.json(
            &json!({"name": name, "bytes": written, "path": target}),
            false,
        );
    } else if target != Path::new("-") {
        eprintln!("Saved {name} ({written} bytes) to {}.", target.display());
    }
    Ok(0)
}

/// Streams `body` to `target` (`-`: stdout); the bytes written.
async fn download(
    mut body: hyper::body::Incoming,
    target: &Path,
    size: u64,
    name: &str,
) -> CliResult<u64> {
    let fail =
        |e: std::io::Error| CliError::usage(format!("cannot write {}: {e}", target.display()));
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if target == Path::new("-") {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(tokio::fs::File::create(target).await.map_err(fail)?)
    };
    let bar = bar(size, &format!("downloading {name}"));
    let mut written = 0_u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CliError::server(format!("the download broke: {e}")))?;
        if let Ok(data) = frame.into_data() {
            sink.write_all(&data).await.map_err(fail)?;
            written += data.len() as u64;
            bar.inc(data.len() as u64);
        }
    }
    sink.flush().await.map_err(fail)?;
    bar.finish_and_clear();
    Ok(written)
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
fn bar(size: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}
