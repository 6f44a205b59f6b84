//! [`AppState`]: what every handler shares (store, catalogue, clock, config, token cache,
//! metrics, shutdown flag).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, Timestamp};
use kiln_metrics::Metrics;
use kiln_store::Store;
use tokio_util::sync::CancellationToken;

use crate::auth::throttle::LoginThrottle;
use crate::auth::token::TokenCache;
use crate::config::ServerConfig;
use crate::follow::LogHub;

/// Forgets the cached tokens and limits of every user the store says changed, on this node
/// or another (revocation at once everywhere). Ends with the state or the store.
async fn forget_changed_users(
    state: std::sync::Weak<Inner>,
    mut signals: tokio::sync::broadcast::Receiver<kiln_store::Signal>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let signal = signals.recv().await;
        let Some(inner) = state.upgrade() else {
            return;
        };
        match signal {
            Ok(kiln_store::Signal::UserChanged(user)) => {
                inner.tokens.forget_user(user);
                inner.limits.forget(Some(user));
            }
            Ok(_) => {}
            // A change may be among the missed signals: forget everything.
            Err(RecvError::Lagged(_)) => {
                inner.tokens.clear();
                inner.limits.forget(None);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Shared state of the HTTP API; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    catalogue: Arc<Catalogue>,
    clock: Arc<dyn Clock>,
    config: ServerConfig,
    tokens: TokenCache,
    logins: LoginThrottle,
    shutting_down: AtomicBool,
    /// Fired with `shutting_down`: ends live streams, which would hold the listener open.
    shutdown: CancellationToken,
    /// Started by the first log follower.
    log_hub: OnceLock<LogHub>,
    metrics: Arc<Metrics>,
    /// One permit per upload in progress (`ServerConfig::max_uploads`).
    uploads: Arc<tokio::sync::Semaphore>,
    /// Each user's submission bucket (`ServerConfig::submit_rate`, or their own rate).
    submissions: crate::rate::SubmitLimiter,
    /// Users' own limits, recently read.
    limits: crate::limits::LimitsCache,
}

impl AppState {
    /// State over `store`, serving the types of `catalogue`.
    pub fn new(
        store: Arc<dyn Store>,
        catalogue: Arc<Catalogue>,
        clock: Arc<dyn Clock>,
        config: ServerConfig,
    ) -> Self {
        Self::with_metrics(store, catalogue, clock, config, Arc::default())
    }

    /// [`AppState::new`], recording into `metrics` (the node's, shared with its worker and
    /// store).
    pub fn with_metrics(
        store: Arc<dyn Store>,
        catalogue: Arc<Catalogue>,
        clock: Arc<dyn Clock>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let signals = store.subscribe();
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.max_uploads.max(1)));
        let submissions = crate::rate::SubmitLimiter::new(config.submit_rate);
        let state = Self {
            inner: Arc::new(Inner {
                uploads,
                submissions,
                limits: crate::limits::LimitsCache::default(),
                store,
                catalogue,
                clock,
                config,
                tokens: TokenCache::default(),
                logins: LoginThrottle::default(),
                shutting_down: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                log_hub: OnceLock::new(),
                metrics,
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(forget_changed_users(Arc::downgrade(&state.inner), signals));
        }
        state
    }

    /// From now on every request except `/healthz` is answered 503, and live streams end
    /// (the shutdown order is in `docs/design.md`, "Operations").
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
    }

    /// Takes one submission from `user`'s allowance at `rate` (`Err`: how long until one
    /// is free); `None`: no limit.
    pub fn take_submission(
        &self,
        user: &kiln_domain::User,
        rate: Option<crate::rate::SubmitRate>,
    ) -> Result<(), std::time::Duration> {
        match rate {
            Some(rate) => self.inner.submissions.take(user.id, rate),
            None => Ok(()),
        }
    }

    /// Users' own limits, recently read.
    pub fn limits_cache(&self) -> &crate::limits::LimitsCache {
        &self.inner.limits
    }

    /// A permit for one more upload, if fewer than `max_uploads` are in progress.
    pub fn upload_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.inner.uploads).try_acquire_owned().ok()
    }

    /// Fires when shutdown begins; live streams end then.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The live log fan-out (started on first use).
    pub fn log_hub(&self) -> &LogHub {
        self.inner.log_hub.get_or_init(|| {
            LogHub::start(
                self.inner.store.as_ref(),
                self.inner.config.log_follow_buffer,
            )
        })
    }

    /// Whether [`AppState::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The job types.
    pub fn catalogue(&self) -> &Catalogue {
        &self.inner.catalogue
    }

    /// The current time from the injected clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Login attempts per username and the password-hashing slots.
    pub fn logins(&self) -> &LoginThrottle {
        &self.inner.logins
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The bearer-token cache.
    pub fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }
}
