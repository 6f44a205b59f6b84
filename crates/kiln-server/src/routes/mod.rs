//! HTTP handlers, one module per area. Handlers stay thin: parse → store → map.

pub mod admin;
pub mod artifacts;
pub mod auth;
pub mod counts;
pub mod events;
pub mod files;
pub mod jobs;
pub mod logs;
pub mod ops;
pub mod pdf;
pub mod series;
