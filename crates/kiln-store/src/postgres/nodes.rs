//! The node registry on PostgreSQL. Every liveness judgement uses the database server's
//! clock (`now()`), as leases do: nodes whose clocks disagree still agree on who is alive.

use deadpool_postgres::GenericClient;

use super::row::{self, big, int, query, query_one, query_opt};
use crate::error::Result;
use crate::model::nodes::{holder, other_store};
use crate::model::{NODE_KEPT, NodeInfo, NodeStart, RateBucket};

/// `true` where a row's last heartbeat is within its ttl.
const LIVE: &str = "heartbeat_at + ttl_ms::float8 * interval '1 millisecond' > now()";

/// See [`crate::Store::node_register`]; one transaction, the row lock serialising two
/// nodes that start with one id at once.
pub(super) async fn register(
    db: &mut deadpool_postgres::Object,
    node: &NodeStart,
) -> Result<Option<String>> {
    let tx = db.transaction().await?;
    tx.execute(
        "DELETE FROM nodes WHERE heartbeat_at < now() - $1::float8 * interval '1 millisecond'",
        &[&super::lease::millis(NODE_KEPT)],
    )
    .await?;
    let elsewhere = query_opt(
        &tx,
        &format!(
            "SELECT id, objects FROM nodes WHERE id <> $1 AND objects <> $2 AND {LIVE}
             ORDER BY id LIMIT 1"
        ),
        &[&node.id, &node.objects],
    )
    .await?;
    if let Some(r) = elsewhere {
        let (other, objects): (String, String) = (row::get(&r, 0)?, row::get(&r, 1)?);
        return Err(other_store(&other, &objects, node));
    }
    let taken = query_opt(
        &tx,
        "INSERT INTO nodes (id, instance, host, pid, version, role, slots, objects, ttl_ms,
                                started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now())
             ON CONFLICT (id) DO UPDATE SET
                 instance = excluded.instance, host = excluded.host, pid = excluded.pid,
                 version = excluded.version, role = excluded.role, slots = excluded.slots,
                 objects = excluded.objects, ttl_ms = excluded.ttl_ms,
                 started_at = now(), heartbeat_at = now()
             WHERE nodes.heartbeat_at + nodes.ttl_ms::float8 * interval '1 millisecond' <= now()
                OR nodes.instance = excluded.instance OR $10
             RETURNING id",
        &[
            &node.id,
            &node.instance,
            &node.host,
            &i64::from(node.pid),
            &node.version,
            &node.role,
            &int(node.slots),
            &node.objects,
            &big(u64::try_from(node.ttl.as_millis()).unwrap_or(u64::MAX)),
            &node.take_over,
        ],
    )
    .await?;
    if taken.is_none() {
        let r = query_one(
            &tx,
            "SELECT host, pid, extract(epoch FROM now() - heartbeat_at)::float8 FROM nodes
             WHERE id = $1",
            &[&node.id],
        )
        .await?;
        let (host, pid, ago): (String, i64, f64) =
            (row::get(&r, 0)?, row::get(&r, 1)?, row::get(&r, 2)?);
        return Ok(Some(holder(pid, &host, ago)));
    }
    tx.commit().await?;
    Ok(None)
}

/// See [`crate::Store::node_heartbeat`].
pub(super) async fn heartbeat(
    db: &impl GenericClient,
    id: &str,
    instance: uuid::Uuid,
) -> Result<bool> {
    let changed = row::execute(
        db,
        "UPDATE nodes SET heartbeat_at = now() WHERE id = $1 AND instance = $2",
        &[&id, &instance],
    )
    .await?;
    Ok(changed == 1)
}

/// See [`crate::Store::node_deregister`].
pub(super) async fn deregister(
    db: &impl GenericClient,
    id: &str,
    instance: uuid::Uuid,
) -> Result<()> {
    row::execute(
        db,
        "DELETE FROM nodes WHERE id = $1 AND instance = $2",
        &[&id, &instance],
    )
    .await?;
    Ok(())
}

/// See [`crate::Store::node_list`]: the running counts read the running jobs through the
/// `jobs_lease` partial index, never the whole table.
pub(super) async fn list(db: &impl GenericClient) -> Result<Vec<NodeInfo>> {
    let rows = query(
        db,
        &format!(
            "WITH running AS (
                 SELECT node, count(*) AS n FROM jobs
                 WHERE state = 'running' AND node IS NOT NULL GROUP BY node
             )
             SELECT id, host, pid, version, role, slots, coalesce(running.n, 0), objects,
                    started_at, heartbeat_at, {LIVE}
             FROM nodes LEFT JOIN running ON running.node = nodes.id
             ORDER BY id"
        ),
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NodeInfo {
                id: row::get(r, 0)?,
                host: row::get(r, 1)?,
                pid: u32::try_from(row::get::<i64>(r, 2)?).unwrap_or(0),
                version: row::get(r, 3)?,
                role: row::get(r, 4)?,
                slots: row::count(r, 5)?,
                running: u32::try_from(row::get::<i64>(r, 6)?).unwrap_or(u32::MAX),
                objects: row::get(r, 7)?,
                started_at: row::get(r, 8)?,
                heartbeat_at: row::get(r, 9)?,
                live: row::get(r, 10)?,
            })
        })
        .collect()
}

/// See [`crate::Store::rate_take`]: one upsert refills the bucket by the server's clock and
/// takes the cost when the level allows; only a refused take reads the level again to say
/// how long to wait.
pub(super) async fn rate_take(
    db: &impl GenericClient,
    bucket: &RateBucket,
    cost: f64,
) -> Result<Option<std::time::Duration>> {
    let cost = cost.clamp(0.0, bucket.capacity);
    const REFILLED: &str =
        "least($2::float8, b.level + extract(epoch FROM now() - b.at)::float8 * $3::float8)";
    let taken = query_opt(
        db,
        &format!(
            "INSERT INTO rate_buckets AS b (name, level, at) VALUES ($1, $2::float8 - $4::float8, now())
             ON CONFLICT (name) DO UPDATE SET level = {REFILLED} - $4::float8, at = now()
             WHERE {REFILLED} >= $4::float8
             RETURNING level"
        ),
        &[&bucket.name, &bucket.capacity, &bucket.per_second, &cost],
    )
    .await?;
    if taken.is_some() {
        return Ok(None);
    }
    let level = query_opt(
        db,
        &format!("SELECT {REFILLED} FROM rate_buckets b WHERE name = $1"),
        &[&bucket.name, &bucket.capacity, &bucket.per_second],
    )
    .await?
    .map(|r| row::get::<f64>(&r, 0))
    .transpose()?
    .unwrap_or(bucket.capacity);
    Ok(Some(bucket.wait(level, cost)))
}

/// See [`crate::Store::answer_get`].
pub(super) async fn answer_get(
    db: &impl GenericClient,
    key: &str,
) -> Result<Option<serde_json::Value>> {
    query_opt(
        db,
        "SELECT answer FROM model_answers
         WHERE key = $1 AND created_at > now() - $2::float8 * interval '1 millisecond'",
        &[&key, &super::lease::millis(crate::ANSWERS_KEPT)],
    )
    .await?
    .map(|r| row::get(&r, 0))
    .transpose()
}

/// See [`crate::Store::answer_put`].
pub(super) async fn answer_put(
    db: &impl GenericClient,
    key: &str,
    answer: &serde_json::Value,
) -> Result<()> {
    db.execute(
        "DELETE FROM model_answers
         WHERE created_at < now() - $1::float8 * interval '1 millisecond'",
        &[&super::lease::millis(crate::ANSWERS_KEPT)],
    )
    .await?;
    db.execute(
        "INSERT INTO model_answers (key, answer, created_at) VALUES ($1, $2, now())
         ON CONFLICT (key) DO UPDATE SET answer = excluded.answer, created_at = now()",
        &[&key, answer],
    )
    .await?;
    Ok(())
}
