//! [`ServerConfig`]: the HTTP server's typed settings (the binary fills them from flags).

use std::time::Duration;

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Refuse submissions (429) while this many jobs are waiting or running; `None`: no cap.
    pub max_queued: Option<u64>,
    /// Each client's quota of jobs not finished yet (operators and admins have none): a
    /// submission past it answers 429 `active_quota`; `None`: no quota.
    pub max_active: Option<u64>,
    /// Each client's share of a node's slots, as the nodes run it (shown by the limits
    /// routes; the workers enforce it); `None`: no share.
    pub slot_share: Option<f64>,
    /// Lifetime of a login (session) token. Default 24 h.
    pub session_ttl: Duration,
    /// The longest lifetime an API token may be given, in days (1 to
    /// [`kiln_api::MAX_TOKEN_DAYS`]). Default 365.
    pub token_max_days: u32,
    /// Largest accepted request body in bytes; larger ones get 413. Default 1 MiB.
    pub body_limit: usize,
    /// How long `POST /jobs/{id}/cancel` waits for a running job to stop before answering
    /// 202 with `cancel_requested`. Default 1 s.
    pub cancel_wait: Duration,
    /// Every request is answered within this time (408 problem otherwise). Default 30 s.
    /// Uploads have [`ServerConfig::upload_timeout`] instead.
    pub request_timeout: Duration,
    /// The time limit of `POST /files`, which may stream a large file from a slow client.
    /// Default 10 min (50 MiB at ~85 KB/s).
    pub upload_timeout: Duration,
    /// Origins allowed by CORS; empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Users' uploaded files (`/api/v1/files`) and jobs' artifacts; `None`: uploads answer
    /// 503, a `file_id` payload is refused, and jobs have no artifacts.
    pub objects: Option<kiln_objects::Objects>,
    /// Largest accepted upload in bytes; larger ones get 413 and nothing is kept.
    /// Default 50 MiB. The 1 MiB `body_limit` does not apply to uploads.
    pub upload_limit: u64,
    /// The programs `command` jobs may run; empty (the default): the type is disabled and
    /// submitting it answers 400.
    pub command_allow: std::sync::Arc<kiln_domain::job_type::command::AllowList>,
    /// Log appends buffered per followed job before a follower that does not keep up is
    /// dropped (`GET /jobs/{id}/logs?follow=true`). One append is one flush of the job's log
    /// (every 250 ms), so the default 256 is over a minute of output a follower has not read.
    pub log_follow_buffer: usize,
    /// Per-queue concurrency limits of the nodes (`kiln.toml`), shown by
    /// `GET /admin/queues`.
    pub queue_limits: std::collections::BTreeMap<String, usize>,
    /// Uploads in progress at once; more answer 503 `uploads_busy` with `Retry-After`.
    pub max_uploads: usize,
    /// Bytes of uploaded files each user may keep (`None`: no limit); an upload past it
    /// answers 507 `storage_quota`.
    pub storage_quota: Option<u64>,
    /// Each client's submission rate (operators and admins are not limited); `None`: no
    /// limit.
    pub submit_rate: Option<crate::rate::SubmitRate>,
    /// Where a generated first admin password is kept; removed when `admin`'s password is
    /// changed through the API.
    pub admin_password_file: Option<std::path::PathBuf>,
    /// OpenID Connect bearer tokens (Entra ID) accepted beside Kiln's own; `None`: only
    /// Kiln tokens.
    pub oidc: Option<std::sync::Arc<crate::auth::oidc::Oidc>>,
    /// The API is served over HTTPS (the dashboard's sign-in callback URL says `https`).
    pub https: bool,
    /// This node's id (`KILN_NODE_ID`), named by `GET /admin/series`; `None`: not named.
    pub node_id: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_queued: None,
            max_active: None,
            slot_share: None,
            session_ttl: Duration::from_secs(24 * 3600),
            token_max_days: 365,
            body_limit: 1024 * 1024,
            cancel_wait: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            cors_origins: Vec::new(),
            objects: None,
            upload_limit: 50 * 1024 * 1024,
            command_allow: std::sync::Arc::default(),
            log_follow_buffer: 256,
            queue_limits: std::collections::BTreeMap::new(),
            admin_password_file: None,
            max_uploads: 16,
            submit_rate: None,
            storage_quota: None,
            oidc: None,
            https: false,
            node_id: None,
        }
    }
}
