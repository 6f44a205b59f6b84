//! Kiln's Prometheus metrics: one [`Metrics`] per node, shared by the store (commit
//! batches), the worker (attempts) and the HTTP layer (requests), encoded in the Prometheus
//! text format by [`Metrics::encode`].
//!
//! Every label set is bounded: job types, queues and route templates go through [`Names`],
//! which keeps at most [`MAX_NAMES`] distinct values and calls the rest `other`, so no input
//! can grow the registry (a route label is the router's template, never the raw path).
//! Names follow Prometheus' conventions: the `kiln_` prefix, base units (seconds, bytes),
//! `_total` on counters (added by the encoder).
//!
//! Figures that the database holds (jobs per queue and state, the connection pool) are not
//! recorded as they change: the `/metrics` handler reads them and sets them with
//! [`Metrics::set_queue_depths`] and [`Metrics::set_pool`] just before encoding.
//!
//! [`trace`] holds the W3C trace context of spans and the hook an OpenTelemetry exporter
//! installs; [`series`] the last hour of the worker's attempts, minute by minute, that
//! [`Metrics::series`] reads for the operator dashboard.

pub mod series;
pub mod trace;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Distinct values a label keeps before it says `other`.
pub const MAX_NAMES: usize = 256;

/// Upper bounds of request latencies, seconds.
const HTTP_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of queue waits and run times, seconds: a millisecond to an hour.
const JOB_BUCKETS: [f64; 18] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Upper bounds of a store commit's duration, seconds.
const COMMIT_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// Upper bounds of the commands in one store commit.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How an attempt ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded.
    Succeeded,
    /// Failed and will be retried.
    Retried,
    /// Failed for good (`dead`).
    Dead,
    /// Cancelled while running.
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retried => "retried",
            Outcome::Dead => "dead",
            Outcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn job_histogram() -> Histogram {
    Histogram::new(JOB_BUCKETS)
}

/// A bounded set of label values, each kept once for the life of the process: the label
/// structs then hold `&'static str`s, so recording allocates nothing and hashes a pointer's
/// worth of text. Past [`MAX_NAMES`] every new value is `other`.
#[derive(Default)]
pub struct Names(RwLock<HashMap<Box<str>, &'static str>>);

impl Names {
    /// The kept copy of `name`, or `other` once the set is full.
    pub fn get(&self, name: &str) -> &'static str {
        if let Some(&kept) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return kept;
        }
        let mut names = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&kept) = names.get(name) {
            return kept;
        }
        if names.len() >= MAX_NAMES {
            return "other";
        }
        // Leaked on purpose, at most MAX_NAMES times per process: a label value lives as
        // long as the registry that reports it, which is the process.
        let kept: &'static str = Box::leak(Box::from(name));
        names.insert(Box::from(name), kept);
        kept
    }
}

/// One node's metrics. Cheap to record into from any thread.
pub struct Metrics {
    registry: Registry,
    /// Held while the gauges read from the database are set and encoded, so two scrapes
    /// never interleave their updates.
    scrape: Mutex<()>,
    names: Names,
    /// Queues whose depth is reported (as 0) even when nothing waits in them.
    queues: Mutex<Vec<&'static str>>,
    submitted: Family<TypeLabels, Counter>,
    completed: Family<OutcomeLabels, Counter>,
    queue_wait: Histograms<TypeLabels>,
    run_duration: Histograms<TypeLabels>,
    rescues: Counter,
    lease_losses: Counter,
    cancel_requests: Counter,
    slots: Gauge,
    slots_busy: Gauge,
    jobs: Family<QueueStateLabels, Gauge>,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Histograms<RouteLabels>,
    commit_batch: Histogram,
    commit_duration: Histogram,
    pool: Family<StateLabels, Gauge>,
    pool_waiting: Gauge,
    followers: Gauge,
    task_restarts: Counter,
    model_circuit: Family<ModelLabels, Gauge>,
    /// Background tasks of this node that died and are waiting to be started again.
    tasks_down: Mutex<Vec<&'static str>>,
    /// The last hour of attempts started and ended here, per minute.
    series: series::Series,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(env!("CARGO_PKG_VERSION"))
    }
}

impl Metrics {
    /// A registry with every family, reporting `version` as the build.
    pub fn new(version: &'static str) -> Self {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version }).set(1);
        registry.register("kiln_build_info", "The running build (always 1)", build);
        let m = Self {
            scrape: Mutex::new(()),
            names: Names::default(),
            queues: Mutex::new(Vec::new()),
            submitted: Family::default(),
            completed: Family::default(),
            queue_wait: Family::new_with_constructor(job_histogram),
            run_duration: Family::new_with_constructor(job_histogram),
            rescues: Counter::default(),
            lease_losses: Counter::default(),
            cancel_requests: Counter::default(),
            slots: Gauge::default(),
            slots_busy: Gauge::default(),
            jobs: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            commit_batch: Histogram::new(BATCH_BUCKETS),
            commit_duration: Histogram::new(COMMIT_BUCKETS),
            pool: Family::default(),
            pool_waiting: Gauge::default(),
            followers: Gauge::default(),
            task_restarts: Counter::default(),
            model_circuit: Family::default(),
            tasks_down: Mutex::new(Vec::new()),
            series: series::Series::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "kiln_model_circuit_state",
            "The circuit breaker of each model this node calls: 0 closed, 1 half-open (one probe out), 2 open (calls refused)",
            m.model_circuit.clone(),
        );
        r.register(
            "kiln_jobs_submitted",
            "Jobs accepted by this node's API, by type",
            m.submitted.clone(),
        );
        r.register(
            "kiln_jobs_completed",
            "Attempts ended on this node, by type and outcome (succeeded, retried, dead, cancelled)",
            m.completed.clone(),
        );
        r.register(
            "kiln_job_queue_wait_seconds",
            "Time from when a job was due to when this node started it (start latency), by type",
            m.queue_wait.clone(),
        );
        r.register(
            "kiln_job_run_duration_seconds",
            "Run time of the attempts this node ended, by type",
            m.run_duration.clone(),
        );
        r.register(
            "kiln_task_restarts",
            "Background tasks of this node (dispatcher, heartbeat, maintenance) started again after they died",
            m.task_restarts.clone(),
        );
        r.register(
            "kiln_job_rescues",
            "Jobs whose lease had expired, put back by this node",
            m.rescues.clone(),
        );
        r.register(
            "kiln_job_lease_losses",
            "Attempts on this node that lost their lease before they ended",
            m.lease_losses.clone(),
        );
        r.register(
            "kiln_job_cancel_requests",
            "Cancels accepted by this node's API",
            m.cancel_requests.clone(),
        );
        r.register(
            "kiln_worker_slots",
            "Attempts this node runs at once at most (MAX_CONCURRENCY)",
            m.slots.clone(),
        );
        r.register(
            "kiln_worker_slots_busy",
            "Attempts running on this node now",
            m.slots_busy.clone(),
        );
        r.register(
            "kiln_jobs",
            "Jobs waiting or running, by queue and state (scheduled, queued, failed, running), as the database holds them",
            m.jobs.clone(),
        );
        r.register(
            "kiln_http_requests",
            "HTTP requests answered, by method, route template and status class",
            m.http_requests.clone(),
        );
        r.register(
            "kiln_http_request_duration_seconds",
            "Time to answer an HTTP request (to the response's head), by method and route template",
            m.http_duration.clone(),
        );
        r.register(
            "kiln_store_commit_batch_size",
            "Commands written in one store commit (SQLite's writer)",
            m.commit_batch.clone(),
        );
        r.register(
            "kiln_store_commit_duration_seconds",
            "Time of one store commit with its batch (SQLite's writer)",
            m.commit_duration.clone(),
        );
        r.register(
            "kiln_store_pool_connections",
            "Database connections of this node's pool, by state (idle, busy)",
            m.pool.clone(),
        );
        r.register(
            "kiln_store_pool_waiting",
            "Requests waiting for a database connection",
            m.pool_waiting.clone(),
        );
        r.register(
            "kiln_stream_followers",
            "Clients following a live stream (events or a job's log) on this node",
            m.followers.clone(),
        );
        Self { registry, ..m }
    }

    /// The bounded name for a job type or queue.
    pub fn name(&self, name: &str) -> &'static str {
        self.names.get(name)
    }

    /// Creates every per-type series of `types` at zero, so a dashboard or an alert finds
    /// them (and `rate()` starts from 0) before the first job of a type; likewise the depth
    /// of `queues` in each waiting or running state.
    pub fn known<'a>(
        &self,
        types: impl IntoIterator<Item = &'a str>,
        queues: impl IntoIterator<Item = &'a str>,
    ) {
        for name in types {
            let r#type = self.name(name);
            drop(self.submitted.get_or_create(&TypeLabels { r#type }));
            for outcome in [
                Outcome::Succeeded,
                Outcome::Retried,
                Outcome::Dead,
                Outcome::Cancelled,
            ] {
                let outcome = outcome.as_str();
                drop(
                    self.completed
                        .get_or_create(&OutcomeLabels { r#type, outcome }),
                );
            }
            drop(self.queue_wait.get_or_create(&TypeLabels { r#type }));
            drop(self.run_duration.get_or_create(&TypeLabels { r#type }));
        }
        let mut known = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        for queue in queues {
            let queue = self.name(queue);
            if !known.contains(&queue) {
                known.push(queue);
            }
        }
    }

    /// A job of `job_type` was accepted.
    pub fn job_submitted(&self, job_type: &str) {
        let r#type = self.name(job_type);
        self.submitted.get_or_create(&TypeLabels { r#type }).inc();
    }

    /// An attempt of `job_type` started, `waited` after the job was due.
    pub fn job_started(&self, job_type: &str, waited: Duration) {
        let r#type = self.name(job_type);
        self.queue_wait
            .get_or_create(&TypeLabels { r#type })
            .observe(waited.as_secs_f64());
        self.series.record_start(series::current_minute(), waited);
    }

    /// An attempt of `job_type` ended with `outcome` after running for `ran`.
    pub fn job_ended(&self, job_type: &str, outcome: Outcome, ran: Duration) {
        let r#type = self.name(job_type);
        self.completed
            .get_or_create(&OutcomeLabels {
                r#type,
                outcome: outcome.as_str(),
            })
            .inc();
        self.run_duration
            .get_or_create(&TypeLabels { r#type })
            .observe(ran.as_secs_f64());
        self.series.record_end(series::current_minute(), outcome);
    }

    /// The attempts started and ended on this node in each minute of the last hour (by the
    /// wall clock), oldest first, the current minute last: [`series::MINUTES`] entries.
    pub fn series(&self) -> Vec<series::Minute> {
        self.series.snapshot(series::current_minute())
    }

    /// Background task `name` died: `/readyz` fails until [`Metrics::task_up`].
    pub fn task_down(&self, name: &'static str) {
        let mut down = self.tasks_down.lock().unwrap_or_else(|e| e.into_inner());
        if !down.contains(&name) {
            down.push(name);
        }
    }

    /// Background task `name` runs again.
    pub fn task_up(&self, name: &'static str) {
        self.task_restarts.inc();
        let mut down = self.tasks_down.lock().unwrap_or_else(|e| e.into_inner());
        down.retain(|n| *n != name);
    }

    /// The background tasks down now.
    pub fn tasks_down(&self) -> Vec<&'static str> {
        self.tasks_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Restarts of background tasks so far.
    pub fn task_restarts(&self) -> u64 {
        self.task_restarts.get()
    }

    /// `n` jobs with expired leases were put back.
    pub fn jobs_rescued(&self, n: u64) {
        self.rescues.inc_by(n);
    }

    /// An attempt lost its lease.
    pub fn lease_lost(&self) {
        self.lease_losses.inc();
    }

    /// The circuit breaker of `model` is now `state` (0 closed, 1 half-open, 2 open).
    pub fn model_circuit(&self, model: &str, state: i64) {
        let model = self.name(model);
        self.model_circuit
            .get_or_create(&ModelLabels { model })
            .set(state);
    }

    /// A cancel was accepted.
    pub fn cancel_requested(&self) {
        self.cancel_requests.inc();
    }

    /// This node runs at most `n` attempts at once.
    pub fn set_slots(&self, n: usize) {
        self.slots.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An attempt started (`+1`) or ended (`-1`) on this node.
    pub fn slot_busy(&self, delta: i64) {
        self.slots_busy.inc_by(delta);
    }

    /// An HTTP request to `route` (the router's template, or `unmatched`) answered `status`
    /// after `took`.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let method = http_method(method);
        let route = self.name(route);
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: class,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
    }

    /// The store committed `commands` in one transaction taking `took`.
    pub fn store_commit(&self, commands: usize, took: Duration) {
        self.commit_batch.observe(commands as f64);
        self.commit_duration.observe(took.as_secs_f64());
    }

    /// A live stream gained (`+1`) or lost (`-1`) a follower.
    pub fn follower(&self, delta: i64) {
        self.followers.inc_by(delta);
    }

    /// The pool's connections now: `idle`, `busy`, and requests `waiting` for one.
    pub fn set_pool(&self, idle: usize, busy: usize, waiting: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.pool
            .get_or_create(&StateLabels { state: "idle" })
            .set(n(idle));
        self.pool
            .get_or_create(&StateLabels { state: "busy" })
            .set(n(busy));
        self.pool_waiting.set(n(waiting));
    }

    /// Encodes every metric in the Prometheus text format, after `refresh` has set the
    /// figures read from the database (through [`Scrape`]).
    pub fn encode(&self, refresh: impl FnOnce(&Scrape<'_>)) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.jobs.clear();
        let known = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for queue in known {
            for state in ["scheduled", "queued", "failed", "running"] {
                self.jobs
                    .get_or_create(&QueueStateLabels { queue, state })
                    .set(0);
            }
        }
        refresh(&Scrape(self));
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// What a scrape sets before encoding: the figures the database holds.
pub struct Scrape<'m>(&'m Metrics);

impl Scrape<'_> {
    /// `n` jobs of `queue` are in `state` (a waiting or running state).
    pub fn queue_depth(&self, queue: &str, state: &'static str, n: u64) {
        let queue = self.0.name(queue);
        self.0
            .jobs
            .get_or_create(&QueueStateLabels { queue, state })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The metrics themselves (for [`Metrics::set_pool`]).
    pub fn metrics(&self) -> &Metrics {
        self.0
    }
}

/// The method as a label: the standard ones by name, anything else `other`.
fn http_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;
