//! [`wait_until`]: poll a probe until it is satisfied or a deadline passes.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `probe` every 5 ms until it returns `Some`, and returns that value.
///
/// Panics after `deadline`, naming `what` and the last value the probe saw (so a failing
/// test says where it was stuck). `probe` returns `Err(last_seen)` while not satisfied.
pub async fn wait_until<T, L, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    L: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, L>>,
{
    let end = Instant::now() + deadline;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= end => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_the_probe_is_satisfied() {
        let mut n = 0;
        let got = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { if n >= 3 { Ok(n) } else { Err(n) } }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "last seen: 7")]
    async fn reports_the_last_value_on_timeout() {
        wait_until::<(), _, _, _>("never", Duration::from_millis(20), || async { Err(7) }).await;
    }
}
