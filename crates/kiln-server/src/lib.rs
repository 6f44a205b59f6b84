//! Kiln's HTTP API server: an axum [`router()`] over a [`kiln_store::Store`]. The contract it
//! keeps is described in `docs/design.md` ("HTTP API", "Security").
//!
//! # Layout
//! - `app`: [`router()`], the routes and their tower layers.
//! - `state`: [`AppState`] (store, catalogue, clock, config, token cache, shutdown flag).
//! - `config`: the [`ServerConfig`].
//! - `dashboard`: the web dashboard at `/` (page shells, embedded assets, the sign-in form).
//! - `problem`: [`ApiError`], the one error type, rendered as RFC 9457; every store,
//!   domain and object-store error is mapped there and nowhere else.
//! - `extract`: `Json`/`Path`/`Query` whose rejections are problems too.
//! - `middleware`: the request log line, problem rendering, the shutdown gate.
//! - [`auth`]: argon2id passwords, bearer tokens and the [`auth::CurrentUser`] extractor.
//! - `bootstrap`: [`ensure_admin`], the first `admin` user.
//! - `metrics`: `/metrics` as JSON or Prometheus text.
//! - [`limits`]: per-user limits (defaults, an admin's overrides, their cache).
//! - `follow`: the live log fan-out behind `GET /jobs/{id}/logs?follow=true`.
//! - `openapi`: the OpenAPI 3.1 description (`GET /openapi.json`) generated from the
//!   handlers' annotations, and Swagger UI (`GET /docs`) embedded in the binary.
//! - `routes`: the handlers; `submit`, `cancel` and `list` hold the logic they need beyond
//!   one store call; `view` maps store rows to wire types.
//!
//! Only [`router()`], [`AppState`], [`ServerConfig`], [`ApiError`], [`ensure_admin`] and
//! [`auth`] are public: what the binary and the tests use.
//!
//! The server never runs jobs: cancels reach workers through the store's flag and signals.
#![warn(missing_docs)]

mod app;
pub mod auth;
mod bootstrap;
mod cancel;
mod conditional;
mod config;
mod dashboard;
mod extract;
mod follow;
pub mod limits;
mod list;
mod metrics;
mod middleware;
mod openapi;
mod problem;
pub mod rate;
mod routes;
mod state;
mod status;
mod submit;
mod view;

pub use app::{metrics_router, router};
pub use bootstrap::{
    SetupError, ensure_admin, remove_password_file, retire_password_file, write_password_file,
};
pub use config::ServerConfig;
pub use problem::ApiError;
pub use state::AppState;
