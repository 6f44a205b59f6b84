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
    let mut segment = 0u64;
    while !acc.done() && segment < sieve.segments {
        check.stopped()?;
        let found: Vec<Vec<u32>> = (segment..(segment + batch).min(sieve.segments))
            .into_par_iter()
            .map(|k| sieve.segment(k))
            .collect();
        for primes in &found {
            acc.push(primes, &mut sink)?;
            if acc.done() {
                break;
            }
        }
        check.progress(acc.count as f32 / n as f32);
        segment += batch;
    }
    Ok(acc.finish(bound))
}

/// Odd numbers per segment, one bit each: 128 KiB, well inside one core's L2 cache. A
/// multiple of 64, so every segment starts on a word of the presieve pattern.
const SEGMENT_BITS: u64 = 1 << 20;
/// The odd primes the presieve pattern crosses off.
const PRESIEVED: [u64; 5] = [3, 5, 7, 11, 13];
/// 3·5·7·11·13: the bit pattern over odd numbers repeats every this many bits, so as 64-bit
/// words it repeats every this many words.
const PATTERN_PERIOD: usize = 15_015;

/// What every segment shares. Bit `i` (globally) stands for the odd number `2i + 1`;
/// segment `k` holds bits `[k·SEGMENT_BITS, (k+1)·SEGMENT_BITS)`.
struct Sieve {
    /// The largest number sieved.
    bound: u64,
    /// How many segments cover `[1, bound]`.
    segments: u64,
    /// Odd primes from 17 up to √bound.
    base: Vec<u64>,
    /// One period of the presieve pattern as words: a segment starts as a copy of it,
    /// which saves the densest crossing-off passes.
    pattern: Vec<u64>,
}

impl Sieve {
    fn new(bound: u64) -> Self {
        let base = small_odd_primes(isqrt(bound) + 1)
            .into_iter()
            .filter(|p| !PRESIEVED.contains(p))
            .collect();
        let pattern = (0..PATTERN_PERIOD as u64)
            .map(|w| {
                (0..64).fold(0u64, |word, b| {
                    let number = 2 * (64 * w + b) + 1;
                    let coprime = PRESIEVED.iter().all(|p| !number.is_multiple_of(*p));
                    word | (u64::from(coprime) << b)
                })
            })
            .collect();
        let bits = bound.div_ceil(2); // odd numbers in [1, bound]
        Self {
            bound,
            segments: bits.div_ceil(SEGMENT_BITS),
            base,
            pattern,
        }
    }

    /// The primes (other than 2) in segment `k`, in order.
    fn segment(&self, k: u64) -> Vec<u32> {
        let first_bit = k * SEGMENT_BITS;
        let lo = 2 * first_bit + 1; // the segment's first number
        let last = self.bound.min(lo + 2 * (SEGMENT_BITS - 1)); // its last number
        let len_bits = (last - lo) / 2 + 1;
        let words = len_bits.div_ceil(64) as usize;
        let mut bits = Vec::with_capacity(words);
        let mut w = (first_bit / 64) as usize % PATTERN_PERIOD;
        while bits.len() < words {
            let take = (PATTERN_PERIOD - w).min(words - bits.len());
            bits.extend_from_slice(&self.pattern[w..w + take]);
            w = 0;
        }
        if lo == 1 {
            // 1 is not prime; the presieved primes crossed themselves off.
            bits[0] &= !1;
            for p in PRESIEVED {
                bits[0] |= 1 << (p / 2);
            }
        }
        let hi = last + 1;
        for &p in &self.base {
            if p * p >= hi {
                break;
            }
            // The first odd multiple of p in the segment, but never below p².
            let mut m = (lo.div_ceil(p) * p).max(p * p);
            if m.is_multiple_of(2) {
                m += p;
            }
            let mut i = (m - lo) / 2;
            while i < len_bits {
                bits[(i / 64) as usize] &= !(1u64 << (i % 64));
                i += p;
            }
        }
        // Bits past `bound` in the last word.
        let tail = len_bits % 64;
        if tail != 0
            && let Some(word) = bits.last_mut()
        {
            *word &= (1u64 << tail) - 1;
        }
        let mut out = Vec::with_capacity(words * 4);
        for (wi, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = u64::from(word.trailing_zeros());
                out.push((lo + 2 * (wi as u64 * 64 + b)) as u32);
                word &= word - 1;
            }
        }
        out
    }
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

    #[test]
    fn a_cancel_between_segments_stops_the_sieve_and_progress_rises_until_then() {
        // The cancel is fired from the sink, after the fifth batch of segments: the sieve
        // must stop at its next check, however fast the machine.
        let (ctx, _log) = crate::test_context(serde_json::json!(null));
        let check = Check::new(&ctx);
        let (mut emitted, mut batches, mut seen) = (0usize, 0, Vec::new());
        let err = first_primes(50_000_000, &check, |chunk| {
            emitted += chunk.len();
            seen.push(ctx.progress.get());
            batches += 1;
            if batches == 5 {
                ctx.cancel.cancel();
            }
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, KernelError::Cancelled), "{err:?}");
        assert!(emitted < 50_000_000 / 10, "stopped early: {emitted} primes");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(ctx.progress.get() > 0.0 && ctx.progress.get() < 0.1);
    }

    #[tokio::test]
    async fn the_kernel_stops_on_cancel() {
        let (ctx, _log) = crate::test_context(serde_json::json!({"n": 50_000_000}));
        let (cancel, progress) = (ctx.cancel.clone(), ctx.progress.clone());
        let artifacts = ctx.artifacts.clone();
        let run = tokio::spawn(async move { Primes.run(ctx).await });
        // Cancelled at its first progress report (under 1% of the work).
        while progress.get() == 0.0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        cancel.cancel();
        // Cancelled, not finished: the sieve honoured the token between segments. How fast
        // is a benchmark's question (BENCHMARKS.md), not a wall-clock limit here.
        let result = run.await.unwrap();
        assert!(matches!(result, Err(KernelError::Cancelled)), "{result:?}");
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
