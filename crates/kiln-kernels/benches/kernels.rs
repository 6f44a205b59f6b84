//! Compute kernels as the worker runs them, without the service around them.
//!
//! Run: `cargo bench -p kiln-kernels --bench kernels` (`-- primes` to pick one; `--runs N`;
//! `--csv PATH` keeps the generated CSV there for `benches/reference.py`; `--pause-ms N`
//! idles before each kernel run of the "matrix side by side" table, as a service's CPU pool
//! idles between jobs).
//! The benchmark uses the service's allocator (mimalloc), whose large-page behaviour moves
//! the matrix figures by several per cent.
//! Each figure is the median of the runs, with min and max beside it. The machine's f64 FMA
//! peak on 1 and 2 threads is measured before the matrix products and each GFLOP/s figure
//! is given as a share of it.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kiln_kernels::cpu::Check;
use kiln_kernels::csv_aggregate;
use kiln_kernels::matrix::{generate, multiply};
use kiln_kernels::primes::first_primes;
use kiln_kernels::{Kernel, matrix::MatrixMultiply};

fn stats(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

/// CPU time of every thread of this process so far, ns (from `/proc/self/task/*/schedstat`):
/// unlike wall time, it barely changes when other processes compete for the cores.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of the calling thread so far, ns.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `once` `runs` times and prints a row; returns the median CPU ms of all threads.
fn bench(name: &str, runs: usize, mut once: impl FnMut() -> String) -> f64 {
    let mut times = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    let mut note = String::new();
    for _ in 0..runs {
        let (start, cpu_start) = (Instant::now(), cpu_ns());
        note = once();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        cpu.push(cpu_ns().saturating_sub(cpu_start) as f64 / 1e6);
    }
    let (median, min, max) = stats(times);
    let (cpu, _, _) = stats(cpu);
    println!("| {name} | {median:.1} | {min:.1}–{max:.1} | {cpu:.1} | {note} |");
    cpu
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    // `--pause-ms N`: idle time before each kernel run of the side-by-side table.
    let pause_ms = args
        .iter()
        .position(|a| a == "--pause-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    // `--csv PATH`: write the generated CSV there and keep it (for `reference.py`).
    let keep_csv = args
        .iter()
        .position(|a| a == "--csv")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let filters: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .collect();
    let wanted = |name: &str| filters.iter().all(|a| name.contains(a.as_str()));
    println!(
        "machine: {} cores, {}\n\n| kernel | median ms | min–max ms | CPU ms (all threads, median) | result |\n|---|---|---|---|---|",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_description()
    );
    let multiplies = |n: usize, threads: usize| {
        format!(
            "matrix_multiply n={n} (multiply only, {threads} thread{})",
            if threads == 1 { "" } else { "s" }
        )
    };
    let any_multiply = [1024, 2048, 4096]
        .iter()
        .any(|&n| wanted(&multiplies(n, 1)) || wanted(&multiplies(n, 2)));
    // The machine's peak, measured first so each GFLOP/s figure can be read against it.
    let (mut peak, mut peak_lanes, mut peak_busy) = ([0.0f64; 3], 0, f64::NAN);
    for threads in [1, 2] {
        let name = format!(
            "f64 FMA peak, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        if wanted(&name) || any_multiply {
            let busy;
            (peak[threads], busy, peak_lanes) = fma_peak(&name, threads, runs);
            // One busy core's peak, from the 1-thread run: two threads at once can be
            // slowed by the host (another guest on the same cores), one rarely is.
            if threads == 1 || peak_busy.is_nan() {
                peak_busy = busy;
            }
        }
    }
    for n in [1024usize, 2048, 4096] {
        // One thread only where BENCHMARKS.md has a target for it (n = 4096 would take ~20 s).
        for threads in if n < 4096 { &[2usize, 1][..] } else { &[2][..] } {
            let name = multiplies(n, *threads);
            if !wanted(&name) {
                continue;
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(*threads)
                .build()
                .expect("a thread pool");
            let (a, b) = (generate(n, 1, 0), generate(n, 1, 1));
            let mut gflops = Vec::new();
            let cpu_ms = bench(&name, runs, || {
                let start = Instant::now();
                // faer's `Par::rayon(0)` takes the thread count of the pool it runs in.
                let c = pool.install(|| multiply(a.as_ref(), b.as_ref(), &Check::detached()));
                let g = 2.0 * (n as f64).powi(3) / start.elapsed().as_secs_f64() / 1e9;
                std::hint::black_box(c.expect("product"));
                gflops.push(g);
                format!("{g:.1} GFLOP/s")
            });
            let (median, min, max) = stats(gflops);
            let share = 100.0 * median / peak[*threads];
            // Per second of CPU a thread got: barely moved by other processes on the machine
            // (but rayon's idle spinning counts as busy).
            let busy = 2.0 * (n as f64).powi(3) / (cpu_ms / 1e3) / 1e9;
            println!(
                "| ↳ GFLOP/s | {median:.1} | {min:.1}–{max:.1} | | {share:.0}% of the {threads}-thread FMA peak{}; per busy core {busy:.1} ({:.0}% of its peak) |",
                if avx512() && peak_lanes < 8 {
                    " (256-bit; see above)"
                } else {
                    ""
                },
                100.0 * busy / peak_busy,
            );
        }
        let name = format!("matrix_multiply n={n} (generate both)");
        if wanted(&name) {
            bench(&name, runs, || {
                std::hint::black_box((generate(n, 1, 0), generate(n, 1, 1)));
                String::new()
            });
        }
    }
    if wanted("matrix side by side") {
        side_by_side(runs, pause_ms, &mut peak);
    }
    let rows = 10_000_000u64;
    let dir = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let csv = keep_csv.clone().unwrap_or_else(|| dir.join("data.csv"));
    let name = format!("csv_aggregate generate {rows} rows");
    if wanted(&name) || wanted("csv_aggregate parse") {
        bench(&name, runs, || {
            let file = std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&csv).expect("csv"),
            );
            let start = Instant::now();
            let bytes =
                csv_aggregate::generate(file, rows, 10_000, 1, &Check::detached(), (0.0, 1.0))
                    .expect("generate");
            let s = start.elapsed().as_secs_f64();
            format!("{:.1} M rows/s, {} MB", rows as f64 / s / 1e6, bytes >> 20)
        });
    }
    let name = format!("csv_aggregate parse + group_by {rows} rows");
    if wanted(&name) {
        bench(&name, runs, || {
            let start = Instant::now();
            let agg = csv_aggregate::aggregate(
                &csv,
                "value",
                Some("group"),
                &Check::detached(),
                (0.0, 1.0),
            )
            .expect("aggregate");
            let s = start.elapsed().as_secs_f64();
            format!(
                "{:.1} M rows/s, {} groups",
                agg.rows as f64 / s / 1e6,
                agg.groups.len()
            )
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    for n in [10_000_000u64, 50_000_000] {
        let name = format!("primes n={n}");
        if wanted(&name) {
            bench(&name, runs, || {
                let mut bytes = 0usize;
                let s = first_primes(n, &Check::detached(), |chunk| {
                    bytes += std::hint::black_box(chunk).len() * 4;
                    Ok(())
                })
                .expect("sieve");
                format!("nth = {}, {} MB streamed", s.nth, bytes >> 20)
            });
        }
    }
    // The `primal` crate on the same task (the first n primes, in order, summed), to decide
    // whether to use it instead of our own sieve.
    for n in [10_000_000usize, 50_000_000] {
        let name = format!("primes n={n} with the primal crate (no streaming to a sink)");
        if wanted(&name) {
            bench(&name, runs, || {
                let bound = kiln_kernels::primes::nth_prime_bound(n as u64) as usize;
                let sieve = primal::Sieve::new(bound);
                let sum: u64 = sieve.primes_from(0).take(n).map(|p| p as u64).sum();
                format!("sum = {sum}")
            });
        }
    }
    let cancels: [(&str, serde_json::Value); 3] = [
        (
            "cancel primes n=50000000",
            serde_json::json!({"n": 50_000_000}),
        ),
        (
            "cancel matrix_multiply n=4096",
            serde_json::json!({"n": 4096}),
        ),
        (
            "cancel csv_aggregate rows=10000000",
            serde_json::json!({"rows": 10_000_000, "groups": 10_000, "operation": "group_by"}),
        ),
    ];
    for (name, payload) in cancels {
        if wanted(name) {
            cancel_latency(name, runs, payload);
        }
    }
    println!(
        "\npeak RSS of this process (VmHWM): {} MB — run one kernel per invocation to read its own",
        peak_rss_mb()
    );
}

/// Time from firing the cancel token of a kernel busy at its largest input until its
/// `run` returns `Cancelled`.
fn cancel_latency(name: &str, runs: usize, payload: serde_json::Value) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut took = Vec::new();
    for i in 0..runs {
        let (ctx, _log) = kiln_kernels::test_context(payload.clone());
        let (cancel, progress, artifacts) = (
            ctx.cancel.clone(),
            ctx.progress.clone(),
            ctx.artifacts.clone(),
        );
        let kernel = kiln_kernels::Registry::default()
            .get_by_name(name.split(' ').nth(1).expect("a type"))
            .expect("a kernel");
        let elapsed = runtime.block_on(async move {
            let run = tokio::spawn(async move { kernel.run(ctx).await });
            // Cancel at a different point of the work each time (by progress, so never
            // after the end on a fast machine): between 0 and 90% of it.
            let at = 0.9 * (i as f32 + 1.0) / (runs as f32 + 1.0);
            while progress.get() == 0.0 || progress.get() < at {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let start = Instant::now();
            cancel.cancel();
            let result = run.await.expect("kernel task");
            assert!(result.is_err(), "{name}: finished before the cancel");
            start.elapsed()
        });
        let _ = artifacts.reset();
        took.push(elapsed.as_secs_f64() * 1e3);
    }
    let (median, min, max) = stats(took);
    println!("| {name} | {median:.1} | {min:.1}–{max:.1} | | cancel → returned |");
}

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The CPU model and the SIMD extensions that bound its floating-point peak.
fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    #[cfg(target_arch = "x86_64")]
    let simd = format!(
        "AVX2 {}, FMA {}, AVX-512F {}",
        yes_no(std::arch::is_x86_feature_detected!("avx2")),
        yes_no(std::arch::is_x86_feature_detected!("fma")),
        yes_no(std::arch::is_x86_feature_detected!("avx512f")),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let simd = std::env::consts::ARCH.to_owned();
    format!("{model} ({simd})")
}

#[cfg(target_arch = "x86_64")]
fn yes_no(present: bool) -> &'static str {
    if present { "yes" } else { "no" }
}

/// Independent multiply-add chains: more than the FMA units × their latency (2 × 4 on
/// current x86 cores), few enough to stay in the 16 vector registers of AVX2.
const CHAINS: usize = 12;

/// `iterations` rounds of `CHAINS` vector FMAs, in the widest SIMD the CPU has (pulp picks
/// it at run time: AVX-512 where present, else AVX2+FMA). Returns the lanes per vector and
/// a value that depends on every FMA, so none can be optimised away.
struct FmaChains {
    iterations: u64,
    seed: f64,
}

impl pulp::WithSimd for FmaChains {
    type Output = (usize, f64);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> (usize, f64) {
        // a ← a·x + y converges to y / (1 − x) = 1: no overflow, no subnormals.
        let x = simd.splat_f64s(1.0 - 1e-6);
        let y = simd.splat_f64s(1e-6);
        let mut acc = [simd.splat_f64s(self.seed); CHAINS];
        for _ in 0..self.iterations {
            for a in &mut acc {
                *a = simd.mul_add_f64s(*a, x, y);
            }
        }
        let sum = acc.iter().map(|&a| simd.reduce_sum_f64s(a)).sum();
        (size_of::<S::f64s>() / size_of::<f64>(), sum)
    }
}

/// Peak f64 throughput of `threads` threads running pure FMA loops at once (~0.2 s a run),
/// printed as a row; returns the median GFLOP/s, the median GFLOP per second of CPU each
/// thread got (the peak of one busy core, whatever else runs on the machine) and the f64
/// lanes per FMA.
fn fma_peak(name: &str, threads: usize, runs: usize) -> (f64, f64, usize) {
    let iterations = std::hint::black_box(40_000_000u64);
    let (mut gflops, mut busy) = (Vec::new(), Vec::new());
    let mut lanes = 0;
    bench(name, runs, || {
        let start = Instant::now();
        let results: Vec<(usize, f64, u64)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let seed = std::hint::black_box(0.5 + t as f64);
                        let cpu = thread_cpu_ns();
                        let (lanes, sum) =
                            pulp::Arch::new().dispatch(FmaChains { iterations, seed });
                        (lanes, sum, thread_cpu_ns().saturating_sub(cpu))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("FMA thread"))
                .collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        lanes = results[0].0;
        std::hint::black_box(results.iter().map(|r| r.1).sum::<f64>());
        let flop = 2.0 * (CHAINS * lanes * threads) as f64 * iterations as f64;
        let g = flop / seconds / 1e9;
        gflops.push(g);
        let cpu_s = results.iter().map(|r| r.2).sum::<u64>() as f64 / 1e9;
        busy.push(flop / cpu_s / 1e9);
        // The CPU column misses these threads (gone before it is read): their own count.
        format!(
            "{g:.1} GFLOP/s, {:.1} ms CPU in the FMA threads",
            cpu_s * 1e3
        )
    });
    let (median, min, max) = stats(gflops);
    let (busy, _, _) = stats(busy);
    println!(
        "| ↳ GFLOP/s | {median:.1} | {min:.1}–{max:.1} | | per busy core {busy:.1}; {lanes} f64 lanes per FMA ({} bits){} |",
        lanes * 64,
        if avx512() && lanes < 8 {
            "; this CPU has AVX-512, whose peak is up to twice this and which faer's GEMM \
             uses: build pulp with `x86-v4` to measure it"
        } else {
            ""
        }
    );
    (median, busy, lanes)
}

/// Whether the CPU has AVX-512 (the FMA loop uses it only if pulp is built with `x86-v4`).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The matrix product three ways on 2 threads, for n = 256…4096, as one table: the machine's
/// FMA peak, faer called directly (one `matmul` into a product whose memory is already
/// touched, on a pool of its own), and the `matrix_multiply` kernel as the worker runs it
/// (`Kernel::run` on a Tokio runtime, the CPU pool, fresh inputs and output each time; its
/// result's `gflops`, which times the product alone).
fn side_by_side(runs: usize, pause_ms: u64, peak: &mut [f64; 3]) {
    if peak[2] == 0.0 {
        peak[2] = fma_peak("f64 FMA peak, 2 threads", 2, runs).0;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut rows = Vec::new();
    for n in [256usize, 512, 1024, 2048, 4096] {
        // faer directly, on the same CPU pool the kernels run on.
        let direct = runtime
            .block_on(kiln_kernels::cpu::run(move || {
                let (a, b) = (generate(n, 1, 0), generate(n, 1, 1));
                let mut c = faer::Mat::<f64>::zeros(n, n);
                // Enough repetitions for ~0.2 s a run at small n, one at large n.
                let reps = (2e8 / (2.0 * (n as f64).powi(3))).ceil().max(1.0) as usize;
                (0..runs)
                    .map(|_| {
                        let start = Instant::now();
                        for _ in 0..reps {
                            faer::linalg::matmul::matmul(
                                c.as_mut(),
                                faer::Accum::Replace,
                                a.as_ref(),
                                b.as_ref(),
                                1.0,
                                faer::Par::rayon(0),
                            );
                        }
                        reps as f64 * 2.0 * (n as f64).powi(3) / start.elapsed().as_secs_f64() / 1e9
                    })
                    .collect::<Vec<f64>>()
            }))
            .expect("the product");
        let mut job = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..runs {
            // A service's CPU pool is idle between jobs; `--pause-ms` mimics that.
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
            let (ctx, _log) = kiln_kernels::test_context(serde_json::json!({"n": n, "seed": 1}));
            let artifacts = ctx.artifacts.clone();
            let start = Instant::now();
            let result = runtime
                .block_on(MatrixMultiply.run(ctx))
                .expect("the kernel");
            wall.push(start.elapsed().as_secs_f64() * 1e3);
            job.push(result["gflops"].as_f64().expect("gflops"));
            let _ = artifacts.reset();
        }
        let (direct, _, _) = stats(direct);
        let (job, job_min, job_max) = stats(job);
        let (wall, _, _) = stats(wall);
        rows.push(format!(
            "| {n} | {:.1} | {direct:.1} ({:.0}%) | {job:.1} ({:.0}%; {job_min:.1}–{job_max:.1}) | {wall:.1} |",
            peak[2],
            100.0 * direct / peak[2],
            100.0 * job / peak[2],
        ));
    }
    println!(
        "\n| n (2 threads) | FMA peak GFLOP/s | faer direct GFLOP/s (% of peak) | kernel as a job GFLOP/s (% of peak; min–max) | job wall ms (generate, multiply, summary, .npy) |\n|---|---|---|---|---|"
    );
    for row in rows {
        println!("{row}");
    }
    println!();
}
