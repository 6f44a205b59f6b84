//! `matrix_multiply`: the product of two seeded random n×n f64 matrices, with faer.
//!
//! faer was chosen over matrixmultiply for speed: about 195 against 135 GFLOP/s on two
//! cores at n = 1024 on this machine class, for about a minute more of clean build.
//!
//! The product is computed in blocks of C (at most 2.5 GFLOP, ~50 ms, each), so the cancel
//! token is checked and progress reported between blocks while each block still runs at full
//! speed on every core.

use std::io::{BufWriter, Write};
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

/// Floating-point work of the largest uninterruptible block (block sides are rounded down
/// to a multiple of 128, so no block exceeds it): n = 4096 gets 512×512 blocks (2.15
/// GFLOP), 35–55 ms each on two AVX2 cores at 40–60 GFLOP/s, so a cancel lands well inside
/// 100 ms. Larger blocks run a little faster (3.36 GFLOP: 81 against 76 GFLOP/s on a
/// faster machine) but took up to 141 ms to cancel on an AVX2 one.
const BLOCK_FLOP: f64 = 2.5e9;

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
/// faer's GEMM cannot be interrupted, and slicing the product finely costs speed (each
/// block re-packs its rows of `a` and columns of `b`: 32-column panels ran at a quarter of
/// full speed). So the product is cut into the fewest square-ish blocks of at most
/// `BLOCK_FLOP` each: a product up to that size is one call; n = 4096 is 8×8 blocks of
/// 512×512. A cancel waits for at most one block.
pub fn multiply(
    a: MatRef<'_, f64>,
    b: MatRef<'_, f64>,
    check: &Check,
) -> Result<Mat<f64>, KernelError> {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let mut c = Mat::<f64>::zeros(m, n);
    let total = 2.0 * m as f64 * k as f64 * n as f64;
    let side = if total <= BLOCK_FLOP {
        m.max(n).max(1)
    } else {
        // 2·side²·k ≤ BLOCK_FLOP, rounded down to a multiple of 128 rows/columns.
        let side = (BLOCK_FLOP / (2.0 * k as f64)).sqrt() as usize;
        (side / 128 * 128).max(128)
    };
    let blocks = m.div_ceil(side) * n.div_ceil(side);
    let mut done = 0;
    for col in (0..n).step_by(side) {
        let w = side.min(n - col);
        for row in (0..m).step_by(side) {
            if let Err(e) = check.stopped() {
                return Err(drop_later(c, e));
            }
            let h = side.min(m - row);
            matmul(
                c.as_mut().submatrix_mut(row, col, h, w),
                Accum::Replace,
                a.submatrix(row, 0, h, k),
                b.submatrix(0, col, k, w),
                1.0,
                Par::rayon(0),
            );
            done += 1;
            check.progress(0.1 + 0.9 * done as f32 / blocks as f32);
        }
    }
    Ok(c)
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
