//! The limiter and the breaker on Tokio's paused clock.

use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        failures: 3,
        window: Duration::from_secs(60),
        failure_rate: 0.5,
        min_calls: 6,
        cool_down: Duration::from_secs(30),
    }
}

fn call(breaker: &Arc<Breaker>, failed: bool) {
    breaker.admit().expect("admitted").record(failed);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_the_circuit_and_a_probe_closes_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook: OnChange = {
        let seen = Arc::clone(&seen);
        Arc::new(move |_: &str, s| seen.lock().expect("lock").push(s))
    };
    let breaker = Breaker::new("m", config(), Some(hook));
    call(&breaker, true);
    call(&breaker, false);
    call(&breaker, true);
    call(&breaker, true);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "a success reset the count"
    );
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Open);
    let wait = breaker.admit().expect_err("open refuses");
    assert_eq!(wait, Duration::from_secs(30));

    tokio::time::advance(Duration::from_secs(31)).await;
    let probe = breaker.admit().expect("the probe goes");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert!(breaker.admit().is_err(), "one probe at a time");
    probe.record(false);
    assert_eq!(breaker.state(), BreakerState::Closed);
    call(&breaker, false);
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Closed
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_a_whole_cool_down() {
    let breaker = Breaker::new("m", config(), None);
    for _ in 0..3 {
        call(&breaker, true);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    breaker.admit().expect("probe").record(true);
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.admit().expect_err("open"), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_lets_the_next_caller_probe() {
    let breaker = Breaker::new("m", config(), None);
    for _ in 0..3 {
        call(&breaker, true);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    drop(breaker.admit().expect("probe"));
    breaker.admit().expect("another probe").record(false);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_over_the_window_opens_it() {
    let breaker = Breaker::new("m", config(), None);
    // Alternating: never three in a row, but half of six calls failed.
    for n in 0..5 {
        call(&breaker, n % 2 == 0);
        assert_eq!(breaker.state(), BreakerState::Closed, "call {n}");
    }
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Open);

    // Calls older than the window no longer count.
    let breaker = Breaker::new("m", config(), None);
    for n in 0..5 {
        call(&breaker, n % 2 == 0);
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    call(&breaker, true);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_limiter_paces_requests_to_the_rate() {
    let buckets: Arc<dyn Buckets> = Arc::new(LocalBuckets::default());
    let limiter = Limiter::new("m", 60, 1_000_000, buckets, Duration::from_secs(600));
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut times = Vec::new();
    for _ in 0..70 {
        limiter
            .acquire(1.0, &cancel)
            .await
            .expect("store")
            .expect("within the wait");
        times.push(started.elapsed());
    }
    // A full bucket of 60 at once, then one a second.
    assert!(times[59] < Duration::from_millis(10), "{:?}", times[59]);
    assert!(times[60] >= Duration::from_millis(990), "{:?}", times[60]);
    assert!(times[69] >= Duration::from_secs(10), "{:?}", times[69]);
    assert!(times[69] < Duration::from_secs(11), "{:?}", times[69]);
}

#[tokio::test(start_paused = true)]
async fn tokens_are_budgeted_and_a_long_wait_is_refused() {
    let buckets: Arc<dyn Buckets> = Arc::new(LocalBuckets::default());
    let limiter = Limiter::new("m", 1_000, 6_000, buckets, Duration::from_secs(5));
    let cancel = CancellationToken::new();
    limiter
        .acquire(6_000.0, &cancel)
        .await
        .expect("store")
        .expect("a full bucket");
    // 100 tokens a second: 200 more take two seconds, 1,000 more would take ten.
    let started = Instant::now();
    limiter
        .acquire(200.0, &cancel)
        .await
        .expect("store")
        .expect("two seconds");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let over = limiter.acquire(1_000.0, &cancel).await.expect("store");
    let OverBudget(wait) = over.expect_err("longer than the five seconds it may wait");
    assert!(wait > Duration::from_secs(5), "{wait:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_jobs_share_one_budget() {
    let buckets: Arc<dyn Buckets> = Arc::new(LocalBuckets::default());
    let limiter = Limiter::new("m", 60, 1_000_000, buckets, Duration::from_secs(600));
    let started = Instant::now();
    // Eight "slots" take 80 requests between them: 60 at once, then one a second in all,
    // not one a second each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let cancel = CancellationToken::new();
                let mut times = Vec::new();
                for _ in 0..10 {
                    limiter
                        .acquire(1.0, &cancel)
                        .await
                        .expect("store")
                        .expect("within the wait");
                    times.push(started.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.expect("task"));
    }
    times.sort();
    assert_eq!(times.len(), 80);
    assert!(times[59] < Duration::from_millis(10), "{:?}", times[59]);
    assert!(times[79] >= Duration::from_secs(20), "{:?}", times[79]);
    assert!(times[79] < Duration::from_secs(22), "{:?}", times[79]);
    for pair in times[60..].windows(2) {
        // Never two takes within much less than a second once the burst is spent (the
        // waiters wake ~5 ms past each refill, in any order).
        assert!(pair[1] - pair[0] >= Duration::from_millis(900), "{pair:?}");
    }
}
