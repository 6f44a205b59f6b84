//! The HTTP API over a real socket and a real SQLite store (one test binary).
//!
//! No worker runs here: jobs stay where the test puts them (see `helpers::TestApp::run`).

// Tests may unwrap: a panic is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod admin;
mod artifacts;
mod auth;
mod errors;
mod files;
mod follow;
mod helpers;
mod jobs;
mod limits;
mod oidc;
mod openapi;
mod ops;
mod reads;
mod security;
mod security_inputs;
mod series;
