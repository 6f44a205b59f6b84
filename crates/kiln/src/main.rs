//! `kiln`: the one binary. Everything lives in the library; see `kiln::cli`.

fn main() {
    let code = kiln::cli::main();
    #[allow(clippy::exit)] // The exit code is the CLI's contract (0, 1 or 2).
    std::process::exit(code);
}
