//! Whether any other store listens on this database: a store alone sends no notifications.
//!
//! Every state change of every job has a signal, and sending them costs PostgreSQL a
//! transaction, a queue entry per payload and a wake-up of every listener, its own
//! included, which reads the payload back only to drop it: about 9 µs of PostgreSQL's CPU
//! and 4 µs of Kiln's per submitted job on a 2-core machine, for nobody when one node runs
//! alone (`BENCHMARKS.md`). So a listening store keeps track of the others:
//!
//! - Every listener connection is named [`super::LISTENER_NAME`]; a listener counts the
//!   others of its database in `pg_stat_activity` once connected and then every
//!   [`RECOUNT_EVERY`].
//! - A listener that finds others says `hello` and waits (at most [`HELLO_WAIT`]) until
//!   each of them has answered `ack:<its origin>`. A listener sets its store's flag
//!   *before* it answers, and a store checks the flag only after its write committed, so
//!   every write the newcomer is not told about committed before the newcomer's store is
//!   handed out (or, on a reconnect, before it tells its subscribers to re-read).
//! - Hearing anything from another store sets the flag; only a count that finds nobody,
//!   with nothing heard since that count began, clears it.
//!
//! A store that does not listen (poll-only) cannot hear a newcomer, so it always sends.
//! Stores of older versions never answer `hello`: a newcomer then waits [`HELLO_WAIT`] and
//! goes on, and they notify every write anyway.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::notify::{CHANNEL, LISTENER_NAME, Listening, republish};

/// How often a listener counts the other listeners.
pub(super) const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// How long a listener that said `hello` waits for the answers.
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(2);

/// The body of a newcomer's notification.
pub(super) const HELLO: &str = "hello";

/// The prefix of an answer to `hello`: `ack:<the newcomer's origin>`.
pub(super) const ACK: &str = "ack:";

/// The other listeners of this database, from this store's listener connection.
pub(super) const COUNT_OTHERS: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE datname = current_database() AND application_name = $1
       AND pid <> pg_backend_pid()";

/// Whether other stores listen, as this store last learned.
#[derive(Debug)]
pub(super) struct Peers {
    /// Whether others listen, and how many times something was heard from one.
    state: Mutex<(bool, u64)>,
    /// Notifications sent (payloads), for tests and diagnostics.
    sent: AtomicU64,
}

impl Peers {
    /// Assumes there are others: a store whose listener has not counted yet, or that does
    /// not listen at all, sends.
    pub fn new() -> Self {
        Self {
            state: Mutex::new((true, 0)),
            sent: AtomicU64::new(0),
        }
    }

    /// Whether signals should be sent to other nodes.
    pub fn any(&self) -> bool {
        self.lock().0
    }

    /// Another store spoke.
    pub fn heard(&self) {
        let mut state = self.lock();
        *state = (true, state.1.wrapping_add(1));
    }

    /// The mark a count takes before it asks the database (see [`Peers::counted`]).
    pub fn mark(&self) -> u64 {
        self.lock().1
    }

    /// A count that began at `mark` found `others` listeners: nobody clears the flag only
    /// if nothing was heard meanwhile (a newcomer that said `hello` after the count's
    /// snapshot was taken).
    pub fn counted(&self, mark: u64, others: i64) {
        let mut state = self.lock();
        if others > 0 {
            state.0 = true;
        } else if state.1 == mark {
            state.0 = false;
        }
    }

    /// Counts `n` notifications sent.
    pub fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Notifications sent so far.
    pub fn sent_total(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, u64)> {
        // The state is two plain values: a poisoned lock still holds a usable pair.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A notification body addressed to the peers protocol rather than to subscribers.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Greeting<'a> {
    /// A newcomer asks every listener to answer.
    Hello,
    /// An answer to the `hello` of the store with this origin.
    Ack(&'a str),
}

impl<'a> Greeting<'a> {
    /// The greeting a payload body holds, if it is one.
    pub fn parse(body: &'a str) -> Option<Self> {
        if body == HELLO {
            return Some(Greeting::Hello);
        }
        body.strip_prefix(ACK).map(Greeting::Ack)
    }
}

/// Counts the other listeners of this database and tells `peers`; the count.
pub(super) async fn count_others(
    client: &tokio_postgres::Client,
    peers: &Peers,
) -> std::result::Result<i64, tokio_postgres::Error> {
    let mark = peers.mark();
    let others: i64 = client
        .query_one(COUNT_OTHERS, &[&LISTENER_NAME])
        .await?
        .get(0);
    peers.counted(mark, others);
    Ok(others)
}

/// A newly connected listener makes itself known: when others listen, it says `hello` and
/// waits until each has answered (they notify this store's writes from then on), handling
/// whatever else arrives meanwhile.
pub(super) async fn greet(
    client: &tokio_postgres::Client,
    inbox: &mut mpsc::UnboundedReceiver<AsyncMessage>,
    listening: &Listening,
) -> std::result::Result<(), tokio_postgres::Error> {
    let others = count_others(client, &listening.peers).await?;
    if others == 0 {
        return Ok(());
    }
    say(client, &listening.origin, HELLO).await?;
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    let mut answered = std::collections::HashSet::new();
    while (answered.len() as i64) < others {
        match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                if let Some(from) = heard(client, listening, n.payload()).await? {
                    answered.insert(from);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::info!(
                    others,
                    answered = answered.len(),
                    "not every other listener answered; going on"
                );
                break;
            }
        }
    }
    Ok(())
}

/// Sends `body` from this store on the listener's own connection.
async fn say(
    client: &tokio_postgres::Client,
    origin: &str,
    body: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("{origin}|{body}")],
        )
        .await
        .map(drop)
}

/// Handles one notification: another store's signals are published here (another store
/// spoke, so `peers` learns there is one), a `hello` answered; the origin of an answer to
/// this store's own `hello`, if it is one.
pub(super) async fn heard(
    client: &tokio_postgres::Client,
    listening: &Listening,
    payload: &str,
) -> std::result::Result<Option<String>, tokio_postgres::Error> {
    let Some((from, greetings)) = republish(&listening.signals, &listening.origin, payload) else {
        return Ok(None);
    };
    // Set before answering: see the module documentation.
    listening.peers.heard();
    let mut answer = None;
    for greeting in greetings {
        match greeting {
            Greeting::Hello => {
                say(client, &listening.origin, &format!("{ACK}{from}")).await?;
            }
            Greeting::Ack(to) if to == listening.origin => answer = Some(from.to_owned()),
            Greeting::Ack(_) => {}
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_that_finds_nobody_clears_the_flag_only_if_nothing_was_heard_meanwhile() {
        let peers = Peers::new();
        let mark = peers.mark();
        peers.counted(mark, 0);
        assert!(!peers.any());
        // A newcomer says hello while a count is at the database.
        let mark = peers.mark();
        peers.heard();
        peers.counted(mark, 0);
        assert!(peers.any(), "a stale count must not silence a newcomer");
        // The next count sees nobody and nothing new: alone again.
        let mark = peers.mark();
        peers.counted(mark, 0);
        assert!(!peers.any());
        let mark = peers.mark();
        peers.counted(mark, 2);
        assert!(peers.any());
    }

    #[test]
    fn greetings_are_told_apart_from_signals() {
        assert_eq!(Greeting::parse("hello"), Some(Greeting::Hello));
        assert_eq!(Greeting::parse("ack:abc"), Some(Greeting::Ack("abc")));
        assert_eq!(Greeting::parse("available"), None);
        assert_eq!(Greeting::parse("hello2"), None);
    }
}
