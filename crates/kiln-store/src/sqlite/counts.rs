//! The per-state job counts and the submitted total, kept by the writer.
//!
//! `job_counts` and `counters` let `/metrics` and the `max_queued` check read a few rows
//! instead of counting the table. Every writer command that inserts, deletes or moves a job
//! between states notes it on its [`Tx`](super::writer::Tx); the writer adds up the notes of
//! the commands that succeeded and applies them in the batch's own transaction, just before
//! the `COMMIT`, so the counts are exact after any rollback.
//!
//! Schema version 1 kept them with triggers: two `UPDATE`s per state change, each run as a
//! trigger program, and a statement journal (a copy of every page the statement touched) for
//! every job insert and update. Once per batch costs a few statements in all.

use kiln_domain::JobState;
use rusqlite::Connection;

/// Count changes of one command or a whole batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    /// Change per state, in [`JobState::ALL`] order.
    by_state: [i64; JobState::ALL.len()],
    /// Jobs submitted.
    submitted: i64,
}

fn slot(state: JobState) -> usize {
    JobState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or_default()
}

impl Counts {
    /// A job was inserted in `state`.
    pub fn inserted(&mut self, state: JobState) {
        self.inserted_many(state, 1);
    }

    /// `n` jobs were inserted in `state`.
    pub fn inserted_many(&mut self, state: JobState, n: i64) {
        self.by_state[slot(state)] += n;
        self.submitted += n;
    }

    /// A job in `state` was deleted.
    pub fn deleted(&mut self, state: JobState) {
        self.by_state[slot(state)] -= 1;
    }

    /// A job moved from `from` to `to` (nothing if they are the same).
    pub fn moved(&mut self, from: JobState, to: JobState) {
        if from != to {
            self.by_state[slot(from)] -= 1;
            self.by_state[slot(to)] += 1;
        }
    }

    /// The change in jobs still counted against `max_queued` (not terminal).
    pub fn active(&self) -> i64 {
        JobState::ALL
            .iter()
            .zip(self.by_state)
            .filter(|(state, _)| !state.is_terminal())
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &Counts) {
        for (sum, n) in self.by_state.iter_mut().zip(other.by_state) {
            *sum += n;
        }
        self.submitted += other.submitted;
    }

    /// Writes the changes into `job_counts` and `counters` (in the caller's transaction).
    pub fn apply(&self, db: &Connection) -> rusqlite::Result<()> {
        for (state, n) in JobState::ALL.iter().zip(self.by_state) {
            if n != 0 {
                db.prepare_cached("UPDATE job_counts SET n = n + ?2 WHERE state = ?1")?
                    .execute((state.as_str(), n))?;
            }
        }
        if self.submitted != 0 {
            db.prepare_cached(
                "UPDATE counters SET value = value + ?1 WHERE name = 'total_submitted'",
            )?
            .execute([self.submitted])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_net_out_and_add_up() {
        let mut a = Counts::default();
        a.inserted(JobState::Queued);
        a.moved(JobState::Queued, JobState::Running);
        a.moved(JobState::Running, JobState::Running);
        let mut b = Counts::default();
        b.moved(JobState::Running, JobState::Succeeded);
        b.deleted(JobState::Succeeded);
        a.add(&b);
        let expected = Counts {
            submitted: 1,
            ..Counts::default()
        };
        assert_eq!(a, expected);
        assert_eq!(a.active(), 0);
        a.moved(JobState::Succeeded, JobState::Queued);
        assert_eq!(a.active(), 1);
    }
}
