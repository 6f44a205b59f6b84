//! The dashboard's static files: embedded in the binary, served under content-hashed names.
//!
//! Each file in `crates/kiln-server/assets/` is compiled in with `include_bytes!` (a change
//! rebuilds the crate; no build script, no front-end build). On first use every file is
//! hashed (SHA-256, 12 hex digits in the name: `app.3f9c…e1.js`) and gzipped once, so a
//! page names exactly the version it was rendered with and a browser may keep it for a
//! year: a new binary serves new names. Hand-written rather than rust-embed: a dozen files,
//! and the hashing and compression are a few lines each.

use std::io::Write;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// One embedded file.
struct Asset {
    /// The file's own name (`app.js`): what pages ask [`url`] for.
    name: &'static str,
    /// The name it is served under (`app.<hash>.js`).
    hashed: String,
    content_type: &'static str,
    body: &'static [u8],
    /// Its gzip form, when that is smaller.
    gzip: Option<Vec<u8>>,
}

const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// `(name, media type, bytes)` of the file `assets/<name>`.
macro_rules! file {
    ($name:literal, $type:expr) => {
        (
            $name,
            $type,
            include_bytes!(concat!("../../assets/", $name)),
        )
    };
}

/// The files, by their own names.
const FILES: &[(&str, &str, &[u8])] = &[
    file!("app.css", CSS),
    file!("app.js", JS),
    file!("login.js", JS),
    file!("jobs.js", JS),
    file!("job.js", JS),
    file!("submit.js", JS),
    file!("ops.js", JS),
    file!("users.js", JS),
    file!("icon.svg", SVG),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| FILES.iter().map(load).collect());

fn load(&(name, content_type, body): &(&'static str, &'static str, &'static [u8])) -> Asset {
    let digest = hex::encode(Sha256::digest(body));
    let hashed = match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{}.{ext}", &digest[..12]),
        None => format!("{name}.{}", &digest[..12]),
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let gzip = gz
        .write_all(body)
        .and_then(|()| gz.finish())
        .ok()
        .filter(|g| g.len() < body.len());
    Asset {
        name,
        hashed,
        content_type,
        body,
        gzip,
    }
}

/// The URL of the embedded file `name` (`/assets/app.<hash>.js`).
///
/// # Panics
/// If no such file is embedded: a page naming a missing asset is a bug the first request
/// of every test finds.
pub fn url(name: &str) -> String {
    let asset = ASSETS.iter().find(|a| a.name == name);
    #[allow(clippy::expect_used)] // every caller names a file of `FILES`; tests load each page
    let asset = asset.expect("an embedded asset");
    format!("/assets/{}", asset.hashed)
}

/// `GET /assets/{file}`: a file under its hashed name, cached for a year, gzipped when the
/// client takes it; 404 under any other name.
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.hashed == file)
        .ok_or_else(|| ApiError::not_found("no such asset"))?;
    Ok(respond(asset, &headers))
}

/// `GET /favicon.ico`: the icon (browsers ask for it whatever the page links).
pub async fn favicon(headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == "icon.svg") {
        Some(asset) => respond(asset, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn respond(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", asset.hashed);
    let immutable = HeaderValue::from_static("public, max-age=31536000, immutable");
    if headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(CACHE_CONTROL, immutable)]).into_response();
    }
    let takes_gzip = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !refused
        });
    let mut resp = match (&asset.gzip, takes_gzip) {
        (Some(gzip), true) => {
            let mut resp = gzip.clone().into_response();
            resp.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            resp
        }
        _ => asset.body.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, immutable);
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, etag);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_assets_directory_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("the assets directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|f| f.0.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn every_file_has_a_hashed_name_and_its_url() {
        for asset in ASSETS.iter() {
            assert_ne!(asset.hashed, asset.name);
            assert_eq!(url(asset.name), format!("/assets/{}", asset.hashed));
            let ext = asset.name.rsplit('.').next().unwrap_or_default();
            assert!(asset.hashed.ends_with(ext), "{}", asset.hashed);
        }
    }

    #[test]
    fn gzip_is_served_only_to_a_client_that_takes_it() {
        let asset = ASSETS.iter().find(|a| a.name == "app.js").expect("app.js");
        let gzip = asset.gzip.as_ref().expect("app.js compresses");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("br, gzip;q=0.8"));
        let resp = respond(asset, &headers);
        assert_eq!(resp.headers()[CONTENT_ENCODING], "gzip");
        assert!(gzip.len() < asset.body.len());
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0, br"));
        let resp = respond(asset, &headers);
        assert!(!resp.headers().contains_key(CONTENT_ENCODING));
    }
}
