//! Queue controls: operators pause and resume queues; every node's claim skips the paused
//! ones in its own statement (see `claim`).

use deadpool_postgres::GenericClient;
use kiln_domain::Timestamp;

use super::row::{self, ts};
use crate::error::Result;
use crate::model::QueueControl;

/// Every queue an operator has paused or resumed.
pub(super) async fn controls(db: &impl GenericClient) -> Result<Vec<QueueControl>> {
    let rows = row::query(
        db,
        "SELECT name, paused, changed_at, changed_by FROM queue_controls ORDER BY name",
        &[],
    )
    .await?;
    rows.iter().map(control).collect()
}

/// Pauses or resumes `name` (the caller signals a resume).
pub(super) async fn set_paused(
    db: &impl GenericClient,
    name: &str,
    paused: bool,
    by: &str,
    now: Timestamp,
) -> Result<QueueControl> {
    let r = row::query_one(
        db,
        "INSERT INTO queue_controls (name, paused, changed_at, changed_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET
             paused = excluded.paused, changed_at = excluded.changed_at,
             changed_by = excluded.changed_by
         RETURNING name, paused, changed_at, changed_by",
        &[&name, &paused, &ts(now), &by],
    )
    .await?;
    control(&r)
}

fn control(r: &tokio_postgres::Row) -> Result<QueueControl> {
    Ok(QueueControl {
        name: row::get(r, 0)?,
        paused: row::get(r, 1)?,
        changed_at: row::get(r, 2)?,
        changed_by: row::get(r, 3)?,
    })
}
