//! Test helpers shared by Kiln's test suites (a dev-dependency only).
//!
//! # Layout
//! - [`wait`]: [`wait_until`], polling with a deadline instead of bare sleeps.
//! - [`http`]: a small keep-alive HTTP/1.1 client over a real socket, with JSON helpers.
//! - [`db`]: a SQLite store on a WAL file in a fresh temp dir.
//! - [`pg`]: a fresh PostgreSQL database per test, dropped afterwards (or a loud skip).
//! - [`factory`]: valid jobs and users in one line.
//! - [`browser`]: headless Chromium over WebDriver (chromedriver), for the dashboard.
//! - [`gemini`]: a fake of Google's Gemini REST API (`generateContent` and the File API).
#![warn(missing_docs)]

pub mod browser;
pub mod cluster;
pub mod db;
pub mod factory;
pub mod gemini;
pub mod http;
pub mod pg;
pub mod wait;

pub use db::TempSqlite;
pub use http::{Client, Part, Streaming, TestResponse, multipart_body};
pub use pg::TempPostgres;
pub use wait::wait_until;
