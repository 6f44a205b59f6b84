//! `primes`: the first `n` primes by a segmented sieve of Eratosthenes over odd numbers.
//!
//! The sieve runs on the CPU pool, one cache-sized segment at a time: memory stays bounded
//! whatever `n` is (the primes go to a sink segment by segment, never into one big vector),
//! and between segments it checks its cancel token and reports progress.
//!
//! Written here rather than taken from a crate because it must stream primes in order into
//! a sink and stop mid-way on cancel, which the sieve crates' APIs do not offer.

use std::io::{BufWriter, Write};
use std::time::Instant;

use async_trait::async_trait;
use kiln_domain::JobType;
use kiln_domain::job_type::{PrimesPayload, payload};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::cpu::{self, Check};
use crate::{Classify, JobContext, Kernel, KernelError, npy};

/// Odd numbers per segment: 128 KiB of flags, well inside one core's L2 cache.
const SEGMENT: usize = 128 * 1024;

/// How many primes the result lists at each end.
const SHOWN: usize = 10;

/// The `primes` kernel.
#[derive(Debug, Clone, Copy)]
pub struct Primes;

/// What a `primes` job returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// How many primes were found (= n).
    pub count: u64,
    /// The n-th prime.
    pub nth: u32,
    /// Their sum.
    pub sum: u64,
    /// The first ten (fewer if n < 10).
    pub first: Vec<u32>,
    /// The last ten, in order.
    pub last: Vec<u32>,
    /// The sieve's upper bound for the n-th prime.
    pub bound: u64,
}

#[async_trait]
impl Kernel for Primes {
    fn job_type(&self) -> JobType {
        JobType::Primes
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        let PrimesPayload { n } = payload(&ctx.payload).permanent("invalid_input")?;
        let check = Check::new(&ctx);
        let (_, file) = ctx
            .artifacts
            .create("primes.npy")
            .retryable("artifact_write")?;
        let started = Instant::now();
        let summary = cpu::run(move || {
            // The list goes to disk segment by segment, never into one big vector.
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let len = usize::try_from(n).unwrap_or(usize::MAX);
            out.write_all(&npy::header("<u4", false, &[len]))
                .retryable("artifact_write")?;
            let summary = first_primes(n, &check, |chunk| npy::write_u32(&mut out, chunk))?;
            out.flush().retryable("artifact_write")?;
            Ok::<_, KernelError>(summary)
        })
        .await??;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        ctx.log.line(format!(
            "sieved {} primes up to {} in {elapsed_ms:.1} ms",
            summary.count, summary.nth
        ));
        let mut value = serde_json::to_value(&summary).permanent("internal")?;
        value["elapsed_ms"] = Value::from(elapsed_ms);
        value["artifact"] = Value::from("primes.npy");
        Ok(value)
    }
}

/// An upper bound for the n-th prime: Rosser's `n (ln n + ln ln n)` for n ≥ 6.
pub fn nth_prime_bound(n: u64) -> u64 {
    if n < 6 {
        return 13;
    }
    let n = n as f64;
    (n * (n.ln() + n.ln().ln())).ceil() as u64 + 1
}

/// The first `n` primes in order, handed to `sink` a segment at a time.
///
/// Segments are sieved in parallel batches (one segment per pool thread), then emitted in
/// order, so memory stays at a few segments whatever `n` is.
pub fn first_primes(
    n: u64,
    check: &Check,
    mut sink: impl FnMut(&[u32]) -> std::io::Result<()>,
) -> Result<Summary, KernelError> {
    let bound = nth_prime_bound(n);
    let mut acc = Accumulator::new(n);
    if n == 0 {
        return Ok(acc.finish(bound));
    }
    acc.push(&[2], &mut sink)?;
    let sieve = Sieve::new(bound);
    let batch = rayon::current_num_threads().max(1) as u64;
    let mut lo = 3u64; // always odd
    while !acc.done() && lo <= bound {
        check.stopped()?;
        let starts: Vec<u64> = (0..batch)
            .map(|k| lo + k * 2 * SEGMENT as u64)
            .filter(|&start| start <= bound)
            .collect();
        let found: Vec<Vec<u32>> = starts
            .par_iter()
            .map(|&start| sieve.segment(start))
            .collect();
        for primes in &found {
            acc.push(primes, &mut sink)?;
            if acc.done() {
                break;
            }
        }
        check.progress(acc.count as f32 / n as f32);
        lo += batch * 2 * SEGMENT as u64;
    }
    Ok(acc.finish(bound))
}

/// The odd primes that the presieve pattern already crosses off.
const PRESIEVED: [u64; 5] = [3, 5, 7, 11, 13];
/// 3·5·7·11·13: the pattern repeats every this many odd numbers.
const PATTERN_LEN: usize = 15_015;

/// What every segment shares: the base primes and the presieve pattern.
struct Sieve {
    bound: u64,
    /// Odd primes from 17 up to √bound.
    base: Vec<u64>,
    /// `pattern[k]` is 1 iff `2k + 1` has no factor among [`PRESIEVED`]; a segment starts
    /// as a copy of it, which saves the densest crossing-off passes (about a third of them).
    pattern: Vec<u8>,
}

impl Sieve {
    fn new(bound: u64) -> Self {
        let base = small_odd_primes(isqrt(bound) + 1)
            .into_iter()
            .filter(|p| !PRESIEVED.contains(p))
            .collect();
        let pattern = (0..PATTERN_LEN as u64)
            .map(|k| u8::from(PRESIEVED.iter().all(|p| !(2 * k + 1).is_multiple_of(*p))))
            .collect();
        Self {
            bound,
            base,
            pattern,
        }
    }

    /// The primes in `[lo, lo + 2·SEGMENT)` (and ≤ bound); `lo` is odd.
    fn segment(&self, lo: u64) -> Vec<u32> {
        let len = (((self.bound - lo) / 2) as usize + 1).min(SEGMENT);
        let hi = lo + 2 * len as u64;
        let mut flags = vec![0u8; len];
        // flags[i] stands for lo + 2i, whose pattern index is ((lo - 1) / 2 + i) mod 15015.
        let mut offset = ((lo - 1) / 2) as usize % PATTERN_LEN;
        let mut filled = 0;
        while filled < len {
            let take = (PATTERN_LEN - offset).min(len - filled);
            flags[filled..filled + take].copy_from_slice(&self.pattern[offset..offset + take]);
            filled += take;
            offset = 0;
        }
        if lo <= 13 {
            // The presieved primes crossed themselves off.
            for p in PRESIEVED.into_iter().filter(|&p| p >= lo && p < hi) {
                flags[((p - lo) / 2) as usize] = 1;
            }
        }
        for &p in &self.base {
            if p * p >= hi {
                break;
            }
            // The first odd multiple of p in the segment, but never below p².
            let mut m = (lo.div_ceil(p) * p).max(p * p);
            if m.is_multiple_of(2) {
                m += p;
            }
            let stride = p as usize;
            let mut i = ((m - lo) / 2) as usize;
            while i < len {
                flags[i] = 0;
                i += stride;
            }
        }
        collect(&flags, lo)
    }
}

/// The numbers whose flag is set. Most flags are 0, so whole 8-byte words are skipped.
fn collect(flags: &[u8], lo: u64) -> Vec<u32> {
    let mut out = Vec::with_capacity(flags.len() / 8);
    let mut chunks = flags.chunks_exact(8);
    let mut base = 0usize;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if word != 0 {
            for (j, &f) in chunk.iter().enumerate() {
                if f != 0 {
                    out.push((lo + 2 * (base + j) as u64) as u32);
                }
            }
        }
        base += 8;
    }
    for (j, &f) in chunks.remainder().iter().enumerate() {
        if f != 0 {
            out.push((lo + 2 * (base + j) as u64) as u32);
        }
    }
    out
}

/// Running totals over the primes emitted so far.
struct Accumulator {
    n: u64,
    count: u64,
    sum: u64,
    first: Vec<u32>,
    last: std::collections::VecDeque<u32>,
}

impl Accumulator {
    fn new(n: u64) -> Self {
        Self {
            n,
            count: 0,
            sum: 0,
            first: Vec::with_capacity(SHOWN),
            last: std::collections::VecDeque::with_capacity(SHOWN + 1),
        }
    }

    fn done(&self) -> bool {
        self.count >= self.n
    }

    /// Takes as many of `primes` as are still wanted and passes them to the sink.
    fn push(
        &mut self,
        primes: &[u32],
        sink: &mut impl FnMut(&[u32]) -> std::io::Result<()>,
    ) -> Result<(), KernelError> {
        let want = usize::try_from(self.n - self.count).unwrap_or(usize::MAX);
        let take = &primes[..primes.len().min(want)];
        for &p in take.iter().take(SHOWN.saturating_sub(self.first.len())) {
            self.first.push(p);
        }
        for &p in &take[take.len().saturating_sub(SHOWN)..] {
            if self.last.len() == SHOWN {
                self.last.pop_front();
            }
            self.last.push_back(p);
        }
        self.sum += take.iter().map(|&p| u64::from(p)).sum::<u64>();
        self.count += take.len() as u64;
        sink(take).retryable("artifact_write")
    }

    fn finish(self, bound: u64) -> Summary {
        Summary {
            count: self.count,
            nth: self.last.back().copied().unwrap_or(0),
            sum: self.sum,
            first: self.first,
            last: self.last.into_iter().collect(),
            bound,
        }
    }
}

fn isqrt(x: u64) -> u64 {
    let mut r = (x as f64).sqrt() as u64;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

/// Odd primes up to `limit` (inclusive), by a plain sieve: the base primes of the segments.
fn small_odd_primes(limit: u64) -> Vec<u64> {
    let limit = limit as usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    let mut i = 3;
    while i <= limit {
        if !composite[i] {
            primes.push(i as u64);
            let mut j = i * i;
            while j <= limit {
                composite[j] = true;
                j += 2 * i;
            }
        }
        i += 2;
    }
    primes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primes(n: u64) -> (Summary, Vec<u32>) {
        let mut all = Vec::new();
        let summary = first_primes(n, &Check::detached(), |chunk| {
            all.extend_from_slice(chunk);
            Ok(())
        })
        .unwrap();
        (summary, all)
    }

    fn naive(n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut k = 2u32;
        while out.len() < n {
            if (2..k)
                .take_while(|d| d * d <= k)
                .all(|d| !k.is_multiple_of(d))
            {
                out.push(k);
            }
            k += 1;
        }
        out
    }

    #[test]
    fn the_tenth_prime_is_29() {
        let (s, all) = primes(10);
        assert_eq!(s.nth, 29);
        assert_eq!(all, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert_eq!(s.first, all);
        assert_eq!(s.last, all);
        assert_eq!(s.sum, 129);
    }

    #[test]
    fn small_n_match_trial_division() {
        for n in 1..=40 {
            let (s, all) = primes(n);
            assert_eq!(all, naive(n as usize), "n = {n}");
            assert_eq!(s.count, n);
        }
        let (_, all) = primes(20_000);
        assert_eq!(all, naive(20_000));
    }

    #[test]
    fn the_millionth_prime_is_15_485_863() {
        let (s, all) = primes(1_000_000);
        assert_eq!(s.nth, 15_485_863);
        assert_eq!(all.len(), 1_000_000);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s.last.len(), 10);
        assert_eq!(s.last[9], 15_485_863);
        assert_eq!(s.last[8], 15_485_857);
    }

    #[test]
    fn the_bound_holds_around_the_crossover() {
        for n in [1, 5, 6, 7, 100, 1000] {
            let (s, _) = primes(n);
            assert!(u64::from(s.nth) <= s.bound, "n = {n}");
        }
    }

    #[test]
    fn a_cancelled_sieve_stops() {
        let check = Check::detached();
        check.cancel_token().cancel();
        let err = first_primes(10_000_000, &check, |_| Ok(())).unwrap_err();
        assert!(matches!(err, KernelError::Cancelled));
    }

    #[tokio::test]
    async fn the_kernel_reports_rising_progress_and_stops_on_cancel() {
        let (ctx, _log) = crate::test_context(serde_json::json!({"n": 50_000_000}));
        let (cancel, progress) = (ctx.cancel.clone(), ctx.progress.clone());
        let artifacts = ctx.artifacts.clone();
        let run = tokio::spawn(async move { Primes.run(ctx).await });
        let mut seen = Vec::new();
        while seen.len() < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let p = progress.get();
            if p > 0.0 {
                seen.push(p);
            }
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(seen[4] < 1.0, "still running: {seen:?}");
        let asked = std::time::Instant::now();
        cancel.cancel();
        let result = run.await.unwrap();
        assert!(matches!(result, Err(KernelError::Cancelled)), "{result:?}");
        // Generous bound for a loaded test machine; the benchmark records the real figure.
        assert!(asked.elapsed() < std::time::Duration::from_secs(1));
        artifacts.reset().unwrap();
    }

    #[tokio::test]
    async fn the_kernel_returns_the_summary_with_full_progress() {
        let (ctx, _log) = crate::test_context(serde_json::json!({"n": 100_000}));
        let progress = ctx.progress.clone();
        let artifacts = ctx.artifacts.clone();
        let value = Primes.run(ctx).await.unwrap();
        assert_eq!(value["count"], 100_000);
        assert_eq!(value["nth"], 1_299_709);
        assert_eq!(progress.get(), 1.0);
        let bytes = std::fs::read(artifacts.dir().join("primes.npy")).unwrap();
        let header = crate::npy::header("<u4", false, &[100_000]);
        assert_eq!(&bytes[..header.len()], &header[..]);
        let (_, expected) = primes(100_000);
        let mut data = Vec::new();
        crate::npy::write_u32(&mut data, &expected).unwrap();
        assert_eq!(&bytes[header.len()..], &data[..]);
        artifacts.reset().unwrap();
    }
}
