//! Signals across nodes: the per-write [`Signals`] buffer, its `NOTIFY` encoding, the
//! notifier that sends committed writes' signals to other nodes, and the listener that
//! re-publishes other nodes' notifications to this node's subscribers.
//!
//! Channel `kiln_jobs`; payload `<origin>|<signal>` or several signals in one payload,
//! `<origin>|<signal>\n<signal>…` (at most [`PAYLOAD_MAX`] bytes), where `<signal>` is
//! `available`, `cancel:<job uuid>`, `user:<user id>`, `log:<job uuid>:<end>` or
//! `changed:<job uuid>:<owner id>:<seq>:<state>:<attempt>:<at unix ms>:<queue>:<type>`
//! (queue names are `[a-z0-9_-]`, types a fixed set of names; the type comes last, so even
//! a `:` in it would survive, and no signal holds a newline). `<origin>` names the
//! [`PgStore`](super::PgStore) that wrote it, so a listener skips its own store's
//! notifications (those were already published locally, right after the commit).
//!
//! Signals share payloads because every state change has one: a notification per signal
//! cost PostgreSQL a queue entry, and every listener a wake-up, per job and state (9 % of
//! the submissions one node accepted, `BENCHMARKS.md`); packed, a notification carries
//! sixty of them.
//!
//! The listener holds one dedicated connection (not from the pool: a pooled connection is
//! shared, and PgBouncer in transaction mode cannot keep a `LISTEN`). When it drops, the
//! listener reconnects with exponential backoff (100 ms doubling to 5 s) and publishes
//! [`Signal::JobAvailable`] on each reconnect: notifications sent while it was away are
//! lost, so subscribers should re-read. A ping every 30 s (10 s to answer) catches a
//! connection that died without the socket noticing.

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::UserId;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::AsyncMessage;

use super::peers::{self, Greeting, Peers};
use crate::error::Result;
use crate::model::{FeedEvent, Signal};
use crate::signal::Outbox;

/// How often the listener checks that its connection still answers, and how long it waits.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The `LISTEN`/`NOTIFY` channel.
pub(super) const CHANNEL: &str = "kiln_jobs";

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The signals a write causes, published only if it commits.
#[derive(Debug, Default)]
pub(super) struct Signals(Vec<Signal>);

impl Outbox for Signals {
    fn push(&mut self, signal: Signal) {
        self.0.push(signal);
    }
}

impl Signals {
    /// The signals in order, with `JobAvailable` at most once: one wake-up is enough for a
    /// claimer to find everything that became ready.
    fn deduped(&self) -> impl Iterator<Item = &Signal> {
        let mut available = false;
        self.0.iter().filter(move |s| {
            if **s == Signal::JobAvailable {
                if available {
                    return false;
                }
                available = true;
            }
            true
        })
    }

    /// These signals encoded for other nodes, one string each (without the origin).
    pub fn encoded(&self) -> impl Iterator<Item = String> + '_ {
        self.deduped().map(encode)
    }

    /// Publishes the signals to this node's subscribers.
    pub fn publish(&self, sender: &broadcast::Sender<Signal>) {
        for signal in self.deduped() {
            // No subscriber is not an error: nobody is listening yet.
            let _ = sender.send(signal.clone());
        }
    }
}

/// A signal as a notification payload (without the origin).
pub(super) fn encode(signal: &Signal) -> String {
    match signal {
        Signal::JobAvailable => "available".to_owned(),
        Signal::CancelRequested(id) => format!("cancel:{}", id.0),
        Signal::UserChanged(user) => format!("user:{}", user.0),
        Signal::Changed(e) => format!(
            "changed:{}:{}:{}:{}:{}:{}:{}:{}",
            e.job_id.0,
            e.owner.0,
            e.seq,
            e.state,
            e.attempt,
            e.at.timestamp_millis(),
            e.queue,
            e.job_type
        ),
        Signal::LogAppended { id, end, .. } => format!("log:{}:{end}", id.0),
    }
}

/// Parses [`encode`]'s output; `None` for anything else.
pub(super) fn decode(payload: &str) -> Option<Signal> {
    if payload == "available" {
        return Some(Signal::JobAvailable);
    }
    if let Some(id) = payload.strip_prefix("cancel:") {
        return Some(Signal::CancelRequested(id.parse().ok()?));
    }
    if let Some(id) = payload.strip_prefix("user:") {
        return Some(Signal::UserChanged(UserId(id.parse().ok()?)));
    }
    if let Some(rest) = payload.strip_prefix("log:") {
        let (id, end) = rest.split_once(':')?;
        return Some(Signal::LogAppended {
            id: id.parse().ok()?,
            end: end.parse().ok()?,
            text: None,
        });
    }
    let mut parts = payload.strip_prefix("changed:")?.splitn(8, ':');
    let mut next = || parts.next();
    let event = FeedEvent {
        job_id: next()?.parse().ok()?,
        owner: UserId(next()?.parse().ok()?),
        seq: next()?.parse().ok()?,
        state: next()?.parse().ok()?,
        attempt: next()?.parse().ok()?,
        at: chrono::DateTime::from_timestamp_millis(next()?.parse().ok()?)?,
        queue: next()?.parse().ok()?,
        job_type: next()?.parse().ok()?,
    };
    Some(Signal::Changed(Arc::new(event)))
}

/// Most signals taken from the queue for one `pg_notify` statement.
const NOTIFY_BATCH: usize = 4096;

/// The longest payload built: `NOTIFY` refuses 8,000 bytes and more.
const PAYLOAD_MAX: usize = 7_900;

/// `signals` (encoded, in order) packed into as few payloads tagged with `origin` as fit
/// in [`PAYLOAD_MAX`] bytes each, in order.
fn pack(origin: &str, signals: &[String]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for signal in signals {
        if !current.is_empty() && current.len() + 1 + signal.len() > PAYLOAD_MAX {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.reserve(PAYLOAD_MAX);
            current.push_str(origin);
            current.push('|');
        } else {
            current.push('\n');
        }
        current.push_str(signal);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// Starts the notifier: it sends committed writes' signals to other nodes, in the order
/// they were queued, packing whatever has queued up meanwhile into as few notifications as
/// fit, sent by one statement. It ends once every sender is gone and the queue is drained.
///
/// Why not `NOTIFY` inside each write's transaction: PostgreSQL serialises the commits of
/// transactions that notified (a database-wide lock held through the commit's WAL flush),
/// which defeats group commit. Measured on the 2-core dev machine (debug build, 32
/// concurrent submitters, pool of 16): ~620 inserts/s with `NOTIFY` in the transaction,
/// ~1,400 with this notifier, ~1,700 with no notifications at all. The price: a node that dies
/// between a commit and its notification loses that signal, which the polling fallback
/// (claim loops, lease renewal reporting cancels) covers anyway.
pub(super) fn spawn_notifier(
    pool: deadpool_postgres::Pool,
    origin: String,
    mut outbox: mpsc::UnboundedReceiver<String>,
    peers: Arc<Peers>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(NOTIFY_BATCH);
        while outbox.recv_many(&mut batch, NOTIFY_BATCH).await > 0 {
            let payloads = pack(&origin, &batch);
            match send(&pool, &payloads).await {
                Ok(()) => peers.sent(payloads.len()),
                Err(e) => {
                    tracing::warn!(error = %e, dropped = batch.len(), "could not notify other nodes");
                }
            }
            batch.clear();
        }
    })
}

/// One `pg_notify` per payload, in one statement on a pooled connection.
async fn send(pool: &deadpool_postgres::Pool, payloads: &[String]) -> Result<()> {
    let client = pool.get().await.map_err(super::map_pool_err)?;
    let stmt = client
        .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .await?;
    client.execute(&stmt, &[&CHANNEL, &payloads]).await?;
    Ok(())
}

/// Where the first connection attempt reports whether its `LISTEN` is in place.
pub(super) type Ready = oneshot::Sender<std::result::Result<(), tokio_postgres::Error>>;

/// What a listener shares with its store: where other nodes' signals go, the store's
/// origin tag, and what it knows of the other listeners.
pub(super) struct Listening {
    pub signals: broadcast::Sender<Signal>,
    pub origin: String,
    pub peers: Arc<Peers>,
}

/// Starts the listener task; aborting it closes its connection. `ready` hears the outcome
/// of the first attempt, so a new store listens (and the other stores know it, see
/// [`super::peers`]) before it is handed out.
pub(super) fn spawn_listener(
    mut target: super::tls::Target,
    listening: Listening,
    ready: Ready,
) -> tokio::task::JoinHandle<()> {
    // Named, so an operator can tell it apart in `pg_stat_activity`.
    target.config.application_name(LISTENER_NAME);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut ready = Some(ready);
        loop {
            let reconnect = ready.is_none();
            match listen(&target, &listening, &mut ready, reconnect, &mut backoff).await {
                Ok(()) => tracing::warn!("the PostgreSQL listener connection closed"),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "the PostgreSQL listener failed");
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(e));
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// The listener's `application_name`.
pub const LISTENER_NAME: &str = "kiln-listener";

/// One listener connection: `LISTEN`, then re-publish notifications until it drops. A
/// successful `LISTEN` resets the backoff.
async fn listen(
    target: &super::tls::Target,
    listening: &Listening,
    ready: &mut Option<Ready>,
    reconnect: bool,
    backoff: &mut Duration,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut connection) = target.config.connect(target.tls.clone()).await?;
    let (messages, mut inbox) = mpsc::unbounded_channel();
    // The connection must be polled for the client's requests to progress, so it runs
    // beside the `LISTEN` below and forwards what the server pushes.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(message)) => {
                    if messages.send(message).is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    let _abort = AbortOnDrop(driver.abort_handle());
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    *backoff = BACKOFF_MIN;
    peers::greet(&client, &mut inbox, listening).await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
    if reconnect {
        tracing::info!("the PostgreSQL listener reconnected");
        let _ = listening.signals.send(Signal::JobAvailable);
    }
    // A connection cut without a reset (a dead NAT entry, a vanished host) would leave the
    // listener waiting forever: a periodic ping notices and reconnects.
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut recount = tokio::time::interval(peers::RECOUNT_EVERY);
    recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recount.tick().await;
    loop {
        tokio::select! {
            message = inbox.recv() => match message {
                Some(AsyncMessage::Notification(n)) => {
                    peers::heard(&client, listening, n.payload()).await?;
                }
                Some(_) => {}
                None => break,
            },
            _ = recount.tick() => peers::count_others(&client, &listening.peers).await.map(drop)?,
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        tracing::warn!("the PostgreSQL listener did not answer a ping");
                        return Ok(());
                    }
                }
            }
        }
    }
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Publishes one notification's signals locally, in order, unless this store sent them;
/// the sender and the greetings among them (see [`super::peers`]).
pub(super) fn republish<'a>(
    signals: &broadcast::Sender<Signal>,
    origin: &str,
    payload: &'a str,
) -> Option<(&'a str, Vec<Greeting<'a>>)> {
    let (from, body) = payload.split_once('|')?;
    if from == origin {
        return None;
    }
    let mut greetings = Vec::new();
    for one in body.split('\n') {
        if let Some(greeting) = Greeting::parse(one) {
            greetings.push(greeting);
            continue;
        }
        match decode(one) {
            Some(signal) => {
                let _ = signals.send(signal);
            }
            None => tracing::debug!(signal = one, "ignored an unknown kiln_jobs signal"),
        }
    }
    Some((from, greetings))
}

/// Aborts the connection driver when the listener's connection is given up.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_domain::clock::from_millis;
    use kiln_domain::{JobId, JobState, JobType, QueueName};

    fn event(state: JobState) -> FeedEvent {
        FeedEvent {
            job_id: JobId::new(),
            owner: UserId(42),
            job_type: JobType::Echo,
            queue: QueueName::default(),
            seq: 3,
            state,
            attempt: 2,
            at: from_millis(1_767_225_600_123),
        }
    }

    #[test]
    fn every_signal_survives_a_round_trip_through_its_payload() {
        let id = JobId::new();
        let odd = FeedEvent {
            job_type: JobType::MatrixMultiply,
            queue: QueueName::parse("bulk-2_x").unwrap(),
            at: from_millis(-1),
            ..event(JobState::Dead)
        };
        for signal in [
            Signal::JobAvailable,
            Signal::CancelRequested(id),
            Signal::UserChanged(UserId(42)),
            Signal::Changed(Arc::new(event(JobState::Running))),
            Signal::Changed(Arc::new(odd)),
        ] {
            assert_eq!(decode(&encode(&signal)), Some(signal));
        }
        assert_eq!(decode("changed:nope"), None);
        assert_eq!(decode("something-else"), None);
    }

    #[test]
    fn changed_payloads_carry_every_field_of_the_event() {
        let e = event(JobState::Running);
        let payload = encode(&Signal::Changed(Arc::new(e.clone())));
        assert_eq!(
            payload,
            format!(
                "changed:{}:42:3:running:2:1767225600123:default:echo",
                e.job_id
            )
        );
        // The old three-field shape, a bad field or a missing one: not a signal.
        let id = e.job_id;
        for bad in [
            format!("changed:{id}:42:running"),
            format!("changed:{id}:42:x:running:2:1767225600123:default:echo"),
            format!("changed:{id}:42:3:bogus:2:1767225600123:default:echo"),
            format!("changed:{id}:42:3:running:-1:1767225600123:default:echo"),
            format!("changed:{id}:42:3:running:2:{}:default:echo", i64::MAX),
            format!("changed:{id}:42:3:running:2:1767225600123:default"),
            format!("changed:{id}:42:3:running:2:1767225600123:default:made_up"),
            format!("changed:{id}:42:3:running:2:1767225600123:No Queue:echo"),
        ] {
            assert_eq!(decode(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_store_ignores_its_own_notifications() {
        let (tx, mut rx) = broadcast::channel(4);
        republish(&tx, "me", "me|available");
        republish(&tx, "other", "garbage");
        assert!(rx.try_recv().is_err());
        republish(&tx, "me", "them|available");
        assert_eq!(rx.try_recv().unwrap(), Signal::JobAvailable);
    }

    #[test]
    fn packed_payloads_stay_under_the_limit_and_carry_every_signal_in_order() {
        let sent: Vec<Signal> = (0..500)
            .map(|n| match n % 3 {
                0 => Signal::Changed(Arc::new(event(JobState::Succeeded))),
                1 => Signal::CancelRequested(JobId::new()),
                _ => Signal::UserChanged(UserId(n)),
            })
            .collect();
        let encoded: Vec<String> = sent.iter().map(encode).collect();
        let payloads = pack("them", &encoded);
        assert!(payloads.len() > 1, "500 signals do not fit one payload");
        assert!(payloads.len() < 20, "{} payloads", payloads.len());
        assert!(payloads.iter().all(|p| p.len() <= PAYLOAD_MAX));
        let (tx, mut rx) = broadcast::channel(1024);
        for payload in &payloads {
            republish(&tx, "me", payload);
        }
        let mut got = Vec::new();
        while let Ok(s) = rx.try_recv() {
            got.push(s);
        }
        assert_eq!(got, sent);
        assert!(pack("them", &[]).is_empty());
    }

    #[test]
    fn greetings_are_returned_with_their_sender_and_not_published() {
        let (tx, mut rx) = broadcast::channel(8);
        let (from, greetings) = republish(&tx, "me", "them|hello\navailable\nack:me").unwrap();
        assert_eq!(from, "them");
        assert_eq!(greetings, [Greeting::Hello, Greeting::Ack("me")]);
        assert_eq!(rx.try_recv().unwrap(), Signal::JobAvailable);
        assert!(rx.try_recv().is_err());
        assert!(republish(&tx, "me", "me|hello").is_none());
    }

    #[test]
    fn an_unknown_signal_in_a_payload_spoils_only_itself() {
        let (tx, mut rx) = broadcast::channel(8);
        republish(&tx, "me", "them|available\nsomething-new\nuser:7");
        assert_eq!(rx.try_recv().unwrap(), Signal::JobAvailable);
        assert_eq!(rx.try_recv().unwrap(), Signal::UserChanged(UserId(7)));
        assert!(rx.try_recv().is_err());
        republish(&tx, "me", "me|available\nuser:7");
        assert!(rx.try_recv().is_err(), "its own payload is skipped whole");
    }

    #[test]
    fn job_available_is_published_once_per_write() {
        let (tx, mut rx) = broadcast::channel(8);
        let mut signals = Signals::default();
        signals.changed(event(JobState::Queued));
        signals.changed(event(JobState::Queued));
        signals.publish(&tx);
        let mut got = Vec::new();
        while let Ok(s) = rx.try_recv() {
            got.push(s);
        }
        assert_eq!(
            got.iter().filter(|s| **s == Signal::JobAvailable).count(),
            1
        );
        assert_eq!(got.len(), 3);
    }
}
