//! What stands between the jobs and the model's API: a token-bucket [`Limiter`] (requests
//! and tokens per minute, shared by every slot of a node, and by every node when the
//! buckets live in PostgreSQL) and a [`Breaker`] per model.
//!
//! The buckets are written here rather than taken from `governor` (which the API's
//! per-user limits use) because the same arithmetic must run in memory and as one SQL
//! upsert in the store, and must agree: a level, the time it was last changed, a refill
//! rate and a capacity.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::BoxError;

/// A token bucket: full at `capacity`, refilled at `per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Its name, shared by every taker.
    pub name: String,
    /// The most it holds.
    pub capacity: f64,
    /// Refill per second.
    pub per_second: f64,
}

impl Bucket {
    /// A bucket of `per_minute` a minute, which may all be taken at once.
    pub fn per_minute(name: impl Into<String>, per_minute: f64) -> Self {
        Self {
            name: name.into(),
            capacity: per_minute.max(1.0),
            per_second: per_minute.max(1.0) / 60.0,
        }
    }
}

/// Where buckets live.
#[async_trait]
pub trait Buckets: Send + Sync + fmt::Debug {
    /// Takes `cost` (at most the capacity) from `bucket`: `None` when taken, else how long
    /// until it could be (nothing is taken then).
    async fn take(&self, bucket: &Bucket, cost: f64) -> Result<Option<Duration>, BoxError>;
}

/// Buckets in this process's memory, by Tokio's clock (paused in tests).
#[derive(Debug, Default)]
pub struct LocalBuckets {
    levels: Mutex<HashMap<String, (f64, Instant)>>,
}

#[async_trait]
impl Buckets for LocalBuckets {
    async fn take(&self, bucket: &Bucket, cost: f64) -> Result<Option<Duration>, BoxError> {
        let cost = cost.clamp(0.0, bucket.capacity);
        let now = Instant::now();
        let mut levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let (level, at) = levels
            .entry(bucket.name.clone())
            .or_insert((bucket.capacity, now));
        let refilled = (*level + now.duration_since(*at).as_secs_f64() * bucket.per_second)
            .min(bucket.capacity);
        if refilled < cost {
            let missing = cost - refilled;
            return Ok(Some(Duration::from_secs_f64(
                missing / bucket.per_second.max(f64::MIN_POSITIVE),
            )));
        }
        (*level, *at) = (refilled - cost, now);
        Ok(None)
    }
}

/// Requests and tokens per minute for one model.
#[derive(Debug, Clone)]
pub struct Limiter {
    requests: Bucket,
    tokens: Bucket,
    buckets: Arc<dyn Buckets>,
    /// The longest a job waits in its slot for the budget; beyond, it is deferred.
    max_wait: Duration,
}

/// How long a job would have to wait for the budget, beyond what it may wait in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget(pub Duration);

impl Limiter {
    /// `requests_per_minute` and `tokens_per_minute` for `model`, in `buckets`.
    pub fn new(
        model: &str,
        requests_per_minute: u32,
        tokens_per_minute: u64,
        buckets: Arc<dyn Buckets>,
        max_wait: Duration,
    ) -> Self {
        Self {
            requests: Bucket::per_minute(format!("{model}:requests"), requests_per_minute.into()),
            tokens: Bucket::per_minute(format!("{model}:tokens"), tokens_per_minute as f64),
            buckets,
            max_wait,
        }
    }

    /// Waits until one request and `tokens` tokens are taken. Tokens are taken first, then
    /// the request: a refused request leaves its tokens spent, which errs on the side of
    /// the API's quota. `Err` when the wait would pass `max_wait` (or the store fails).
    pub async fn acquire(
        &self,
        tokens: f64,
        cancel: &CancellationToken,
    ) -> Result<Result<(), OverBudget>, BoxError> {
        let deadline = Instant::now() + self.max_wait;
        for bucket in [&self.tokens, &self.requests] {
            let cost = if bucket == &self.tokens { tokens } else { 1.0 };
            while let Some(wait) = self.buckets.take(bucket, cost).await? {
                // A little past the refill, so the next take finds it done.
                let wait = wait + Duration::from_millis(5);
                if Instant::now() + wait > deadline {
                    return Ok(Err(OverBudget(wait)));
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => return Ok(Ok(())),
                }
            }
        }
        Ok(Ok(()))
    }
}

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// The window the failure rate is judged over.
    pub window: Duration,
    /// The share of failed calls in the window that opens it…
    pub failure_rate: f64,
    /// …once the window holds at least this many calls.
    pub min_calls: u32,
    /// How long it stays open before one probe is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            min_calls: 10,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// A circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is out; the rest are refused until it ends.
    HalfOpen,
}

impl BreakerState {
    /// The value `/metrics` shows: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Told of every change of a circuit's state (the node's metrics).
pub type OnChange = Arc<dyn Fn(&str, BreakerState) + Send + Sync>;

/// A circuit breaker for one model.
pub struct Breaker {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Circuit>,
    on_change: Option<OnChange>,
}

#[derive(Debug)]
struct Circuit {
    state: BreakerState,
    consecutive: u32,
    /// The window's calls: when, and whether they failed.
    calls: VecDeque<(Instant, bool)>,
    opened_at: Instant,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Leave to make one call; its result must be [`Ticket::record`]ed. A probe dropped
/// without a record (its job was cancelled) lets the next caller probe.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// A closed circuit named `name` (the model).
    pub fn new(
        name: impl Into<String>,
        config: BreakerConfig,
        on_change: Option<OnChange>,
    ) -> Arc<Self> {
        let name = name.into();
        if let Some(hook) = &on_change {
            hook(&name, BreakerState::Closed);
        }
        Arc::new(Self {
            name,
            config,
            inner: Mutex::new(Circuit {
                state: BreakerState::Closed,
                consecutive: 0,
                calls: VecDeque::new(),
                opened_at: Instant::now(),
            }),
            on_change,
        })
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave to call, or how long until a probe may go.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Duration> {
        let mut c = self.lock();
        let ticket = |probe| Ticket {
            breaker: Arc::clone(self),
            probe,
            recorded: false,
        };
        match c.state {
            BreakerState::Closed => Ok(ticket(false)),
            BreakerState::HalfOpen => Err(self.config.cool_down),
            BreakerState::Open => {
                let ends = c.opened_at + self.config.cool_down;
                let now = Instant::now();
                if now < ends {
                    return Err(ends - now);
                }
                self.enter(&mut c, BreakerState::HalfOpen);
                Ok(ticket(true))
            }
        }
    }

    fn enter(&self, c: &mut Circuit, state: BreakerState) {
        if c.state == state {
            return;
        }
        c.state = state;
        match state {
            BreakerState::Open => {
                c.opened_at = Instant::now();
                tracing::warn!(
                    model = %self.name,
                    cool_down_s = self.config.cool_down.as_secs_f64(),
                    "circuit breaker opened: the model's calls are refused until a probe succeeds"
                );
            }
            BreakerState::HalfOpen => {
                tracing::warn!(model = %self.name, "circuit breaker half-open: one probe call goes through");
            }
            BreakerState::Closed => {
                c.consecutive = 0;
                c.calls.clear();
                tracing::warn!(model = %self.name, "circuit breaker closed: the model answers again");
            }
        }
        if let Some(hook) = &self.on_change {
            hook(&self.name, state);
        }
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut c = self.lock();
        let now = Instant::now();
        if probe {
            let next = if failed {
                BreakerState::Open
            } else {
                BreakerState::Closed
            };
            // Back through Open resets the cool-down from now.
            c.state = BreakerState::HalfOpen;
            self.enter(&mut c, next);
            return;
        }
        c.consecutive = if failed { c.consecutive + 1 } else { 0 };
        c.calls.push_back((now, failed));
        while c
            .calls
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > self.config.window)
        {
            c.calls.pop_front();
        }
        let failed_calls = c.calls.iter().filter(|&&(_, f)| f).count();
        let rate_trips = c.calls.len() >= self.config.min_calls as usize
            && failed_calls as f64 >= self.config.failure_rate * c.calls.len() as f64;
        if c.state == BreakerState::Closed && (c.consecutive >= self.config.failures || rate_trips)
        {
            self.enter(&mut c, BreakerState::Open);
        }
    }
}

impl Ticket {
    /// Records the call's result: `failed` when it says the model is unwell (a 429, a 5xx,
    /// a time-out, a malformed answer), not when it refused a request of ours.
    pub fn record(mut self, failed: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, failed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut c = self.breaker.lock();
            if c.state == BreakerState::HalfOpen {
                // Back to open with the cool-down already over: the next caller probes.
                c.state = BreakerState::Open;
                c.opened_at = Instant::now() - self.breaker.config.cool_down;
                if let Some(hook) = &self.breaker.on_change {
                    hook(&self.breaker.name, BreakerState::Open);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
