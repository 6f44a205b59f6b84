//! Jobs per terminal state (`succeeded`, `dead`, `cancelled`), kept in `job_counts` as they
//! change, so the stats behind `/metrics` never count the table (40 ms at a million jobs).
//! The waiting and running states are counted from their partial indexes instead, whose
//! size follows the work in flight, not the history.
//!
//! Every state change into or out of a terminal state adds to one of [`SHARDS`] rows of its
//! state in the same transaction: the batched completion in its own statement
//! ([`super::complete`]), other changes through [`add`]; deletes subtract in a statement
//! trigger (migration 8). [`recount`] sets the rows from the table under a short lock when
//! a node connects.

use std::sync::atomic::{AtomicU16, Ordering};

use deadpool_postgres::GenericClient;
use kiln_domain::JobState;

use super::row;
use crate::error::Result;

/// Rows per state: concurrent transactions take them in turn, so they seldom wait on the
/// same row lock.
pub(super) const SHARDS: u16 = 16;

/// A shard for this transaction's additions (round robin across the process).
pub(super) fn shard() -> i16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    i16::try_from(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS).unwrap_or(0)
}

/// Adds `by` to the count of `state` if it is terminal.
pub(super) async fn add(db: &impl GenericClient, state: JobState, by: i64) -> Result<()> {
    if !state.is_terminal() || by == 0 {
        return Ok(());
    }
    row::execute(
        db,
        "INSERT INTO job_counts (state, shard, n) VALUES ($1, $2, $3)
         ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n",
        &[&state.as_str(), &shard(), &by],
    )
    .await?;
    Ok(())
}

/// The change of one job from `from` to `to`, counted.
pub(super) async fn moved(db: &impl GenericClient, from: JobState, to: JobState) -> Result<()> {
    if from != to {
        add(db, from, -1).await?;
        add(db, to, 1).await?;
    }
    Ok(())
}

/// Sets the counts from the table. Writers wait meanwhile (`SHARE` lock, taken in one
/// transaction with the count): one index scan of the terminal jobs.
pub(super) async fn recount(db: &mut deadpool_postgres::Object) -> Result<()> {
    let tx = db.transaction().await?;
    tx.batch_execute(
        "LOCK TABLE jobs IN SHARE MODE;
         DELETE FROM job_counts;
         INSERT INTO job_counts (state, shard, n)
         SELECT state, 0, count(*) FROM jobs
         WHERE state IN ('succeeded', 'dead', 'cancelled')
         GROUP BY state;",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
