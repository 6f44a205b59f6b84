//! `matrix_multiply`: the product of two seeded random n×n f64 matrices, with faer.
//!
//! faer was chosen over matrixmultiply for speed: about 195 against 135 GFLOP/s on two
//! cores at n = 1024 on this machine class, for about a minute more of clean build.
//!
//! The product is computed in blocks of C (at most 1.25 GFLOP, a few tens of ms, each), one
//! faer product per block on one thread, the blocks shared out to the CPU pool, so the
//! cancel token is checked and progress reported between blocks while every core computes.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use kiln_domain::JobType;
use kiln_domain::job_type::{MatrixPayload, payload};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::cpu::{self, Check};
use crate::{Classify, JobContext, Kernel, KernelError, npy};

/// Floating-point work of the largest uninterruptible call: one block of C on one thread.
/// n = 4096 gets 376×376 blocks (1.16 GFLOP), ~24 ms on one AVX-512 core at ~48 GFLOP/s
/// and ~40 ms on a slower AVX2 one, so a cancel lands well inside 100 ms.
const BLOCK_FLOP: f64 = 1.25e9;
/// Blocks per pool thread at least: a thread the OS takes away for a while (another
/// process on the core) leaves blocks that the others take over.
const MIN_BLOCKS_PER_THREAD: usize = 2;

/// The `matrix_multiply` kernel.
#[derive(Debug, Clone, Copy)]
pub struct MatrixMultiply;

/// What a `matrix_multiply` job returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Matrix size.
    pub n: usize,
    /// Seed of the inputs.
    pub seed: u64,
    /// Time to generate both inputs, ms.
    pub generate_ms: f64,
    /// Time of the multiplication alone, ms.
    pub elapsed_ms: f64,
    /// 2n³ / elapsed.
    pub gflops: f64,
    /// Sum of every element of the product.
    pub checksum: f64,
    /// Sum of its diagonal.
    pub trace: f64,
    /// Its Frobenius norm.
    pub frobenius: f64,
    /// Threads used.
    pub threads: usize,
}

#[async_trait]
impl Kernel for MatrixMultiply {
    fn job_type(&self) -> JobType {
        JobType::MatrixMultiply
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        let MatrixPayload { n, seed } = payload(&ctx.payload).permanent("invalid_input")?;
        let check = Check::new(&ctx);
        let (_, file) = ctx
            .artifacts
            .create("product.npy")
            .retryable("artifact_write")?;
        let summary = cpu::run(move || {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let summary = compute(n as usize, seed, &check, &mut out)?;
            out.flush().retryable("artifact_write")?;
            Ok::<_, KernelError>(summary)
        })
        .await??;
        ctx.log.line(format!(
            "n = {}: generated in {:.1} ms, multiplied in {:.1} ms ({:.1} GFLOP/s on {} threads)",
            summary.n, summary.generate_ms, summary.elapsed_ms, summary.gflops, summary.threads
        ));
        serde_json::to_value(&summary).permanent("internal")
    }
}

/// Generates both inputs, multiplies them, writes the product to `out` as `.npy`
/// (column-major, as faer stores it) and summarises it.
pub fn compute(
    n: usize,
    seed: u64,
    check: &Check,
    out: &mut impl Write,
) -> Result<Summary, KernelError> {
    let started = Instant::now();
    let a = generate_checked(n, seed, 0, check)?;
    check.progress(0.05);
    let b = match generate_checked(n, seed, 1, check) {
        Ok(b) => b,
        Err(e) => return Err(drop_later(a, e)),
    };
    check.progress(0.1);
    let generate_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let c = match multiply(a.as_ref(), b.as_ref(), check) {
        Ok(c) => c,
        Err(e) => return Err(drop_later((a, b), e)),
    };
    let elapsed = started.elapsed().as_secs_f64();
    drop((a, b));
    let (checksum, trace, frobenius) = summarise(c.as_ref());
    if let Err(e) = check.stopped() {
        return Err(drop_later(c, e));
    }
    write_npy(c.as_ref(), out).retryable("artifact_write")?;
    Ok(Summary {
        n,
        seed,
        generate_ms,
        elapsed_ms: elapsed * 1e3,
        gflops: 2.0 * (n as f64).powi(3) / elapsed / 1e9,
        checksum,
        trace,
        frobenius,
        threads: rayon::current_num_threads(),
    })
}

/// Frees `matrices` on a thread of its own and returns `e`. Unmapping the pages of three
/// 134 MB matrices took longer than the rest of a cancel (up to ~60 ms at n = 4096): a
/// cancelled job need not wait for its memory to be given back.
fn drop_later<T: Send + 'static>(matrices: T, e: KernelError) -> KernelError {
    // Without a thread (the process is out of them) the closure, and with it the matrices,
    // is dropped here instead: slower, never wrong.
    let _ = std::thread::Builder::new()
        .name("kiln-matrix-free".to_owned())
        .spawn(move || drop(matrices));
    e
}

/// A seeded n×n matrix with entries uniform in [-1, 1). Each column is its own SplitMix64
/// stream, so the values are the same whatever the thread count and on every machine
/// (a hand-written generator: a crate's RNG may change its stream between versions).
pub fn generate(n: usize, seed: u64, which: u64) -> Mat<f64> {
    let never = Check::detached();
    generate_checked(n, seed, which, &never).unwrap_or_else(|_| Mat::zeros(n, n))
}

/// [`generate`], stopping between columns once the attempt is cancelled. Columns are filled
/// in place, in parallel (no second copy of the matrix).
fn generate_checked(
    n: usize,
    seed: u64,
    which: u64,
    check: &Check,
) -> Result<Mat<f64>, KernelError> {
    let mut m = Mat::<f64>::zeros(n, n);
    let filled = m
        .par_col_iter_mut()
        .enumerate()
        .try_for_each(|(j, column)| {
            check.stopped()?;
            let mut state = mix(seed ^ mix((which << 32) ^ j as u64));
            for x in column.iter_mut() {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                // 53 random bits → [0, 1) → [-1, 1).
                *x = (mix(state) >> 11) as f64 * (2.0 / (1u64 << 53) as f64) - 1.0;
            }
            Ok::<(), KernelError>(())
        });
    match filled {
        Ok(()) => Ok(m),
        Err(e) => Err(drop_later(m, e)),
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `a · b`, block by block, checking for a cancel between blocks.
///
/// faer's GEMM cannot be interrupted, so the product is cut into blocks of C of at most
/// `BLOCK_FLOP` each. The blocks are shared out to the pool's threads by rayon, and each
/// block is one faer product on one thread (`Par::Seq`). Letting faer parallelise each
/// product instead (`Par::rayon`) synchronises its threads at a barrier several times per
/// product; inside a service, where another thread takes a core now and then, a thread
/// that waits at a barrier for one the OS has descheduled lost a third of the speed at
/// n ≥ 1024 and up to three quarters at n = 512 (BENCHMARKS.md, "Compute kernels"). Whole
/// blocks per thread need no synchronisation but the block queue. The price is that each
/// block packs its own rows of `a` and columns of `b`; square blocks keep that small.
pub fn multiply(
    a: MatRef<'_, f64>,
    b: MatRef<'_, f64>,
    check: &Check,
) -> Result<Mat<f64>, KernelError> {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let mut c = Mat::<f64>::zeros(m, n);
    let (h, w) = block_shape(m, k, n, rayon::current_num_threads());
    let blocks = m.div_ceil(h) * n.div_ceil(w);
    let done = AtomicUsize::new(0);
    let computed = c
        .as_mut()
        .par_col_chunks_mut(w)
        .enumerate()
        .try_for_each(|(j, panel)| {
            panel
                .par_row_chunks_mut(h)
                .enumerate()
                .try_for_each(|(i, block)| {
                    check.stopped()?;
                    let (rows, cols) = (block.nrows(), block.ncols());
                    matmul(
                        block,
                        Accum::Replace,
                        a.subrows(i * h, rows),
                        b.subcols(j * w, cols),
                        1.0,
                        Par::Seq,
                    );
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    check.raise_progress(0.1 + 0.9 * finished as f32 / blocks as f32);
                    Ok::<(), KernelError>(())
                })
        });
    match computed {
        Ok(()) => Ok(c),
        Err(e) => Err(drop_later(c, e)),
    }
}

/// Rows and columns of the blocks `multiply` cuts an m×n product with inner size k into:
/// square-ish, at most `BLOCK_FLOP` each, as even as the sizes allow, and at least
/// `MIN_BLOCKS_PER_THREAD` per thread when the product has room for blocks of 64 or more.
fn block_shape(m: usize, k: usize, n: usize, threads: usize) -> (usize, usize) {
    let (m, n) = (m.max(1), n.max(1));
    let side = ((BLOCK_FLOP / (2.0 * k.max(1) as f64)).sqrt() as usize).max(64);
    let (mut rows, mut cols) = (m.div_ceil(side), n.div_ceil(side));
    let wanted = MIN_BLOCKS_PER_THREAD * threads.max(1);
    while rows * cols < wanted {
        // Split the longer side, while its blocks stay at least 64 long.
        let (h, w) = (m / (rows + 1), n / (cols + 1));
        if h >= w && h >= 64 {
            rows += 1;
        } else if w >= 64 {
            cols += 1;
        } else {
            break;
        }
    }
    // Multiples of 8 rows (whole vectors of the GEMM's micro-kernel) where that is free.
    let h = m.div_ceil(rows).next_multiple_of(8).min(m);
    (h, n.div_ceil(cols))
}

/// Writes `c` as a Fortran-ordered `<f8` `.npy` array.
pub fn write_npy(c: MatRef<'_, f64>, out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(&npy::header("<f8", true, &[c.nrows(), c.ncols()]))?;
    for j in 0..c.ncols() {
        npy::write_f64(out, c.col(j).iter().copied())?;
    }
    Ok(())
}

/// (sum of all elements, trace, Frobenius norm).
fn summarise(c: MatRef<'_, f64>) -> (f64, f64, f64) {
    let (sum, squares) = (0..c.ncols())
        .into_par_iter()
        .map(|j| {
            let column = c.col(j);
            column
                .iter()
                .fold((0.0, 0.0), |(s, q), &x| (s + x, q + x * x))
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    let trace = (0..c.nrows().min(c.ncols())).map(|i| c[(i, i)]).sum();
    (sum, trace, squares.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<Vec<f64>> {
        let n = a.nrows();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| a[(i, k)] * b[(k, j)]).sum())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_product_matches_a_naive_product() {
        for n in [1, 2, 7, 65, 130] {
            let (a, b) = (generate(n, 42, 0), generate(n, 42, 1));
            let c = multiply(a.as_ref(), b.as_ref(), &Check::detached()).unwrap();
            let expected = naive(a.as_ref(), b.as_ref());
            for i in 0..n {
                for j in 0..n {
                    let (got, want) = (c[(i, j)], expected[i][j]);
                    assert!(
                        (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                        "n={n} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn blocks_cover_every_element() {
        // n = 300 is one block; the block split itself is checked at n = 4096 by the cancel
        // test and here through the sums.
        let (a, b) = (generate(300, 1, 0), generate(300, 1, 1));
        let c = multiply(a.as_ref(), b.as_ref(), &Check::detached()).unwrap();
        let expected = naive(a.as_ref(), b.as_ref());
        let want: f64 = expected.iter().flatten().sum();
        let (got, _, _) = summarise(c.as_ref());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn block_shapes_bound_each_call_and_give_every_thread_work() {
        for (m, k, n, threads) in [
            (4096, 4096, 4096, 2),
            (2048, 2048, 2048, 2),
            (1024, 1024, 1024, 2),
            (512, 512, 512, 2),
            (300, 300, 300, 8),
            (100, 5000, 100, 2),
            (1, 1, 1, 2),
            (4096, 4096, 4096, 64),
        ] {
            let (h, w) = block_shape(m, k, n, threads);
            assert!(h >= 1 && h <= m && w >= 1 && w <= n, "{m}×{k}×{n}: {h}×{w}");
            let flop = 2.0 * h as f64 * w as f64 * k as f64;
            assert!(flop <= BLOCK_FLOP || h.max(w) <= 64, "{m}×{k}×{n}: {h}×{w}");
            let blocks = m.div_ceil(h) * n.div_ceil(w);
            assert!(
                blocks >= MIN_BLOCKS_PER_THREAD * threads || h.min(w) < 128,
                "{m}×{k}×{n} on {threads}: {blocks} blocks of {h}×{w}"
            );
        }
        assert_eq!(block_shape(4096, 4096, 4096, 2), (376, 373));
        assert_eq!(block_shape(512, 512, 512, 2), (256, 256));
    }

    #[test]
    fn the_same_seed_gives_the_same_matrices_and_another_seed_others() {
        let (x, y, z) = (generate(50, 9, 0), generate(50, 9, 0), generate(50, 10, 0));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(generate(50, 9, 0), generate(50, 9, 1));
        assert!(
            x.col_iter()
                .flat_map(|c| c.iter().copied().collect::<Vec<_>>())
                .all(|v| (-1.0..1.0).contains(&v))
        );
    }

    #[test]
    fn the_summary_is_consistent() {
        let mut npy_bytes = Vec::new();
        let s = compute(64, 3, &Check::detached(), &mut npy_bytes).unwrap();
        let (a, b) = (generate(64, 3, 0), generate(64, 3, 1));
        let expected = naive(a.as_ref(), b.as_ref());
        let trace: f64 = (0..64).map(|i| expected[i][i]).sum();
        let frob: f64 = expected.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        assert!((s.trace - trace).abs() < 1e-9);
        assert!((s.frobenius - frob).abs() < 1e-9);
        assert!(s.gflops > 0.0);
        // The artifact: header, then C column by column.
        let header = npy::header("<f8", true, &[64, 64]);
        assert_eq!(npy_bytes.len(), header.len() + 64 * 64 * 8);
        let at = |i: usize, j: usize| {
            let k = header.len() + (j * 64 + i) * 8;
            f64::from_le_bytes(npy_bytes[k..k + 8].try_into().unwrap())
        };
        for (i, j) in [(0, 0), (5, 17), (63, 1), (63, 63)] {
            assert!((at(i, j) - expected[i][j]).abs() < 1e-9, "({i},{j})");
        }
    }

    #[tokio::test]
    async fn a_cancel_stops_a_large_product_between_panels() {
        let (ctx, _log) = crate::test_context(serde_json::json!({"n": 4096}));
        let cancel = ctx.cancel.clone();
        let artifacts = ctx.artifacts.clone();
        let progress = ctx.progress.clone();
        let run = tokio::spawn(async move { MatrixMultiply.run(ctx).await });
        crate::tests::wait_for_progress(&progress).await;
        cancel.cancel();
        // Cancelled before the product was done; the latency is measured by the kernel
        // benchmark, not bounded by the wall clock here.
        let result = run.await.unwrap();
        assert!(matches!(result, Err(KernelError::Cancelled)), "{result:?}");
        assert!(progress.get() < 1.0);
        artifacts.reset().unwrap();
    }
}
