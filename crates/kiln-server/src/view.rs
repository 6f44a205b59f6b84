//! Conversions from store rows to wire types that `kiln-api` cannot hold (it does not
//! depend on the store).

use kiln_api::{EventView, MetricsSummary, TokenView};
use kiln_domain::JobState;
use kiln_store::{JobEvent, Stats, TokenInfo};

/// One history entry.
pub fn event(e: JobEvent) -> EventView {
    EventView {
        seq: e.seq,
        state: e.state,
        at: e.at,
        attempt: e.attempt,
        node: e.node,
        message: e.message,
    }
}

/// A token's metadata, with the secret only when given (at creation).
pub fn token(info: TokenInfo, secret: Option<String>) -> TokenView {
    TokenView {
        id: info.id,
        name: info.name,
        created_at: info.created_at,
        expires_at: info.expires_at,
        token: secret,
    }
}

/// The `/metrics` JSON summary.
pub fn metrics(stats: Stats) -> MetricsSummary {
    let count = |state: JobState| {
        stats
            .by_state
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, n)| *n)
            .sum()
    };
    MetricsSummary {
        total_submitted: stats.total_submitted,
        scheduled: count(JobState::Scheduled),
        queued: count(JobState::Queued),
        running: count(JobState::Running),
        failed: count(JobState::Failed),
        succeeded: count(JobState::Succeeded),
        dead: count(JobState::Dead),
        cancelled: count(JobState::Cancelled),
        avg_duration_ms: stats.avg_duration_ms,
        p95_start_latency_ms: stats.p95_start_latency_ms,
    }
}
