//! The writer: group commit, rollback of a failing command alone, signals after commit.

use super::*;

fn writer() -> (Writer, broadcast::Receiver<Signal>) {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .unwrap();
    let (signals, rx) = broadcast::channel(16);
    let outlet = Outlet {
        signals,
        cache: Arc::default(),
        metrics: None,
    };
    (Writer::spawn(conn, outlet, 1024, None).unwrap(), rx)
}

fn count(tx: &Tx<'_>) -> i64 {
    tx.db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_failing_command_rolls_back_alone_and_drops_its_signals() {
    let (writer, mut rx) = writer();
    let ok = writer.call(|tx| {
        tx.db.execute("INSERT INTO t VALUES (1)", [])?;
        tx.signal(Signal::JobAvailable);
        Ok(())
    });
    let failing = writer.call(|tx| {
        tx.db.execute("INSERT INTO t VALUES (2)", [])?;
        tx.signal(Signal::CancelRequested(kiln_domain::JobId::new()));
        Err::<(), _>(StoreError::LeaseLost)
    });
    let (ok, failing) = tokio::join!(ok, failing);
    ok.unwrap();
    assert!(matches!(failing, Err(StoreError::LeaseLost)));
    assert_eq!(writer.call(|tx| Ok(count(tx))).await.unwrap(), 1);
    assert_eq!(rx.try_recv().unwrap(), Signal::JobAvailable);
    assert!(rx.try_recv().is_err());
}

/// Sends one command to the writer, as a task.
type Sender<R> = Box<dyn FnOnce(std::sync::Arc<Writer>) -> tokio::task::JoinHandle<R>>;

/// Sends the commands `batch` makes while the writer is held busy, so they all land in
/// its next batch; returns their results.
async fn in_one_batch<R: Send + 'static>(
    writer: &std::sync::Arc<Writer>,
    batch: Vec<Sender<R>>,
) -> Vec<R> {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = writer.clone();
    let hold = tokio::spawn(async move {
        holder
            .call(move |_| {
                let _ = held.recv();
                Ok(())
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let tasks: Vec<_> = batch.into_iter().map(|f| f(writer.clone())).collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    release.send(()).unwrap();
    hold.await.unwrap().unwrap();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

fn insert(k: i64, fail: bool) -> impl FnOnce(&mut Tx<'_>) -> Result<()> + Send + 'static {
    move |tx| {
        tx.db.execute("INSERT INTO t VALUES (?1)", [k])?;
        if fail {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_unguarded_command_failing_before_writing_fails_alone() {
    let (writer, _rx) = writer();
    let writer = std::sync::Arc::new(writer);
    let results = in_one_batch(
        &writer,
        vec![
            Box::new(|w| tokio::spawn(async move { w.call_unguarded(insert(1, false)).await })),
            Box::new(|w| {
                tokio::spawn(async move {
                    w.call_unguarded(|_| Err::<(), _>(StoreError::LeaseLost))
                        .await
                })
            }),
            Box::new(|w| tokio::spawn(async move { w.call(insert(2, true)).await })),
        ],
    )
    .await;
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::LeaseLost)));
    assert!(matches!(results[2], Err(StoreError::LeaseLost)));
    assert_eq!(writer.call(|tx| Ok(count(tx))).await.unwrap(), 1);
}

#[tokio::test]
async fn an_unguarded_command_failing_after_a_write_fails_its_whole_batch() {
    let (writer, _rx) = writer();
    let writer = std::sync::Arc::new(writer);
    let results = in_one_batch(
        &writer,
        vec![
            Box::new(|w| tokio::spawn(async move { w.call(insert(1, false)).await })),
            Box::new(|w| tokio::spawn(async move { w.call_unguarded(insert(2, true)).await })),
            Box::new(|w| tokio::spawn(async move { w.call_unguarded(insert(3, false)).await })),
        ],
    )
    .await;
    for result in &results {
        assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    }
    assert_eq!(writer.call(|tx| Ok(count(tx))).await.unwrap(), 0);
    // The writer goes on with the next batch.
    writer.call_unguarded(insert(4, false)).await.unwrap();
    assert_eq!(writer.call(|tx| Ok(count(tx))).await.unwrap(), 1);
}

#[tokio::test]
async fn a_panicking_command_leaves_the_writer_running() {
    let (writer, _rx) = writer();
    let panicked = writer
        .call(|_| -> Result<()> { panic!("boom") })
        .await
        .unwrap_err();
    assert!(matches!(panicked, StoreError::Backend(_)));
    assert_eq!(writer.call(|tx| Ok(count(tx))).await.unwrap(), 0);
}

#[tokio::test]
async fn concurrent_commands_all_commit() {
    let (writer, _rx) = writer();
    let writer = std::sync::Arc::new(writer);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..200 {
        let writer = writer.clone();
        tasks.spawn(async move {
            writer
                .call(move |tx| Ok(tx.db.execute("INSERT INTO t VALUES (?1)", [k])?))
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), 1);
    }
    assert_eq!(writer.call(|tx| Ok(count(tx))).await.unwrap(), 200);
}
