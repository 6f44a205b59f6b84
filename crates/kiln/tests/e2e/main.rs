//! End-to-end tests: a whole Kiln node over a real socket on a real SQLite file, and the
//! real `kiln` binary for restart, kill and signal tests.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod artifacts;
mod bench;
mod cancel;
mod cli;
mod command;
mod compute;
mod connections;
mod dashboard;
mod helpers;
mod lifecycle;
mod metrics;
#[cfg(feature = "otlp")]
mod otlp;
mod pdf;
mod process;
mod queues;
mod retry;
mod scheduling;
mod stream;
mod tls;
mod uploads;
