//! Jobs per state, kept in `job_counts` as they change, so neither the stats behind
//! `/metrics` nor the queue cap ever counts the table (40 ms at a million finished jobs;
//! 10 ms for 10,000 waiting ones under load, when the bench's progress poll alone took a
//! quarter of PostgreSQL's CPU).
//!
//! Every statement that moves jobs between states adds its net change per state in the
//! same statement (a CTE over the rows it wrote: [`SHARD`] names the row) or, for changes
//! made one job at a time, through [`moved`]; deletes subtract in a statement trigger
//! (migrations 8 and 16). A row per state and connection (the shard is the backend's pid,
//! folded): concurrent transactions write different rows, so none waits for another's
//! commit, and every statement of one transaction writes the same rows (no lock-order
//! cycle between two transactions). [`fold`] sums the rows of connections that are gone
//! into shard 0; [`recount`] sets the rows from the table under a short lock: those of
//! waiting and running jobs when a node connects (from their partial indexes, so a few
//! milliseconds whatever the table holds), every row after a seed.

use deadpool_postgres::GenericClient;
use kiln_domain::JobState;

use super::row;
use crate::error::Result;

/// The shard of the connection that runs the statement, as SQL.
macro_rules! shard {
    () => {
        "(pg_backend_pid() % 32000)::int2"
    };
}
pub(super) use shard;

/// The final statement of an insert whose CTE `job` returns the new rows' `state`: adds
/// them to the counts.
macro_rules! counted_inserts {
    () => {
        concat!(
            " INSERT INTO job_counts (state, shard, n) SELECT state, ",
            $crate::postgres::counts::shard!(),
            ", count(*) FROM job GROUP BY state ORDER BY state
             ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n"
        )
    };
}
pub(super) use counted_inserts;

/// Adds `by` to the count of `state`.
pub(super) async fn add(db: &impl GenericClient, state: JobState, by: i64) -> Result<()> {
    if by == 0 {
        return Ok(());
    }
    row::execute(
        db,
        concat!(
            "INSERT INTO job_counts (state, shard, n) VALUES ($1, ",
            shard!(),
            ", $2) ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n"
        ),
        &[&state.as_str(), &by],
    )
    .await?;
    Ok(())
}

/// The change of one job from `from` to `to`, counted (in state order, as every writer
/// takes the rows).
pub(super) async fn moved(db: &impl GenericClient, from: JobState, to: JobState) -> Result<()> {
    if from != to {
        let (first, second) = if from.as_str() < to.as_str() {
            ((from, -1), (to, 1))
        } else {
            ((to, 1), (from, -1))
        };
        add(db, first.0, first.1).await?;
        add(db, second.0, second.1).await?;
    }
    Ok(())
}

/// Sums the rows of connections that are no longer open into shard 0, so the table holds
/// a row per state and live connection (plus shard 0), whatever the reconnections.
pub(super) async fn fold(db: &impl GenericClient) -> Result<()> {
    row::execute(
        db,
        "WITH gone AS (
             DELETE FROM job_counts
             WHERE shard <> 0
               AND shard NOT IN (SELECT (pid % 32000)::int2 FROM pg_stat_activity)
             RETURNING state, n
         )
         INSERT INTO job_counts (state, shard, n)
         SELECT state, 0, sum(n) FROM gone GROUP BY state ORDER BY state
         ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n",
        &[],
    )
    .await?;
    Ok(())
}

/// Which counts [`recount`] sets from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recount {
    /// Scheduled, queued, failed and running jobs, from the partial indexes that list them
    /// (small: the jobs not yet finished). What a node does when it connects: nodes of
    /// schema versions 8 to 15 kept only the finished counts, so during a rolling upgrade
    /// the others drift until the last node restarts on the new version.
    Waiting,
    /// Every state: a scan of the whole table, for rows written behind the store's back
    /// (the bench's seed).
    Everything,
}

/// Sets the counts `which` names from the table. Writers and other recounts wait
/// meanwhile: `SHARE ROW EXCLUSIVE` conflicts with both (`SHARE` would let two nodes that
/// start together both delete and then insert the same rows).
pub(super) async fn recount(db: &mut deadpool_postgres::Object, which: Recount) -> Result<()> {
    let tx = db.transaction().await?;
    tx.batch_execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    tx.batch_execute(match which {
        // One `count` per partial index (`jobs_claim`, `jobs_due`, `jobs_lease`), as
        // `/metrics`' queue depths read them.
        Recount::Waiting => {
            "DELETE FROM job_counts WHERE state IN ('scheduled', 'queued', 'running', 'failed');
             INSERT INTO job_counts (state, shard, n)
             SELECT 'queued', 0, count(*) FROM jobs WHERE state = 'queued'
             UNION ALL
             SELECT state, 0, count(*) FROM jobs WHERE state IN ('scheduled', 'failed')
             GROUP BY state
             UNION ALL
             SELECT 'running', 0, count(*) FROM jobs WHERE state = 'running';"
        }
        Recount::Everything => {
            "DELETE FROM job_counts;
             INSERT INTO job_counts (state, shard, n)
             SELECT state, 0, count(*) FROM jobs GROUP BY state;"
        }
    })
    .await?;
    tx.commit().await?;
    Ok(())
}
