//! Compute kernels as the worker runs them, without the service around them.
//!
//! Run: `cargo bench -p kiln-kernels --bench kernels` (`-- primes` to pick one; `--runs N`).
//! Each figure is the median of the runs, with min and max beside it.

use std::time::Instant;

use kiln_kernels::cpu::Check;
use kiln_kernels::csv_aggregate;
use kiln_kernels::matrix::{generate, multiply};
use kiln_kernels::primes::first_primes;

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

fn bench(name: &str, runs: usize, mut once: impl FnMut() -> String) {
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
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let wanted = |name: &str| {
        args.iter()
            .filter(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
            .all(|a| name.contains(a.as_str()))
    };
    println!(
        "machine: {} cores\n\n| kernel | median ms | min–max ms | CPU ms (all threads, median) | result |\n|---|---|---|---|---|",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for n in [1024usize, 2048, 4096] {
        let name = format!("matrix_multiply n={n} (multiply only)");
        if wanted(&name) {
            let (a, b) = (generate(n, 1, 0), generate(n, 1, 1));
            let mut gflops = Vec::new();
            bench(&name, runs, || {
                let start = Instant::now();
                let c = multiply(a.as_ref(), b.as_ref(), &Check::detached()).expect("product");
                let g = 2.0 * (n as f64).powi(3) / start.elapsed().as_secs_f64() / 1e9;
                std::hint::black_box(c);
                gflops.push(g);
                format!("{g:.1} GFLOP/s")
            });
            let (median, min, max) = stats(gflops);
            println!("| ↳ GFLOP/s | {median:.1} | {min:.1}–{max:.1} | | |");
        }
        let name = format!("matrix_multiply n={n} (generate both)");
        if wanted(&name) {
            bench(&name, runs, || {
                std::hint::black_box((generate(n, 1, 0), generate(n, 1, 1)));
                String::new()
            });
        }
    }
    let rows = 10_000_000u64;
    let dir = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let csv = dir.join("data.csv");
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
            while progress.get() == 0.0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // Cancel at a different point of the work each time.
            tokio::time::sleep(std::time::Duration::from_millis(20 + 37 * i as u64)).await;
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
