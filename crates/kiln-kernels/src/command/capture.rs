//! Reading a child's stdout or stderr into the job's log, line by line, as it is written.
//!
//! Each line is tagged with its stream (`[stdout] `, `[stderr] `). A line longer than
//! [`MAX_LINE`] bytes is cut there with a marker and the rest of it skipped, so a program
//! that writes one endless line costs bounded memory. Output that is not UTF-8 is kept
//! lossily (U+FFFD), never an error. The bytes are counted, and the last stderr lines
//! are kept for the job's error message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::LogSink;

/// The longest line kept whole (8 KiB); the rest of a longer line is skipped.
pub const MAX_LINE: usize = 8 * 1024;
/// How many of the last stderr lines the error of a failed run quotes.
const TAIL_LINES: usize = 5;
/// The longest quoted stderr line in an error.
const TAIL_LINE_BYTES: usize = 300;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "[stdout] ",
            Stream::Stderr => "[stderr] ",
        }
    }
}

/// The last stderr lines of a run, shared between the reader and the kernel.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut short: String = line.chars().take(TAIL_LINE_BYTES).collect();
        if short.len() < line.len() {
            short.push('…');
        }
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(short);
        }
    }

    /// The kept lines joined by " | ", or `None` if stderr said nothing.
    pub fn joined(&self) -> Option<String> {
        let lines = self.0.lock().ok()?;
        (!lines.is_empty()).then(|| lines.iter().cloned().collect::<Vec<_>>().join(" | "))
    }
}

/// Copies `reader` into `log` until end of file; returns the bytes read.
pub async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    log: LogSink,
    tail: Option<Tail>,
) -> u64 {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line = Vec::with_capacity(256);
    // Bytes of the current line beyond MAX_LINE, skipped.
    let mut skipped = 0_u64;
    let mut total = 0_u64;
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (chunk, ends_line) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        let kept = chunk.len().min(room);
        line.extend_from_slice(&chunk[..kept]);
        skipped += (chunk.len() - kept) as u64;
        let used = chunk.len() + usize::from(ends_line);
        total += used as u64;
        reader.consume(used);
        if ends_line {
            emit(&mut line, &mut skipped, stream, &log, tail.as_ref());
        }
    }
    if !line.is_empty() || skipped > 0 {
        emit(&mut line, &mut skipped, stream, &log, tail.as_ref());
    }
    total
}

fn emit(line: &mut Vec<u8>, skipped: &mut u64, stream: Stream, log: &LogSink, tail: Option<&Tail>) {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len() + 48);
    out.push_str(stream.tag());
    out.push_str(&text);
    if *skipped > 0 {
        out.push_str(&format!(" [… line cut: {} more bytes …]", *skipped));
    }
    if let Some(tail) = tail {
        tail.push(&text);
    }
    log.line(out);
    line.clear();
    *skipped = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], stream: Stream) -> (Vec<String>, u64, Tail) {
        let (log, mut rx) = LogSink::channel();
        let tail = Tail::default();
        let total = pump(input, stream, log, Some(tail.clone())).await;
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        (lines, total, tail)
    }

    #[tokio::test]
    async fn lines_are_tagged_with_their_stream_and_a_last_partial_line_is_kept() {
        let (lines, total, _) = lines_of(b"one\ntwo\nthree", Stream::Stdout).await;
        assert_eq!(
            lines,
            ["[stdout] one\n", "[stdout] two\n", "[stdout] three\n"]
        );
        assert_eq!(total, 13);
        let (lines, _, tail) = lines_of(b"bad\n", Stream::Stderr).await;
        assert_eq!(lines, ["[stderr] bad\n"]);
        assert_eq!(tail.joined().as_deref(), Some("bad"));
    }

    #[tokio::test]
    async fn a_long_line_is_cut_with_a_marker_and_the_next_line_is_whole() {
        let mut input = vec![b'x'; MAX_LINE + 1000];
        input.extend_from_slice(b"\nnext\n");
        let (lines, _, _) = lines_of(&input, Stream::Stdout).await;
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("[stdout] xxx"));
        assert!(
            lines[0].ends_with(" [… line cut: 1000 more bytes …]\n"),
            "{}",
            &lines[0][MAX_LINE..]
        );
        assert_eq!(
            lines[0].len(),
            "[stdout] ".len() + MAX_LINE + " [… line cut: 1000 more bytes …]\n".len()
        );
        assert_eq!(lines[1], "[stdout] next\n");
    }

    #[tokio::test]
    async fn binary_output_is_kept_lossily() {
        let (lines, _, _) = lines_of(b"a\xff\xfeb\n\x00\n", Stream::Stdout).await;
        assert_eq!(lines, ["[stdout] a\u{fffd}\u{fffd}b\n", "[stdout] \u{0}\n"]);
    }

    #[tokio::test]
    async fn the_tail_keeps_the_last_lines_only() {
        let input: String = (1..=9).map(|i| format!("e{i}\n")).collect();
        let (_, _, tail) = lines_of(input.as_bytes(), Stream::Stderr).await;
        assert_eq!(tail.joined().as_deref(), Some("e5 | e6 | e7 | e8 | e9"));
    }
}
