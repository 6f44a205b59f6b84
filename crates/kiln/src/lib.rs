//! The `kiln` binary's library: configuration, node assembly and the command line.
//!
//! # Layout
//! - [`config`]: flags with env fallbacks, `kiln.toml`, validation.
//! - [`command_config`]: the `command` allow-list and its limits.
//! - [`tls`]: rustls configuration (the client connector; the server's certificates).
//! - [`node`]: starts the store, worker and HTTP API together and stops them gracefully.
//! - [`cli`]: subcommands (`serve`, `worker`, `migrate`, `user`, `bench`, `dev-cert`).
//! - [`client`]: the client commands (`login`, `submit`, `ls`, `logs`, `watch`, …).
//! - `otlp` (cargo feature `otlp`): the OpenTelemetry trace exporter.
//!
//! Tests start nodes in-process through [`node::start`] with a [`config::Validated`] built
//! in code.
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod command_config;
pub mod config;
pub mod node;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod tls;
