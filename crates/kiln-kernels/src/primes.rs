//! `primes`: the first `n` primes by a segmented sieve of Eratosthenes on the wheel of 30
//! (one bit for each number coprime to 2, 3 and 5: eight bits per thirty numbers).
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
    acc.push(&[2, 3, 5], &mut sink)?;
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

/// Numbers per byte of the sieve: the wheel of 2·3·5.
const WHEEL: u64 = 30;
/// Bit `i` of byte `b` stands for the number `30·b + RESIDUES[i]`: the residues modulo 30
/// coprime to 30. Multiples of 2, 3 and 5 have no bit at all, so a segment holds 3.75 times
/// the numbers an odd-only sieve of the same size does, and each prime crosses off 8 of
/// every 30 of its multiples instead of 15.
const RESIDUES: [u64; 8] = [1, 7, 11, 13, 17, 19, 23, 29];
/// Bytes per segment: 128 KiB (3.9 million numbers), well inside one core's L2 cache. A
/// multiple of 8, so extraction reads whole 64-bit words.
const SEGMENT_BYTES: u64 = 1 << 17;
/// The primes after 2, 3 and 5 that the presieve pattern crosses off.
const PRESIEVED: [u64; 4] = [7, 11, 13, 17];
/// 7·11·13·17: the presieve pattern over bytes repeats every this many bytes (one byte is
/// 30 numbers, and 30 is coprime to each of them).
const PATTERN_PERIOD: usize = 17_017;

/// The bit of residue `r` (coprime to 30) in a byte.
fn bit_of(r: u64) -> u8 {
    let i = RESIDUES.iter().position(|&x| x == r).unwrap_or(0);
    1 << i
}

/// A sieving prime and, for each residue class of its cofactor q modulo 30, the bit that
/// p·q lands on (the same for every q of that class).
struct BasePrime {
    p: u64,
    bits: [u8; 8],
}

/// What every segment shares. Segment `k` holds bytes `[k·SEGMENT_BYTES, (k+1)·SEGMENT_BYTES)`
/// of the whole range, byte `b` standing for the numbers `30·b .. 30·b + 29`.
struct Sieve {
    /// The largest number sieved.
    bound: u64,
    /// How many segments cover `[1, bound]`.
    segments: u64,
    /// Primes from 19 up to √bound.
    base: Vec<BasePrime>,
    /// One period of the presieve pattern: a segment starts as a copy of it, which saves
    /// the densest crossing-off passes.
    pattern: Vec<u8>,
}

impl Sieve {
    fn new(bound: u64) -> Self {
        let base = small_odd_primes(isqrt(bound) + 1)
            .into_iter()
            .filter(|p| *p > 5 && !PRESIEVED.contains(p))
            .map(|p| BasePrime {
                p,
                bits: RESIDUES.map(|r| bit_of(p * r % WHEEL)),
            })
            .collect();
        let pattern = (0..PATTERN_PERIOD as u64)
            .map(|b| {
                RESIDUES.iter().fold(0u8, |byte, &r| {
                    let number = WHEEL * b + r;
                    let coprime = PRESIEVED.iter().all(|p| !number.is_multiple_of(*p));
                    if coprime { byte | bit_of(r) } else { byte }
                })
            })
            .collect();
        let bytes = (bound + 1).div_ceil(WHEEL);
        Self {
            bound,
            segments: bytes.div_ceil(SEGMENT_BYTES),
            base,
            pattern,
        }
    }

    /// The primes (other than 2, 3 and 5) in segment `k`, in order.
    fn segment(&self, k: u64) -> Vec<u32> {
        let first_byte = k * SEGMENT_BYTES;
        let lo = WHEEL * first_byte; // the number of bit "0" of the segment's first byte
        let last = self.bound.min(lo + WHEEL * SEGMENT_BYTES - 1); // its last number
        let len = ((last - lo) / WHEEL + 1) as usize;
        // Padded to whole words for the extraction; the padding stays zero.
        let mut bytes = vec![0u8; len.next_multiple_of(8)];
        let mut at = (first_byte % PATTERN_PERIOD as u64) as usize;
        let mut filled = 0;
        while filled < len {
            let take = (PATTERN_PERIOD - at).min(len - filled);
            bytes[filled..filled + take].copy_from_slice(&self.pattern[at..at + take]);
            filled += take;
            at = 0;
        }
        if k == 0 {
            // 1 is not prime; the presieved primes crossed themselves off.
            bytes[0] &= !bit_of(1);
            for p in PRESIEVED {
                bytes[(p / WHEEL) as usize] |= bit_of(p % WHEEL);
            }
        }
        for prime in &self.base {
            let p = prime.p;
            if p * p > last {
                break;
            }
            // Cofactors q from p (smaller multiples have a smaller factor) and from the
            // segment's start on; one strided pass per residue class of q: p·(q + 30) is
            // p bytes further, on the same bit.
            let q_min = p.max(lo.div_ceil(p));
            for (i, &r) in RESIDUES.iter().enumerate() {
                let q = q_min + (r + WHEEL - q_min % WHEEL) % WHEEL;
                let mut byte = ((p * q - lo) / WHEEL) as usize;
                let keep = !prime.bits[i];
                while byte < len {
                    bytes[byte] &= keep;
                    byte += p as usize;
                }
            }
        }
        let mut out = Vec::with_capacity(len * 2);
        for (w, word) in bytes.chunks_exact(8).enumerate() {
            let mut word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            while word != 0 {
                let b = word.trailing_zeros() as u64;
                let number = lo + WHEEL * (8 * w as u64 + b / 8) + RESIDUES[(b % 8) as usize];
                if number > self.bound {
                    return out;
                }
                out.push(number as u32);
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
    fn every_prime_across_many_segments_matches_another_sieve() {
        // 5·10^6 primes reach 86 million: 23 segments, and every segment boundary.
        let n = 5_000_000;
        let (s, all) = primes(n as u64);
        let expected: Vec<u32> = primal::Sieve::new(nth_prime_bound(n as u64) as usize)
            .primes_from(0)
            .take(n)
            .map(|p| p as u32)
            .collect();
        assert!(all == expected, "the lists differ");
        assert_eq!(s.sum, expected.iter().map(|&p| u64::from(p)).sum::<u64>());
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
