//! Kiln's worker runtime: it claims jobs from the [`Store`], runs them through the kernels of
//! a [`Registry`], and stores how each attempt ended.
//!
//! # Layout
//! - this file: [`WorkerConfig`], [`Worker`] (start-up) and [`WorkerHandle`] (shutdown).
//! - [`dispatch`]: the loop that claims work when a slot is free, woken by the store's
//!   in-process signals (not a polling sleep), and routes cancel signals to running attempts.
//! - [`execute`]: one attempt: timeout, cancel, progress and log flushing, the fenced
//!   completion, and the retry decision.
//! - [`artifact`]: an attempt's scratch directory, published to the object store on
//!   success; the sweep of artifacts left by pruned jobs.
//! - [`upkeep`]: heartbeats (lease renewal, the cancel fallback) and maintenance (rescue of
//!   expired leases, promotion of due jobs, pruning).
//!
//! # Guarantees
//! Every write an attempt makes is fenced by its [`Lease`] (job, attempt number, node), so an
//! attempt whose lease was rescued cannot overwrite the newer attempt. At start-up the jobs
//! this node id still holds from a previous incarnation are failed as `interrupted` and run
//! again; expired leases of other nodes are rescued by whichever node sees them first.
#![warn(missing_docs)]

mod artifact;
mod dispatch;
mod execute;
mod fair;
mod pace;
mod supervise;
mod upkeep;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, Failure, Job, JobId, Lease, Timestamp};
use kiln_kernels::Registry;
use kiln_metrics::Metrics;
use kiln_store::{LeaseFilter, Outcome, Store, StoreError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This node's id, recorded on every lease. Keep it stable across restarts so the next
    /// incarnation rescues the jobs this one was running.
    pub node_id: String,
    /// Attempts run at once on this node.
    pub max_concurrency: usize,
    /// The most jobs this node claims ahead of its free slots, for slots to start as soon
    /// as they finish a job, with each outcome stored by a task of its own instead of the
    /// slot waiting for it (many outcomes and claims then share one transaction). How many
    /// it really claims ahead follows how short the jobs are: about as many as the slots
    /// finish while a claim is at the store (`0` for jobs that run longer than a claim
    /// takes). `0`: none, and each slot stores its outcome and claims its next job in one
    /// write (best with an embedded database, whose writes cost no round trip).
    pub claim_ahead: usize,
    /// A job claimed ahead that has waited this long for a slot is given back
    /// ([`kiln_store::Store::job_release`]), so another node may run it.
    pub claim_ahead_wait: Duration,
    /// Attempts run at once per queue on this node (queues not named are unlimited).
    pub queue_limits: HashMap<String, usize>,
    /// How long a claim or renewal holds a job.
    pub lease_duration: Duration,
    /// How often leases are renewed (and pending cancels polled, as the signal fallback).
    pub heartbeat_interval: Duration,
    /// The longest the dispatcher waits without a signal before it looks for work anyway
    /// (work from other processes on the same database).
    pub poll_interval: Duration,
    /// How often expired leases are rescued and due jobs promoted (even with every slot
    /// busy).
    pub rescue_interval: Duration,
    /// How often old terminal jobs are pruned.
    pub prune_interval: Duration,
    /// Terminal jobs older than this are pruned.
    pub retention: Duration,
    /// At most this many terminal jobs are kept (the most recent ones).
    pub max_jobs: Option<u64>,
    /// How often a running attempt's progress and log lines are written.
    pub progress_flush: Duration,
    /// Local scratch space where attempts write their artifacts
    /// (`<dir>/<job id>.<attempt>/<name>`) before a succeeded attempt's files move into
    /// [`WorkerConfig::objects`]. Best on the same file system as a local object store:
    /// the move is then a rename, not a copy.
    pub artifact_scratch: std::path::PathBuf,
    /// Users' uploaded files, which jobs such as `csv_aggregate {file_id}` read (each job
    /// only its owner's), and jobs' artifacts. `None`: such jobs fail permanently with
    /// `no_object_storage`, and artifacts are discarded.
    pub objects: Option<kiln_objects::Objects>,
    /// The most slots of this node one client's jobs may hold (see [`fair`]); `None`: no
    /// share.
    pub owner_slots: Option<usize>,
    /// The bytes each user may keep in uploaded files and artifacts (an admin may set
    /// another for one user); a succeeded attempt whose artifacts would pass it fails with
    /// `storage_quota`. `None`: no limit.
    pub storage_quota: Option<u64>,
    /// This process's instance id in the node registry, when the node registered itself
    /// ([`kiln_store::Store::node_register`]): the heartbeat then renews the registration
    /// too, and a clean shutdown removes it.
    pub registered: Option<uuid::Uuid>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            node_id: "kiln".to_owned(),
            max_concurrency: 4,
            claim_ahead: 0,
            claim_ahead_wait: Duration::from_millis(500),
            queue_limits: HashMap::new(),
            lease_duration: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            // A due scheduled or failed job reads as `queued` within a second
            // (`docs/design.md`, "Lifecycle").
            rescue_interval: Duration::from_secs(1),
            prune_interval: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_jobs: None,
            progress_flush: Duration::from_millis(250),
            artifact_scratch: std::env::temp_dir().join("kiln-artifact-scratch"),
            objects: None,
            owner_slots: None,
            storage_quota: None,
            registered: None,
        }
    }
}

/// Why a running attempt was asked to stop. The first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// Its owner cancelled the job.
    Cancel,
    /// It ran past its type's timeout.
    Timeout,
    /// Its lease is gone: another node rescued the job, so this attempt must not write.
    LeaseLost,
    /// The node is shutting down and the grace period is over.
    Shutdown,
}

/// The stop switch of one running attempt: the kernel's cancel token plus the reason.
#[derive(Debug, Clone, Default)]
struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Stop {
    fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }
}

/// An attempt this node holds (see [`Shared::running`]), as the dispatcher and the
/// heartbeat see it.
#[derive(Debug)]
struct Running {
    lease: Lease,
    queue: String,
    owner: kiln_domain::UserId,
    stop: Stop,
}

/// State shared by the dispatcher, the executors and the upkeep tasks.
struct Shared {
    config: WorkerConfig,
    store: Arc<dyn Store>,
    registry: Registry,
    catalogue: Arc<Catalogue>,
    clock: Arc<dyn Clock>,
    /// Claim only these types (the ones this node has kernels for).
    types: Vec<String>,
    /// Every attempt this node holds a lease of: claimed and waiting in [`Shared::ready`],
    /// running on a slot, or finished with its outcome still being stored.
    running: Mutex<HashMap<JobId, Running>>,
    /// Claimed jobs no slot has started yet, oldest claim first, with when each was
    /// claimed; each is in `running` already.
    ready: Mutex<VecDeque<(Job, Stop, Instant)>>,
    /// Slots in use: executor tasks, each running jobs from `ready` until it is empty.
    busy: AtomicUsize,
    /// How long attempts and claims take, which sets how many jobs to claim ahead.
    pace: Mutex<pace::Pace>,
    /// Roles of the owners of running jobs, for the fair share.
    roles: fair::Roles,
    /// An attempt finished or its outcome was stored: a slot may be free, or the jobs
    /// claimed ahead may run low.
    slot_freed: Notify,
    /// Renew leases now (after lagging behind the signals).
    heartbeat_now: Notify,
    /// Read-held for a whole claim (the dispatcher's round, or an executor's completion
    /// that claims its next job) until the claimed jobs are in `running`; a shutdown takes
    /// it for writing, so it knows no claimed job is still on its way to an executor.
    claiming: tokio::sync::RwLock<()>,
    /// Cancelled when the node stops taking work.
    stop_claiming: CancellationToken,
    /// Cancelled when shutdown's grace is over: an outcome still waiting for the store to
    /// come back is given up then (the lease runs out and the job runs again).
    give_up: CancellationToken,
    rng: Mutex<StdRng>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Running>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update
        // is a single insert or remove), so a poisoned lock is still safe to use.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a claimed job as held by this node and puts it in line for a slot.
    fn claimed(&self, job: Job) {
        let stop = self.running_instead(None, &job);
        self.ready().push_back((job, stop, Instant::now()));
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<(Job, Stop, Instant)>> {
        // Every update is one push or pop: a poisoned lock is still consistent.
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next claimed job for a slot, if any.
    fn take_ready(&self) -> Option<(Job, Stop)> {
        self.ready().pop_front().map(|(job, stop, _)| (job, stop))
    }

    /// Starts a slot for each claimed job waiting while slots are free.
    fn fill_slots(self: &Arc<Self>, executors: &TaskTracker) {
        let mut waiting = self.ready().len();
        while waiting > 0 && self.busy() < self.config.max_concurrency {
            self.busy.fetch_add(1, Ordering::AcqRel);
            executors.spawn(execute::run(Arc::clone(self), executors.clone()));
            waiting -= 1;
        }
    }

    /// Slots in use.
    fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, pace::Pace> {
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `job` as running in place of `finished` (if any), in one step, so the slot
    /// is never seen free in between; returns the new attempt's stop switch.
    fn running_instead(&self, finished: Option<JobId>, job: &Job) -> Stop {
        let stop = Stop::default();
        let running = Running {
            lease: Lease {
                job_id: job.id,
                attempt: job.attempts,
                node: self.config.node_id.clone(),
            },
            queue: job.queue.clone().into(),
            owner: job.owner,
            stop: stop.clone(),
        };
        let mut map = self.running();
        if let Some(id) = finished {
            map.remove(&id);
        }
        map.insert(job.id, running);
        stop
    }

    /// The outcome of a failed attempt: `failed` with a backoff delay drawn from the type's
    /// policy while attempts remain and the failure is retryable, `dead` otherwise.
    fn failed(&self, job: &Job, failure: Failure, now: Timestamp) -> Outcome {
        let retry_at = (failure.retryable && job.attempts < job.max_attempts).then(|| {
            let backoff = self.catalogue.get(job.job_type).policy.backoff;
            let delay = {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                backoff.delay(job.attempts, &mut *rng)
            };
            kiln_domain::clock::later(now, delay)
        });
        Outcome::Failed { failure, retry_at }
    }
}

/// A worker, configured but not started.
pub struct Worker {
    shared: Shared,
}

impl Worker {
    /// A worker running `registry`'s kernels on `store`, with policies from `catalogue`.
    pub fn new(
        config: WorkerConfig,
        store: Arc<dyn Store>,
        registry: Registry,
        catalogue: Arc<Catalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let types = registry.type_names();
        Self {
            shared: Shared {
                config,
                store,
                registry,
                catalogue,
                clock,
                types,
                running: Mutex::new(HashMap::new()),
                ready: Mutex::new(VecDeque::new()),
                busy: AtomicUsize::new(0),
                pace: Mutex::new(pace::Pace::default()),
                roles: fair::Roles::default(),
                slot_freed: Notify::new(),
                heartbeat_now: Notify::new(),
                claiming: tokio::sync::RwLock::new(()),
                stop_claiming: CancellationToken::new(),
                give_up: CancellationToken::new(),
                rng: Mutex::new(StdRng::from_os_rng()),
                metrics: Arc::default(),
            },
        }
    }

    /// Records into `metrics` (the node's, shared with its HTTP API and store) instead of
    /// a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.shared.metrics = metrics;
        self
    }

    /// Rescues the jobs a previous incarnation of this node left running, then starts the
    /// dispatcher, the heartbeat and maintenance.
    pub async fn start(self) -> Result<WorkerHandle, StoreError> {
        let shared = Arc::new(self.shared);
        shared.metrics.set_slots(shared.config.max_concurrency);
        // Subscribe before the first claim so no signal published after it is missed.
        let signals = shared.store.subscribe();
        rescue_own(&shared).await?;
        let stop_claiming = shared.stop_claiming.clone();
        let stop_all = CancellationToken::new();
        let executors = TaskTracker::new();
        let metrics = Arc::clone(&shared.metrics);
        let dispatcher = {
            let (shared, stop_claiming, stop_all, executors) = (
                Arc::clone(&shared),
                stop_claiming.clone(),
                stop_all.clone(),
                executors.clone(),
            );
            // The first run uses the subscription made before the first claim; a restart
            // subscribes again (and claims at once, so nothing missed meanwhile waits).
            let mut first = Some(signals);
            move || {
                let signals = first.take().unwrap_or_else(|| shared.store.subscribe());
                dispatch::run(
                    Arc::clone(&shared),
                    signals,
                    stop_claiming.clone(),
                    stop_all.clone(),
                    executors.clone(),
                )
            }
        };
        let heartbeat = {
            let (shared, stop_all) = (Arc::clone(&shared), stop_all.clone());
            move || upkeep::heartbeat(Arc::clone(&shared), stop_all.clone())
        };
        let maintenance = {
            let (shared, stop_all) = (Arc::clone(&shared), stop_all.clone());
            move || upkeep::maintenance(Arc::clone(&shared), stop_all.clone())
        };
        let tasks = vec![
            supervise::supervise(
                "dispatcher",
                Arc::clone(&metrics),
                stop_claiming.clone(),
                dispatcher,
            ),
            supervise::supervise(
                "heartbeat",
                Arc::clone(&metrics),
                stop_all.clone(),
                heartbeat,
            ),
            supervise::supervise("maintenance", metrics, stop_all.clone(), maintenance),
        ];
        tracing::info!(
            node = %shared.config.node_id,
            max_concurrency = shared.config.max_concurrency,
            types = ?shared.types,
            "worker started"
        );
        Ok(WorkerHandle {
            shared,
            stop_claiming,
            stop_all,
            executors,
            tasks,
        })
    }
}

/// Fails the jobs this node id still holds (its previous incarnation died while running
/// them), so they run again.
async fn rescue_own(shared: &Shared) -> Result<(), StoreError> {
    let leases = shared
        .store
        .lease_find(LeaseFilter::Node(shared.config.node_id.clone()))
        .await?;
    for lease in leases {
        let failure = Failure::retryable(
            "interrupted",
            "the node stopped while the attempt was running",
        );
        rescue(shared, &lease, failure).await;
    }
    Ok(())
}

/// Ends an orphaned attempt as failed (retried per policy), fenced by its lease: if the
/// attempt finished or was rescued meanwhile, nothing is written.
async fn rescue(shared: &Shared, lease: &Lease, failure: Failure) {
    let now = shared.clock.now();
    let job = match shared.store.job_get(None, lease.job_id).await {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(job_id = %lease.job_id, error = %e, "cannot read a job to rescue");
            return;
        }
    };
    let outcome = shared.failed(&job, failure, now);
    match shared.store.job_complete(lease, outcome, now).await {
        Ok(job) => {
            shared.metrics.jobs_rescued(1);
            tracing::warn!(
                job_id = %job.id,
                job_type = %job.job_type,
                attempt = lease.attempt,
                from_node = %lease.node,
                state = %job.state,
                "rescued an orphaned attempt"
            );
        }
        Err(StoreError::LeaseLost) => {}
        Err(e) => tracing::warn!(job_id = %lease.job_id, error = %e, "rescue failed"),
    }
}

/// Gives back claimed `jobs` that no slot started (queued again, the attempt not spent)
/// and forgets them. One that cannot be given back (the store is out) stays held until its
/// lease expires, and is then rescued like any attempt of a node that stopped.
async fn release(shared: &Shared, jobs: Vec<Job>) {
    if jobs.is_empty() {
        return;
    }
    let now = shared.clock.now();
    let n = jobs.len();
    for job in jobs {
        let lease = Lease {
            job_id: job.id,
            attempt: job.attempts,
            node: shared.config.node_id.clone(),
        };
        match shared.store.job_release(&lease, now).await {
            Ok(_) | Err(StoreError::LeaseLost) => {}
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "cannot give back a job claimed ahead; it will be rescued when its lease expires");
            }
        }
        shared.running().remove(&job.id);
    }
    tracing::debug!(jobs = n, "gave back jobs claimed ahead");
    shared.slot_freed.notify_one();
}

/// A started worker.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop_claiming: CancellationToken,
    stop_all: CancellationToken,
    executors: TaskTracker,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkerHandle {
    /// How many attempts this node holds now: running on a slot, claimed ahead and waiting
    /// for one, or finished with their outcome still being stored.
    pub fn running(&self) -> usize {
        self.shared.running().len()
    }

    /// Stops claiming, lets running attempts finish for up to `grace`, then interrupts the
    /// rest: they are stored `failed` and due at once, so they run again after a restart or
    /// on another node. Returns when every attempt's outcome is stored.
    pub async fn shutdown(self, grace: Duration) {
        self.stop_claiming.cancel();
        // Wait out a claim round in flight: its jobs must reach the tracker before we wait.
        drop(self.shared.claiming.write().await);
        // Jobs claimed ahead that no slot started go back to the queue at once.
        let ready: Vec<Job> = self.shared.ready().drain(..).map(|(job, ..)| job).collect();
        release(&self.shared, ready).await;
        self.executors.close();
        if tokio::time::timeout(grace, self.executors.wait())
            .await
            .is_err()
        {
            let stops: Vec<Stop> = self
                .shared
                .running()
                .values()
                .map(|r| r.stop.clone())
                .collect();
            tracing::warn!(
                interrupted = stops.len(),
                "grace period over: interrupting running attempts"
            );
            for stop in stops {
                stop.stop(StopReason::Shutdown);
            }
            self.shared.give_up.cancel();
            self.executors.wait().await;
        }
        self.stop_all.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(instance) = self.shared.config.registered {
            let id = &self.shared.config.node_id;
            if let Err(e) = self.shared.store.node_deregister(id, instance).await {
                tracing::warn!(error = %e, "could not leave the node registry");
            }
        }
        tracing::info!("worker stopped");
    }
}
