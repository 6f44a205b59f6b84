//! `kiln`: the one binary. Everything lives in the library; see `kiln::cli`.

/// mimalloc instead of glibc's allocator: a request allocates a few dozen small buffers
/// across threads, and malloc/free were ~15% of the request threads' time under load (by
/// `perf`). Interleaved runs: +10–37% submissions/s, +15–38% jobs/s end to end
/// (BENCHMARKS.md). SQLite keeps its own allocator calls (glibc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let code = kiln::cli::main();
    #[allow(clippy::exit)] // The exit code is the CLI's contract (0, 1 or 2).
    std::process::exit(code);
}
