//! Kiln's HTTP API server (SPEC §3, §4): an axum [`router()`] over a [`kiln_store::Store`].
//!
//! # Layout
//! - [`app`]: [`router()`], the routes and their tower layers.
//! - [`state`]: [`AppState`] (store, catalogue, clock, config, token cache, shutdown flag).
//! - [`config`]: the [`ServerConfig`].
//! - [`problem`]: [`problem::ApiError`], the one error type, rendered as RFC 9457.
//! - [`extract`]: `Json`/`Path`/`Query` whose rejections are problems too.
//! - [`middleware`]: the request log line, problem rendering, the shutdown gate.
//! - [`auth`]: argon2id passwords, bearer tokens and the [`auth::CurrentUser`] extractor.
//! - [`bootstrap`]: [`ensure_admin`], the first `admin` user.
//! - [`metrics`]: `/metrics` as JSON or Prometheus text.
//! - [`follow`]: the live log fan-out behind `GET /jobs/{id}/logs?follow=true`.
//! - [`routes`]: the handlers; [`submit`], [`cancel`] and [`list`] hold the logic they
//!   need beyond one store call; [`view`] maps store rows to wire types.
//!
//! The server never runs jobs: cancels reach workers through the store's flag and signals.
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod cancel;
pub mod config;
pub mod extract;
pub mod follow;
pub mod list;
pub mod metrics;
pub mod middleware;
pub mod problem;
pub mod routes;
pub mod state;
pub mod submit;
pub mod view;

pub use app::router;
pub use bootstrap::{SetupError, ensure_admin};
pub use config::ServerConfig;
pub use problem::ApiError;
pub use state::AppState;
