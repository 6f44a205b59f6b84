//! The worker against a real SQLite store on a temp file: execution, retries, timeouts,
//! scheduling, priorities, queue limits, cancellation, rescue and shutdown.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiln_domain::job::Submission;
use kiln_domain::job_type::Catalogue;
use kiln_domain::{
    Backoff, Clock, Job, JobId, JobState, JobType, Lease, ManualClock, NewJob, Policy, Role,
    SystemClock, UserId,
};
use kiln_kernels::{Classify, JobContext, Kernel, KernelError, Registry};
use kiln_store::{ClaimRequest, InsertOptions, NewUser, Outcome, Store, StoreError};
use kiln_testkit::db::TempSqlite;
use kiln_testkit::wait::wait_until;
use kiln_worker::{Worker, WorkerConfig, WorkerHandle};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(10);

struct Fixture {
    db: TempSqlite,
    store: Arc<dyn Store>,
    owner: UserId,
    catalogue: Catalogue,
    /// Where the worker's and the submissions' timestamps come from.
    clock: Arc<dyn Clock>,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock)).await
    }

    /// A fixture whose time stands still until the test moves `clock`: whether a job is
    /// due or a lease expired then never depends on how fast this machine is.
    async fn manual(clock: &Arc<ManualClock>) -> Self {
        Self::with_clock(Arc::clone(clock) as Arc<dyn Clock>).await
    }

    async fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let db = TempSqlite::new();
        let store: Arc<dyn Store> = db.store.clone();
        let user = store
            .user_insert(
                NewUser {
                    username: "ada".into(),
                    password_hash: "x".into(),
                    role: Role::Admin,
                },
                clock.now(),
            )
            .await
            .unwrap();
        let mut catalogue = Catalogue::default();
        // Fast retries so the tests do not wait for the default one-second backoff.
        for t in [JobType::Echo, JobType::Sleep] {
            let mut policy = catalogue.get(t).policy;
            policy.backoff = Backoff {
                base_ms: 20,
                cap_ms: 50,
            };
            catalogue.set_policy(t, policy);
        }
        Self {
            db,
            store,
            owner: user.id,
            catalogue,
            clock,
        }
    }

    fn config(&self) -> WorkerConfig {
        WorkerConfig {
            node_id: "node-a".into(),
            heartbeat_interval: Duration::from_millis(100),
            rescue_interval: Duration::from_millis(100),
            progress_flush: Duration::from_millis(20),
            ..WorkerConfig::default()
        }
    }

    async fn start(&self, config: WorkerConfig, registry: Registry) -> WorkerHandle {
        Worker::new(
            config,
            Arc::clone(&self.store),
            registry,
            Arc::new(self.catalogue.clone()),
            Arc::clone(&self.clock),
        )
        .start()
        .await
        .unwrap()
    }

    async fn submit(&self, sub: Submission) -> JobId {
        let job = NewJob::parse(
            sub,
            self.owner,
            Role::Admin,
            &self.catalogue,
            self.clock.now(),
        )
        .unwrap();
        let id = job.id;
        self.store
            .job_insert(job, InsertOptions::default())
            .await
            .unwrap();
        id
    }

    async fn submit_type(&self, job_type: &str, payload: Value) -> JobId {
        self.submit(Submission {
            job_type: job_type.into(),
            payload,
            ..Submission::default()
        })
        .await
    }

    async fn get(&self, id: JobId) -> Job {
        self.store.job_get(None, id).await.unwrap()
    }

    async fn wait_state(&self, id: JobId, state: JobState) -> Job {
        wait_until(&format!("job {id} to be {state}"), LONG, || async {
            let job = self.get(id).await;
            if job.state == state {
                Ok(job)
            } else {
                Err(job.state)
            }
        })
        .await
    }
}

/// An `echo` stand-in that fails `fail_times` times (retryable or not), then echoes.
struct Flaky {
    calls: AtomicU32,
    fail_times: u32,
    retryable: bool,
}

#[async_trait]
impl Kernel for Flaky {
    fn job_type(&self) -> JobType {
        JobType::Echo
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        ctx.log.line(format!("call {n}"));
        if n <= self.fail_times {
            let err: Result<Value, _> = Err(std::io::Error::other(format!("boom {n}")));
            return if self.retryable {
                err.retryable("upstream_unavailable")
            } else {
                err.permanent("invalid_input")
            };
        }
        Ok(ctx.payload)
    }
}

/// An `echo` stand-in that records the order in which payloads (numbers) ran.
struct Recorder(Arc<std::sync::Mutex<Vec<i64>>>);

#[async_trait]
impl Kernel for Recorder {
    fn job_type(&self) -> JobType {
        JobType::Echo
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        self.0
            .lock()
            .unwrap()
            .push(ctx.payload.as_i64().unwrap_or(i64::MIN));
        Ok(ctx.payload)
    }
}

fn registry_with(kernel: Flaky) -> Registry {
    let mut registry = Registry::default();
    registry.register(Arc::new(kernel));
    registry
}

#[tokio::test]
async fn an_echo_job_succeeds_with_its_payload_as_result() {
    let f = Fixture::new().await;
    let worker = f.start(f.config(), Registry::default()).await;
    let id = f.submit_type("echo", json!({"hello": "world"})).await;
    let job = f.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.result, Some(json!({"hello": "world"})));
    assert_eq!(job.attempts, 1);
    assert!(job.started_at.unwrap() >= job.created_at);
    assert!(job.finished_at.unwrap() >= job.started_at.unwrap());
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_retryable_failure_is_retried_until_it_succeeds() {
    let f = Fixture::new().await;
    let kernel = Flaky {
        calls: AtomicU32::new(0),
        fail_times: 2,
        retryable: true,
    };
    let worker = f.start(f.config(), registry_with(kernel)).await;
    let id = f.submit_type("echo", json!(7)).await;
    let job = f.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.result, Some(json!(7)));
    let states: Vec<JobState> = f
        .store
        .event_list(None, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == JobState::Failed).count(),
        2,
        "{states:?}"
    );
    let log = f.store.log_get(None, id).await.unwrap();
    assert!(log.contains("call 1") && log.contains("call 3"), "{log}");
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn retries_run_out_into_dead() {
    let f = Fixture::new().await;
    let kernel = Flaky {
        calls: AtomicU32::new(0),
        fail_times: u32::MAX,
        retryable: true,
    };
    let worker = f.start(f.config(), registry_with(kernel)).await;
    let id = f.submit_type("echo", json!(1)).await;
    let job = f.wait_state(id, JobState::Dead).await;
    assert_eq!(job.attempts, job.max_attempts);
    let error = job.error.unwrap();
    assert_eq!(error.code, "upstream_unavailable");
    assert!(error.retryable);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_permanent_failure_is_dead_at_once() {
    let f = Fixture::new().await;
    let kernel = Flaky {
        calls: AtomicU32::new(0),
        fail_times: u32::MAX,
        retryable: false,
    };
    let worker = f.start(f.config(), registry_with(kernel)).await;
    let id = f.submit_type("echo", json!(1)).await;
    let job = f.wait_state(id, JobState::Dead).await;
    assert_eq!(job.attempts, 1);
    assert_eq!(job.error.unwrap().code, "invalid_input");
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_interrupted_and_retried() {
    let mut f = Fixture::new().await;
    f.catalogue.set_policy(
        JobType::Sleep,
        Policy {
            max_attempts: 2,
            timeout_ms: 100,
            backoff: Backoff {
                base_ms: 10,
                cap_ms: 10,
            },
        },
    );
    let worker = f.start(f.config(), Registry::default()).await;
    let id = f.submit_type("sleep", json!({"ms": 60_000})).await;
    let job = f.wait_state(id, JobState::Dead).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(job.error.unwrap().code, "timeout");
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cancelling_a_running_sleep_interrupts_it() {
    let f = Fixture::new().await;
    let worker = f.start(f.config(), Registry::default()).await;
    let id = f.submit_type("sleep", json!({"ms": 3_600_000})).await;
    f.wait_state(id, JobState::Running).await;
    let (_, step) = f
        .store
        .job_cancel(None, id, SystemClock.now())
        .await
        .unwrap();
    assert_eq!(step, kiln_domain::Step::CancelRequested);
    let job = f.wait_state(id, JobState::Cancelled).await;
    assert!(job.cancel_requested);
    assert_eq!(worker.running(), 0);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_scheduled_job_starts_when_the_clock_reaches_its_run_at_and_not_before() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let f = Fixture::manual(&clock).await;
    let worker = f.start(f.config(), Registry::default()).await;
    let id = f
        .submit(Submission {
            job_type: "echo".into(),
            payload: json!(null),
            delay_ms: Some(300),
            ..Submission::default()
        })
        .await;
    // A job submitted later and due now has run: the worker has looked at the queue since.
    let probe = f.submit_type("echo", json!("probe")).await;
    f.wait_state(probe, JobState::Succeeded).await;
    assert_eq!(f.get(id).await.state, JobState::Scheduled);
    clock.advance(chrono::TimeDelta::milliseconds(299));
    let probe = f.submit_type("echo", json!("probe")).await;
    f.wait_state(probe, JobState::Succeeded).await;
    assert_eq!(f.get(id).await.state, JobState::Scheduled, "1 ms early");
    clock.advance(chrono::TimeDelta::milliseconds(1));
    let job = f.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.started_at, Some(job.run_at));
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn higher_priority_jobs_start_first() {
    let f = Fixture::new().await;
    let mut ids = Vec::new();
    for priority in [-10, 50, 0, 100, -100] {
        let id = f
            .submit(Submission {
                job_type: "echo".into(),
                payload: json!(priority),
                priority: Some(priority),
                ..Submission::default()
            })
            .await;
        ids.push((priority, id));
    }
    let config = WorkerConfig {
        max_concurrency: 1,
        ..f.config()
    };
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut registry = Registry::default();
    registry.register(Arc::new(Recorder(Arc::clone(&order))));
    let worker = f.start(config, registry).await;
    for (_, id) in ids {
        f.wait_state(id, JobState::Succeeded).await;
    }
    let order: Vec<i64> = order.lock().unwrap().clone();
    assert_eq!(order, [100, 50, 0, -10, -100]);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_queue_limit_caps_concurrent_attempts_of_that_queue() {
    let f = Fixture::new().await;
    let mut config = f.config();
    config.queue_limits.insert("slow".into(), 1);
    let worker = f.start(config, Registry::default()).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(
            f.submit(Submission {
                job_type: "sleep".into(),
                payload: json!({"ms": 100}),
                queue: Some("slow".into()),
                ..Submission::default()
            })
            .await,
        );
    }
    let fast = f.submit_type("echo", json!(1)).await;
    f.wait_state(fast, JobState::Succeeded).await;
    let mut spans = Vec::new();
    for id in slow {
        let job = f.wait_state(id, JobState::Succeeded).await;
        spans.push((job.started_at.unwrap(), job.finished_at.unwrap()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two `slow` attempts overlapped: {pair:?}"
        );
    }
    worker.shutdown(Duration::from_secs(1)).await;
}

/// Claims a job as another node would, with a lease of `lease` from the fixture's now.
async fn claim_as(f: &Fixture, node: &str, lease: Duration) -> Job {
    let now = f.clock.now();
    let mut claimed = f
        .store
        .job_claim(&ClaimRequest {
            node: node.into(),
            types: vec!["echo".into(), "sleep".into()],
            exclude_queues: vec![],
            exclude_owners: Vec::new(),
            limit: 1,
            now,
            lease,
            per_owner: None,
            per_owner_exempt: Vec::new(),
        })
        .await
        .unwrap();
    claimed.pop().expect("one job claimed")
}

#[tokio::test]
async fn an_expired_lease_is_rescued_and_the_late_completion_refused() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let f = Fixture::manual(&clock).await;
    let id = f.submit_type("echo", json!("again")).await;
    let ghost = claim_as(&f, "ghost", Duration::from_secs(30)).await;
    assert_eq!(ghost.attempts, 1);
    let worker = f.start(f.config(), Registry::default()).await;
    // The ghost's lease is still valid: a job submitted after it runs, and it is untouched.
    let probe = f.submit_type("echo", json!("probe")).await;
    f.wait_state(probe, JobState::Succeeded).await;
    let job = f.get(id).await;
    assert_eq!((job.state, job.attempts), (JobState::Running, 1));
    clock.advance(chrono::TimeDelta::seconds(31));
    // Rescued: attempt 1 failed. Its retry waits out a backoff on the same clock, which
    // may be zero (full jitter), so the job may already be running again by now.
    wait_until("the rescue of attempt 1", LONG, || async {
        let events = f.store.event_list(None, id).await.unwrap();
        let rescued = events
            .iter()
            .any(|e| e.state == JobState::Failed && e.attempt == 1);
        if rescued { Ok(()) } else { Err(events.len()) }
    })
    .await;
    let job = f.get(id).await;
    assert_eq!(job.error.unwrap().code, "lease_lost");
    if job.state == JobState::Failed {
        clock.set(job.run_at);
    }
    let job = f.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.attempts, 2, "rescued, then run again");
    let late = f
        .store
        .job_complete(
            &Lease {
                job_id: id,
                attempt: 1,
                node: "ghost".into(),
            },
            Outcome::Succeeded(json!("stale")),
            f.clock.now(),
        )
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert_eq!(f.get(id).await.result, Some(json!("again")));
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn at_start_up_the_jobs_of_this_node_s_previous_run_are_rescued() {
    let f = Fixture::new().await;
    let id = f.submit_type("echo", json!(3)).await;
    // A lease that has not expired: only the node-id match can rescue it this fast.
    let now = SystemClock.now();
    f.store
        .job_claim(&ClaimRequest {
            node: "node-a".into(),
            types: vec!["echo".into()],
            exclude_queues: vec![],
            exclude_owners: Vec::new(),
            limit: 1,
            now,
            lease: Duration::from_secs(3600),
            per_owner: None,
            per_owner_exempt: Vec::new(),
        })
        .await
        .unwrap();
    let worker = f.start(f.config(), Registry::default()).await;
    let job = f.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.attempts, 2);
    let events = f.store.event_list(None, id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.state == JobState::Failed && e.attempt == 1),
        "{events:?}"
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// An `echo` stand-in that holds its attempt until the gate opens (or it is stopped), so a
/// test decides when an attempt ends instead of racing a sleep. With `only`, it holds just
/// the jobs of that payload and echoes the others at once.
struct Gate {
    open: tokio::sync::watch::Receiver<bool>,
    only: Option<Value>,
}

#[async_trait]
impl Kernel for Gate {
    fn job_type(&self) -> JobType {
        JobType::Echo
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        if self.only.as_ref().is_some_and(|only| *only != ctx.payload) {
            return Ok(ctx.payload);
        }
        let mut open = self.open.clone();
        tokio::select! {
            () = ctx.cancel.cancelled() => Err(KernelError::Cancelled),
            opened = open.wait_for(|open| *open) => match opened {
                Ok(_) => Ok(ctx.payload),
                Err(_) => Err(KernelError::Cancelled),
            },
        }
    }
}

/// A registry whose `echo` is a [`Gate`] (holding only `only`, if given), and its gate.
fn gate_for(only: Option<Value>) -> (tokio::sync::watch::Sender<bool>, Registry) {
    let (open, gate) = tokio::sync::watch::channel(false);
    let mut registry = Registry::default();
    registry.register(Arc::new(Gate { open: gate, only }));
    (open, registry)
}

#[tokio::test]
async fn shutdown_interrupts_attempts_after_the_grace_and_they_run_again() {
    let f = Fixture::new().await;
    let (_closed, registry) = gate_for(None);
    let worker = f.start(f.config(), registry).await;
    let id = f.submit_type("echo", json!("held")).await;
    f.wait_state(id, JobState::Running).await;
    worker.shutdown(Duration::from_millis(50)).await;
    let job = f.get(id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.unwrap().code, "interrupted");
    assert!(job.run_at <= SystemClock.now());
    let (open, registry) = gate_for(None);
    open.send_replace(true);
    let worker = f.start(f.config(), registry).await;
    let job = f.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.attempts, 2);
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_lets_attempts_finish_within_the_grace() {
    let f = Fixture::new().await;
    let (open, registry) = gate_for(None);
    let worker = f.start(f.config(), registry).await;
    let id = f.submit_type("echo", json!("held")).await;
    f.wait_state(id, JobState::Running).await;
    // Shutdown may wait a minute for the attempt: it is still waiting while the attempt is
    // held (however long this machine takes to get here, it cannot have finished).
    let mut shutdown = tokio::spawn(worker.shutdown(Duration::from_secs(60)));
    let early = tokio::time::timeout(Duration::from_millis(100), &mut shutdown).await;
    assert!(
        early.is_err(),
        "shutdown returned while an attempt was held"
    );
    let late = f.submit_type("echo", json!("after shutdown began")).await;
    open.send_replace(true);
    shutdown.await.unwrap();
    assert_eq!(f.get(id).await.state, JobState::Succeeded);
    assert_eq!(
        f.get(late).await.state,
        JobState::Queued,
        "claimed during shutdown"
    );
    drop(f.db);
}

mod ahead;
#[path = "../common/flaky.rs"]
#[allow(dead_code)] // the outage's faults are for the other test binary
mod flaky;
