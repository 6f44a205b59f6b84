//! Background upkeep: the heartbeat that renews this node's leases, and maintenance
//! (rescue of other nodes' expired leases, promotion of due jobs, pruning).
//!
//! Maintenance is idempotent, so every node may run it: a rescue is a fenced completion
//! that only one node can win, promotion and pruning are single conditional statements.

use std::sync::Arc;

use kiln_domain::{Failure, Lease};
use kiln_store::LeaseFilter;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at};
use tokio_util::sync::CancellationToken;

use crate::{Shared, StopReason, artifact, rescue};

/// Renews the leases of running attempts, and the node's registration, every
/// `heartbeat_interval`. A lost lease stops its attempt without writing; a pending cancel
/// request stops it as cancelled (the fallback for a missed cancel signal).
pub(crate) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = shared.heartbeat_now.notified() => {}
        }
        if let Some(instance) = shared.config.registered {
            registered(&shared, instance).await;
        }
        let leases: Vec<Lease> = shared.running().values().map(|r| r.lease.clone()).collect();
        if leases.is_empty() {
            continue;
        }
        let now = shared.clock.now();
        let lease = shared.config.lease_duration;
        let renewal = match shared.store.lease_renew(&leases, now, lease).await {
            Ok(renewal) => renewal,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                continue;
            }
        };
        let running = shared.running();
        for id in &renewal.lost {
            if let Some(r) = running.get(id) {
                tracing::warn!(job_id = %id, "lease lost: stopping the attempt");
                r.stop.stop(StopReason::LeaseLost);
            }
        }
        for id in &renewal.cancel_requested {
            if let Some(r) = running.get(id) {
                r.stop.stop(StopReason::Cancel);
            }
        }
    }
}

/// Renews the node's registration. One that another process took over (this one missed
/// its heartbeats for a whole lease, so its jobs were rescued meanwhile) is an operator's
/// error worth a loud log line on every beat: two live processes share one node id.
async fn registered(shared: &Shared, instance: uuid::Uuid) {
    let id = &shared.config.node_id;
    match shared
        .store
        .node_heartbeat(id, instance, shared.clock.now())
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::error!(
            node = %id,
            "another process registered this node id after this one missed its heartbeats: \
             stop one of them"
        ),
        Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
    }
}

/// How often the whole artifact store is compared with the jobs table, for artifacts no
/// prune knew of (a delete that could not reach the store, a node that died between a
/// prune and its deletes): at start-up, then daily. Pruning itself deletes the artifacts
/// of the jobs it pruned by id, without listing the store.
const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Rescues expired leases and promotes due jobs every `rescue_interval`; prunes (with the
/// artifacts of pruned jobs) and sweeps stale scratch directories every `prune_interval`;
/// reconciles the artifact store and prunes old uploaded files every [`RECONCILE_INTERVAL`].
pub(crate) async fn maintenance(shared: Arc<Shared>, stop: CancellationToken) {
    let config = &shared.config;
    let mut rescue_tick = interval(config.rescue_interval);
    rescue_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut prune_tick = interval_at(Instant::now(), config.prune_interval);
    prune_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // After the first prune, and then daily.
    let mut reconcile_tick = interval_at(Instant::now(), RECONCILE_INTERVAL);
    reconcile_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = rescue_tick.tick() => {
                rescue_expired(&shared).await;
                if let Err(e) = shared.store.job_promote_due(shared.clock.now()).await {
                    tracing::warn!(error = %e, "promotion of due jobs failed");
                }
            }
            _ = prune_tick.tick() => prune(&shared).await,
            _ = reconcile_tick.tick() => {
                artifact::sweep_stored(&shared).await;
                prune_files(&shared).await;
            }
        }
    }
}

async fn rescue_expired(shared: &Shared) {
    let now = shared.clock.now();
    let leases = match shared.store.lease_find(LeaseFilter::Expired(now)).await {
        Ok(leases) => leases,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for expired leases");
            return;
        }
    };
    for lease in leases {
        let ours = shared
            .running()
            .get(&lease.job_id)
            .is_some_and(|r| r.lease == lease);
        if ours {
            // Still running here; the heartbeat renews it (it was late, not lost).
            shared.heartbeat_now.notify_one();
            continue;
        }
        rescue(shared, &lease, Failure::lease_lost()).await;
    }
}

/// Deletes the uploaded files older than the retention, like finished jobs (a job that
/// names one afterwards fails with `file_not_found`).
async fn prune_files(shared: &Shared) {
    let Some(objects) = &shared.config.objects else {
        return;
    };
    let cutoff = kiln_domain::clock::earlier(shared.clock.now(), shared.config.retention);
    match objects.file_prune(cutoff).await {
        Ok(0) => {}
        Ok(objects) => tracing::info!(objects, "pruned old uploaded files"),
        Err(e) => tracing::warn!(error = %e, "pruning uploaded files failed"),
    }
}

async fn prune(shared: &Shared) {
    let now = shared.clock.now();
    let cutoff = kiln_domain::clock::earlier(now, shared.config.retention);
    match shared.store.job_prune(cutoff, shared.config.max_jobs).await {
        Ok(pruned) if pruned.count == 0 => {}
        Ok(pruned) => {
            tracing::info!(
                pruned = pruned.count,
                with_artifacts = pruned.with_artifacts.len(),
                "pruned old terminal jobs"
            );
            artifact::delete_pruned(shared, &pruned.with_artifacts).await;
        }
        Err(e) => tracing::warn!(error = %e, "pruning failed"),
    }
    artifact::sweep_scratch(shared).await;
    match shared.store.token_prune(now).await {
        Ok(0) => {}
        Ok(pruned) => tracing::debug!(pruned, "deleted expired tokens"),
        Err(e) => tracing::warn!(error = %e, "deleting expired tokens failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_domain::job_type::Catalogue;
    use kiln_domain::{Clock, ManualClock, SystemClock, UserId};
    use kiln_kernels::Registry;
    use kiln_objects::{NewFile, Objects};
    use kiln_store::Store;
    use kiln_testkit::db::TempSqlite;

    use crate::{Worker, WorkerConfig};

    #[tokio::test]
    async fn uploaded_files_older_than_the_retention_are_pruned() {
        let db = TempSqlite::new();
        let store: Arc<dyn Store> = db.store.clone();
        let objects = Objects::from_url("memory:///", Vec::<(String, String)>::new()).unwrap();
        let file = NewFile {
            name: "a.csv".into(),
            content_type: "text/csv".into(),
            created_at: chrono::Utc::now(),
        };
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b"x\n"),
        )]);
        objects.file_put(UserId(1), file, body, 1024).await.unwrap();
        // A week's retention, seen from `days` after the upload.
        let worker = |days| {
            let config = WorkerConfig {
                retention: std::time::Duration::from_secs(7 * 86_400),
                objects: Some(objects.clone()),
                ..WorkerConfig::default()
            };
            let at = SystemClock.now() + chrono::TimeDelta::days(days);
            Worker::new(
                config,
                Arc::clone(&store),
                Registry::default(),
                Arc::new(Catalogue::default()),
                Arc::new(ManualClock::new(at)),
            )
        };
        super::prune_files(&worker(6).shared).await;
        assert_eq!(objects.file_list(UserId(1)).await.unwrap().len(), 1, "kept");
        super::prune_files(&worker(8).shared).await;
        assert!(
            objects.file_list(UserId(1)).await.unwrap().is_empty(),
            "pruned"
        );
    }
}
