//! The benchmark's results: figures (scenario, figure, value, unit) under a header that
//! names the machine and the durability mode, and one row per endpoint for the scenarios
//! that measure many (`read`), printed as markdown tables or as JSON.

use std::time::Duration;

use serde::Serialize;

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Which scenario measured it (`submit`, `e2e`, …).
    pub scenario: &'static str,
    /// What it is (`throughput`, `latency p95`, …).
    pub figure: String,
    /// The value.
    pub value: f64,
    /// Its unit (`jobs/s`, `ms`, …).
    pub unit: &'static str,
}

/// What one endpoint sustained: a row of the endpoints table.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Which scenario measured it (`read`).
    pub scenario: &'static str,
    /// The request, e.g. `GET /api/v1/me`.
    pub endpoint: String,
    /// 2xx answers counted in the measured window.
    pub requests: u64,
    /// Answers that were not 2xx, and requests that failed, warm-up included.
    pub errors: u64,
    /// `requests` per second of the measured window.
    pub requests_per_s: f64,
    /// Latency percentiles of the counted requests, in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p95_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The server's CPU time per counted request, in microseconds (`None` when the server
    /// is not a local process).
    pub server_cpu_us: Option<f64>,
    /// The bench's own CPU time per counted request, in microseconds.
    pub bench_cpu_us: Option<f64>,
    /// `requests_per_s` as a percentage of the scenario's baseline (`GET /healthz`).
    pub percent_of_baseline: Option<f64>,
}

/// Everything `kiln bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Logical cores of this machine.
    pub cores: usize,
    /// The server's durability mode, e.g. `SQLite WAL, synchronous=NORMAL`.
    pub durability: String,
    /// Where the server ran and how its RSS was read.
    pub server: String,
    /// `kiln` version (from the package, not git).
    pub version: &'static str,
    /// The figures, in scenario order.
    pub figures: Vec<Figure>,
    /// One row per measured endpoint (the `read` scenario), in the order measured.
    pub endpoints: Vec<Endpoint>,
    /// Scenarios that failed or stopped at `--max-seconds`, and why.
    pub errors: Vec<String>,
}

impl Report {
    /// Adds a figure.
    pub fn push(&mut self, scenario: &'static str, figure: &str, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            scenario,
            figure: figure.to_owned(),
            value,
            unit,
        });
    }

    /// Adds p50, p95 and p99 of `samples` (milliseconds) as `<name> p50` etc.
    pub fn percentiles(&mut self, scenario: &'static str, name: &str, samples: &[Duration]) {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        for (label, p) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
            self.push(
                scenario,
                &format!("{name} {label}"),
                percentile(&ms, p),
                "ms",
            );
        }
    }

    /// The markdown table with its header line.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "kiln bench {}: {} cores; {}; server: {}\n\n",
            self.version, self.cores, self.durability, self.server
        );
        out.push_str("| scenario | figure | value | unit |\n|---|---|---|---|\n");
        for f in &self.figures {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                f.scenario,
                f.figure,
                format_value(f.value),
                f.unit
            ));
        }
        if !self.endpoints.is_empty() {
            out.push_str(
                "\n| scenario | endpoint | requests/s | % of /healthz | p50 ms | p95 ms \
                 | p99 ms | server CPU µs/req | bench CPU µs/req | errors |\n\
                 |---|---|---|---|---|---|---|---|---|---|\n",
            );
            let maybe = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), format_value);
            for e in &self.endpoints {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    e.scenario,
                    e.endpoint,
                    format_value(e.requests_per_s.round()),
                    maybe(e.percent_of_baseline),
                    format_value(e.p50_ms),
                    format_value(e.p95_ms),
                    format_value(e.p99_ms),
                    maybe(e.server_cpu_us),
                    maybe(e.bench_cpu_us),
                    e.errors
                ));
            }
        }
        for e in &self.errors {
            out.push_str(&format!("\nnot measured: {e}\n"));
        }
        out
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Whole numbers without decimals, small ones with two.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 || v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_table_has_a_header_and_one_row_per_figure() {
        let mut r = Report {
            cores: 2,
            durability: "SQLite WAL, synchronous=NORMAL".to_owned(),
            server: "child".to_owned(),
            version: "0.1.0",
            figures: Vec::new(),
            endpoints: Vec::new(),
            errors: Vec::new(),
        };
        r.push("submit", "throughput", 12345.6, "jobs/s");
        r.push("list", "p95", 1.234, "ms");
        let md = r.markdown();
        assert!(md.starts_with("kiln bench 0.1.0: 2 cores; SQLite WAL"));
        assert!(md.contains("| submit | throughput | 12346 | jobs/s |"));
        assert!(md.contains("| list | p95 | 1.23 | ms |"));
        assert!(
            !md.contains("| endpoint |"),
            "no endpoints table without endpoints"
        );

        r.endpoints.push(Endpoint {
            scenario: "read",
            endpoint: "GET /api/v1/me".to_owned(),
            requests: 40_000,
            errors: 0,
            requests_per_s: 10_000.4,
            p50_ms: 4.5,
            p95_ms: 9.25,
            p99_ms: 12.0,
            server_cpu_us: Some(88.5),
            bench_cpu_us: None,
            percent_of_baseline: Some(41.2),
        });
        let md = r.markdown();
        assert!(md.contains("| scenario | endpoint | requests/s | % of /healthz |"));
        assert!(
            md.contains(
                "| read | GET /api/v1/me | 10000 | 41.20 | 4.50 | 9.25 | 12 | 88.50 | – | 0 |"
            ),
            "{md}"
        );
    }
}
