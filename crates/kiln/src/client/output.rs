//! What the client commands print: tables and readable lines for people, JSON for scripts
//! (`--json`: one document, or JSON Lines for a stream; nothing else on stdout). Colour only
//! on a terminal, and never with `NO_COLOR` set.

use std::io::{IsTerminal, Write};

use comfy_table::{Table, presets};
use serde_json::Value;

/// How a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Machine output.
    pub json: bool,
    /// Colour on stdout.
    pub colour: bool,
    /// stdout is a terminal (redraws, progress bars).
    pub tty: bool,
}

impl Out {
    /// From `--json` and the environment.
    pub fn new(json: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        Self {
            json,
            colour: colour(tty),
            tty,
        }
    }

    /// Prints text and a newline; `Err` when stdout is gone (a closed pipe), so streams
    /// can stop.
    pub fn line(&self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()
    }

    /// Prints one JSON document (pretty) or, in a stream, one JSON line.
    pub fn json(&self, value: &Value, stream: bool) -> std::io::Result<()> {
        let text = if stream {
            value.to_string()
        } else {
            serde_json::to_string_pretty(value).unwrap_or_default()
        };
        self.line(&text)
    }

    /// A job state, coloured by what it means.
    pub fn state(&self, state: &str) -> String {
        if !self.colour {
            return state.to_owned();
        }
        let code = match state {
            "succeeded" => "32",
            "dead" | "failed" => "31",
            "cancelled" => "90",
            "running" => "36",
            _ => "33",
        };
        format!("\x1b[{code}m{state}\x1b[0m")
    }
}

/// A table with `headers` and `rows`, columns padded, no borders.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    // The preset pads each cell with a space on both sides; trim the lines' ends.
    table
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of a JSON field: strings bare, `null` as `-`, others as JSON.
pub fn field(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A timestamp shortened for a table: `2026-12-05 16:20:13`.
pub fn when(value: &Value) -> String {
    match value.as_str() {
        Some(ts) if ts.len() >= 19 => ts[..19].replace('T', " "),
        _ => field(value),
    }
}

/// Whether to colour a stream that `is_terminal` or not: only a terminal, and never with
/// `NO_COLOR` set (to anything but the empty string) or `TERM=dumb`. The server's log and
/// the client's output follow the same rule.
pub fn colour(is_terminal: bool) -> bool {
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var("TERM").is_ok_and(|t| t == "dumb");
    is_terminal && !no_colour
}

/// `error: …` on stderr, red on a terminal.
pub fn error(message: &str) {
    let colour = colour(std::io::stderr().is_terminal());
    let mut stderr = std::io::stderr().lock();
    let _ = if colour {
        writeln!(stderr, "\x1b[31merror:\x1b[0m {message}")
    } else {
        writeln!(stderr, "error: {message}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lines_up_its_columns() {
        let text = table(
            &["id", "state"],
            vec![
                vec!["a".into(), "queued".into()],
                vec!["bbbb".into(), "dead".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("ID") && lines[0].contains("STATE"),
            "{text}"
        );
        let at = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][at..at + 6], "queued", "{text}");
        assert_eq!(&lines[2][at..at + 4], "dead", "{text}");
    }

    #[test]
    fn fields_and_times_read_plainly() {
        assert_eq!(field(&Value::Null), "-");
        assert_eq!(field(&serde_json::json!("x")), "x");
        assert_eq!(field(&serde_json::json!(3)), "3");
        assert_eq!(
            when(&serde_json::json!("2026-12-05T16:20:13.123Z")),
            "2026-12-05 16:20:13"
        );
    }
}
