//! The benchmark's results: figures (scenario, figure, value, unit) under a header that
//! names the machine and the durability mode, printed as a markdown table or as JSON.

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
            errors: Vec::new(),
        };
        r.push("submit", "throughput", 12345.6, "jobs/s");
        r.push("list", "p95", 1.234, "ms");
        let md = r.markdown();
        assert!(md.starts_with("kiln bench 0.1.0: 2 cores; SQLite WAL"));
        assert!(md.contains("| submit | throughput | 12346 | jobs/s |"));
        assert!(md.contains("| list | p95 | 1.23 | ms |"));
    }
}
