//! The CPU pool: compute kernels run here, off the async runtime, so the HTTP API and the
//! dispatcher stay responsive while every core computes.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::{JobContext, KernelError, Progress};

/// One thread per core, created on first use, each pinned to a core of its own.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Pinned only with a core for every thread (a CPU quota below the cores the
        // process may use gives fewer threads than cores, never more).
        let cores = allowed_cores();
        let cores = if threads <= cores.len() {
            cores
        } else {
            Vec::new()
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kiln-cpu-{i}"))
            .start_handler(move |i| pin(&cores, i))
            .build()
            .unwrap_or_else(|e| panic!("cannot start the CPU pool: {e}"))
    })
}

/// The CPUs this process may run on, in order.
fn allowed_cores() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins pool thread `i` to the i-th allowed CPU.
///
/// Unpinned, Linux tends to wake a pool thread on the CPU of the thread that woke it (the
/// one that just split the work), so for the first milliseconds of a product both threads
/// shared one core while the other idled: a `matrix_multiply` of n = 512 ran at half speed
/// after any pause between jobs (BENCHMARKS.md, "Compute kernels"). Pinned, each thread
/// computes on its own core from the start. A refusal (a sandbox that forbids it) leaves
/// the thread unpinned, which is slower, never wrong.
fn pin(cores: &[usize], i: usize) {
    let Some(&cpu) = cores.get(i) else { return };
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::debug!(cpu, error = %e, "CPU pool thread not pinned");
    }
}

/// Runs `work` on the CPU pool and waits for it without blocking the runtime. A panic in
/// `work` becomes a permanent `kernel_panic` error instead of taking the node down.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, KernelError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool().spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
    });
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_panic)) => Err(KernelError::Permanent {
            code: "kernel_panic",
            source: "the kernel panicked; this is a bug in Kiln".into(),
        }),
        Err(_dropped) => Err(KernelError::Cancelled),
    }
}

/// What a compute kernel consults between units of work: its cancel token and progress.
#[derive(Debug, Clone, Default)]
pub struct Check {
    cancel: CancellationToken,
    progress: Progress,
}

impl Check {
    /// The attempt's cancel token and progress sink.
    pub fn new(ctx: &JobContext) -> Self {
        Self {
            cancel: ctx.cancel.clone(),
            progress: ctx.progress.clone(),
        }
    }

    /// A check attached to nothing (tests, benchmarks).
    pub fn detached() -> Self {
        Self::default()
    }

    /// The cancel token (to fire it in tests).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// `Err(Cancelled)` once the attempt should stop.
    pub fn stopped(&self) -> Result<(), KernelError> {
        if self.cancel.is_cancelled() {
            Err(KernelError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Records progress (cheap: an atomic store; the worker throttles the writes).
    pub fn progress(&self, fraction: f32) {
        self.progress.set(fraction);
    }

    /// Records progress unless more is already recorded ([`Progress::raise`]).
    pub fn raise_progress(&self, fraction: f32) {
        self.progress.raise(fraction);
    }
}
