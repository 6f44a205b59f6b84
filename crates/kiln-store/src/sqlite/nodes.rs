//! The node registry on SQLite, judged by the caller's clock: one process owns the file
//! (the lock beside it refuses a second), so its clock is the only one.

use kiln_domain::Timestamp;
use rusqlite::{Connection, OptionalExtension};

use super::row::{self, ms};
use super::writer::Tx;
use crate::error::Result;
use crate::model::nodes::{holder, other_store};
use crate::model::{NODE_KEPT, NodeInfo, NodeStart, RateBucket};

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// See [`crate::Store::node_register`].
pub(super) fn register(
    tx: &mut Tx<'_>,
    node: &NodeStart,
    now: Timestamp,
) -> Result<Option<String>> {
    let now = ms(now);
    tx.db
        .prepare_cached("DELETE FROM nodes WHERE heartbeat_at < ?1")?
        .execute([now.saturating_sub(millis(NODE_KEPT))])?;
    let elsewhere: Option<(String, String)> = tx
        .db
        .prepare_cached(
            "SELECT id, objects FROM nodes
             WHERE id <> ?1 AND objects <> ?2 AND heartbeat_at + ttl_ms > ?3
             ORDER BY id LIMIT 1",
        )?
        .query_row(rusqlite::params![node.id, node.objects, now], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((other, objects)) = elsewhere {
        return Err(other_store(&other, &objects, node));
    }
    let taken = tx
        .db
        .prepare_cached(
            "INSERT INTO nodes (id, instance, host, pid, version, role, slots, objects, ttl_ms,
                                started_at, heartbeat_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
             ON CONFLICT (id) DO UPDATE SET
                 instance = excluded.instance, host = excluded.host, pid = excluded.pid,
                 version = excluded.version, role = excluded.role, slots = excluded.slots,
                 objects = excluded.objects, ttl_ms = excluded.ttl_ms,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
             WHERE nodes.heartbeat_at + nodes.ttl_ms <= excluded.heartbeat_at
                OR nodes.instance = excluded.instance OR ?11",
        )?
        .execute(rusqlite::params![
            node.id,
            node.instance.as_bytes(),
            node.host,
            node.pid,
            node.version,
            node.role,
            node.slots,
            node.objects,
            millis(node.ttl),
            now,
            node.take_over,
        ])?;
    if taken == 0 {
        let (host, pid, at): (String, u32, i64) = tx.db.query_row(
            "SELECT host, pid, heartbeat_at FROM nodes WHERE id = ?1",
            [&node.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let ago = now.saturating_sub(at) as f64 / 1000.0;
        return Ok(Some(holder(i64::from(pid), &host, ago)));
    }
    Ok(None)
}

/// See [`crate::Store::node_heartbeat`].
pub(super) fn heartbeat(
    tx: &mut Tx<'_>,
    id: &str,
    instance: uuid::Uuid,
    now: Timestamp,
) -> Result<bool> {
    let changed = tx
        .db
        .prepare_cached("UPDATE nodes SET heartbeat_at = ?3 WHERE id = ?1 AND instance = ?2")?
        .execute(rusqlite::params![id, instance.as_bytes(), ms(now)])?;
    Ok(changed == 1)
}

/// See [`crate::Store::node_deregister`].
pub(super) fn deregister(tx: &mut Tx<'_>, id: &str, instance: uuid::Uuid) -> Result<()> {
    tx.db
        .prepare_cached("DELETE FROM nodes WHERE id = ?1 AND instance = ?2")?
        .execute(rusqlite::params![id, instance.as_bytes()])?;
    Ok(())
}

/// See [`crate::Store::node_list`] (running jobs counted through `jobs_lease`).
pub(super) fn list(db: &Connection, now: Timestamp) -> Result<Vec<NodeInfo>> {
    let mut stmt = db.prepare_cached(
        "WITH running AS (
             SELECT node, count(*) AS n FROM jobs INDEXED BY jobs_lease
             WHERE state = 'running' AND node IS NOT NULL GROUP BY node
         )
         SELECT id, host, pid, version, role, slots, coalesce(running.n, 0), objects,
                started_at, heartbeat_at, heartbeat_at + ttl_ms > ?1
         FROM nodes LEFT JOIN running ON running.node = nodes.id
         ORDER BY id",
    )?;
    let rows = stmt.query_map([ms(now)], |r| {
        Ok(NodeInfo {
            id: r.get(0)?,
            host: r.get(1)?,
            pid: r.get(2)?,
            version: r.get(3)?,
            role: r.get(4)?,
            slots: r.get(5)?,
            running: r.get(6)?,
            objects: r.get(7)?,
            started_at: row::time(r, 8)?,
            heartbeat_at: row::time(r, 9)?,
            live: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// See [`crate::Store::rate_take`], by the caller's clock (Unix milliseconds in `at`).
pub(super) fn rate_take(
    tx: &mut Tx<'_>,
    bucket: &RateBucket,
    cost: f64,
    now: Timestamp,
) -> Result<Option<std::time::Duration>> {
    let cost = cost.clamp(0.0, bucket.capacity);
    let now = ms(now);
    let level: Option<(f64, i64)> = tx
        .db
        .prepare_cached("SELECT level, at FROM rate_buckets WHERE name = ?1")?
        .query_row([&bucket.name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let level = match level {
        Some((level, at)) => {
            let secs = (now.saturating_sub(at)).max(0) as f64 / 1000.0;
            (level + secs * bucket.per_second).min(bucket.capacity)
        }
        None => bucket.capacity,
    };
    if level < cost {
        return Ok(Some(bucket.wait(level, cost)));
    }
    tx.db
        .prepare_cached(
            "INSERT INTO rate_buckets (name, level, at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET level = excluded.level, at = excluded.at",
        )?
        .execute(rusqlite::params![bucket.name, level - cost, now])?;
    Ok(None)
}

/// See [`crate::Store::answer_get`]. (On the writer: answers are rare, and it keeps the
/// reader pool's statements to the hot reads.)
pub(super) fn answer_get(
    tx: &mut Tx<'_>,
    key: &str,
    now: Timestamp,
) -> Result<Option<serde_json::Value>> {
    let oldest = ms(now).saturating_sub(millis(crate::ANSWERS_KEPT));
    let text: Option<String> = tx
        .db
        .prepare_cached("SELECT answer FROM model_answers WHERE key = ?1 AND created_at > ?2")?
        .query_row(rusqlite::params![key, oldest], |r| r.get(0))
        .optional()?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// See [`crate::Store::answer_put`].
pub(super) fn answer_put(tx: &mut Tx<'_>, key: &str, answer: &str, now: Timestamp) -> Result<()> {
    let now = ms(now);
    tx.db
        .prepare_cached("DELETE FROM model_answers WHERE created_at < ?1")?
        .execute([now.saturating_sub(millis(crate::ANSWERS_KEPT))])?;
    tx.db
        .prepare_cached(
            "INSERT INTO model_answers (key, answer, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET answer = excluded.answer,
                                             created_at = excluded.created_at",
        )?
        .execute(rusqlite::params![key, answer, now])?;
    Ok(())
}
