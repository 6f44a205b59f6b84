//! PDF text extraction alone, for throughput and peak memory (ADR 0015).
//!
//! Run: `cargo run --release -p kiln-kernels --features testing --example pdf_extract --
//! <pages> [words_per_page]` extracts a generated text document of that size (300 words a
//! page by default); `-- <path>` extracts that file instead. Prints one line of JSON: pages,
//! the seconds and pages per second of extraction alone (generation and reading the file
//! excluded), and the statistics. Under `/usr/bin/time -v` its "Maximum resident set size"
//! is the peak memory of the whole run. Uses the service's allocator (mimalloc). With
//! `KILN_PDF_OUT=<path>` the generated document is also written there (to submit it to a
//! server).

use std::process::ExitCode;
use std::time::Instant;

use kiln_kernels::pdf::extract::{Limits, extract};
use kiln_kernels::pdf::{sample, stats::stats};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(first) = args.first() else {
        eprintln!("usage: pdf_extract <pages> [words_per_page] | pdf_extract <file.pdf>");
        return ExitCode::FAILURE;
    };
    let (source, bytes) = match first.parse::<usize>() {
        Ok(pages) => {
            let words = match args.get(1).map(|w| w.parse::<usize>()) {
                None => 300,
                Some(Ok(words)) => words,
                Some(Err(e)) => {
                    eprintln!("words_per_page: {e}");
                    return ExitCode::FAILURE;
                }
            };
            (
                format!("text_pdf({pages}, {words}, 1)"),
                sample::text_pdf(pages, words, 1),
            )
        }
        Err(_) => match std::fs::read(first) {
            Ok(bytes) => (first.clone(), bytes),
            Err(e) => {
                eprintln!("{first}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if let Some(out) = std::env::var_os("KILN_PDF_OUT")
        && let Err(e) = std::fs::write(&out, &bytes)
    {
        eprintln!("{}: {e}", out.to_string_lossy());
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let result = extract(&bytes, &Limits::default(), &mut |_, _| true);
    let seconds = started.elapsed().as_secs_f64();
    let line = match result {
        Ok(pages) => serde_json::json!({
            "source": source,
            "bytes": bytes.len(),
            "pages": pages.len(),
            "seconds": seconds,
            "pages_per_second": pages.len() as f64 / seconds,
            "stats": stats(&pages, 5),
        }),
        Err(e) => serde_json::json!({
            "source": source,
            "bytes": bytes.len(),
            "seconds": seconds,
            "error": e.to_string(),
        }),
    };
    println!("{line}");
    ExitCode::SUCCESS
}
