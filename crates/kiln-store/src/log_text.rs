//! Bounded job logs, the same on every backend: what a `job_logs` row keeps of a job's log,
//! how an append that overflows the limit changes it, and how a read from a byte offset
//! shows it. The backends only move rows; every rule about the text lives here.
//!
//! # What a row keeps
//! While the whole log fits in the limit L, its text is all of it. At the first overflow
//! the head is fixed for ever: the log's first bytes up to L/2, cut just after the last
//! line end within them ([`head_len`]). From then on the tail keeps the newest bytes that
//! fit beside the head, cut at a line start ([`cut_point`]), and the bytes between head and
//! tail are counted as skipped. A row has `text` (head then tail), `head_bytes` and
//! `dropped` (the skipped bytes). A row written before heads existed has `head_bytes` 0:
//! its whole text is tail, which reads as it always did (marker, then tail).
//!
//! # Offsets
//! Every byte ever appended has an offset in the job's log stream, whose length is
//! `head + skipped + tail` (= `text.len() + dropped`): the head holds `[0, head)`, the
//! tail the newest `[total − tail, total)`. A read from an offset shows the [`marker`]
//! line wherever it crosses or starts in the skipped gap.

use kiln_domain::JobState;

use crate::model::LogRead;

/// A job's log as its `job_logs` row keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    /// The head followed by the tail.
    text: String,
    /// How many bytes of `text` are the head (a character boundary of `text`).
    head: usize,
    /// Bytes skipped between the head and the tail.
    skipped: u64,
}

impl Kept {
    /// A row's `text`, `head_bytes` and `dropped`. A head that is not a character boundary
    /// of the text (a row written by something else) reads as no head rather than failing.
    pub fn from_row(text: String, head_bytes: i64, dropped: i64) -> Self {
        let head = usize::try_from(head_bytes)
            .ok()
            .filter(|&h| text.is_char_boundary(h))
            .unwrap_or(0);
        let skipped = u64::try_from(dropped).unwrap_or(0);
        Self {
            text,
            head,
            skipped,
        }
    }

    /// The `text` column: the head, then the tail.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `bytes` column: the length of [`Kept::text`].
    pub fn bytes(&self) -> i64 {
        to_i64(self.text.len() as u64)
    }

    /// The `head_bytes` column.
    pub fn head_bytes(&self) -> i64 {
        to_i64(self.head as u64)
    }

    /// The `dropped` column: the bytes skipped between head and tail.
    pub fn dropped(&self) -> i64 {
        to_i64(self.skipped)
    }

    /// The end offset of the log: every byte ever appended.
    pub fn total(&self) -> u64 {
        (self.text.len() as u64).saturating_add(self.skipped)
    }

    /// Appends `added`, then, past `limit` bytes, fixes the head (at the first overflow
    /// only) and cuts the tail down to the room the head leaves.
    pub fn append(&mut self, added: &str, limit: usize) {
        self.text.push_str(added);
        if self.text.len() <= limit {
            return;
        }
        // Nothing skipped yet means the log never overflowed: its start is all here.
        if self.skipped == 0 {
            self.head = head_len(&self.text, limit / 2);
        }
        let room = limit.saturating_sub(self.head);
        let cut = cut_point(self.text.get(self.head..).unwrap_or_default(), room);
        self.text.drain(self.head..self.head + cut);
        self.skipped = self.skipped.saturating_add(cut as u64);
    }

    /// The log from offset `from` to its end, with `state` (the job's, read with the row).
    pub fn read(&self, from: u64, state: JobState) -> LogRead {
        LogRead {
            text: self.text_from(from),
            end: self.total(),
            state,
        }
    }

    /// The text from offset `from`: the rest of the head, the marker with the skipped bytes
    /// at or after `from`, the tail. A `from` inside a character starts at the next one.
    fn text_from(&self, from: u64) -> String {
        let (head, tail) = self.text.split_at(self.head);
        let gap_end = (self.head as u64).saturating_add(self.skipped);
        if from < self.head as u64 {
            let mut text = suffix(head, from).to_owned();
            if self.skipped > 0 {
                text.push_str(&marker(self.skipped));
            }
            text.push_str(tail);
            text
        } else if from < gap_end {
            marker(gap_end - from) + tail
        } else {
            suffix(tail, from - gap_end).to_owned()
        }
    }
}

/// The line shown where `skipped` bytes of the log are not kept.
pub(crate) fn marker(skipped: u64) -> String {
    format!("[… {skipped} bytes skipped …]\n")
}

/// `text` from byte `from` on, moved forward to a character boundary; empty past the end.
fn suffix(text: &str, from: u64) -> &str {
    let mut start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default()
}

/// The length of the head of `text` at most `max` bytes long: through the last '\n' within
/// those bytes, else (no line ends there) up to the last character boundary that fits.
pub(crate) fn head_len(text: &str, max: usize) -> usize {
    let max = max.min(text.len());
    let within = text.as_bytes().get(..max).unwrap_or_default();
    match within.iter().rposition(|&b| b == b'\n') {
        Some(pos) => pos + 1,
        None => (0..=max)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0),
    }
}

/// How many bytes to drop from the front of `text` so at most `limit` remain: through the
/// end of a line when possible, else (a single line longer than the limit) at the first
/// character boundary that is far enough.
pub(crate) fn cut_point(text: &str, limit: usize) -> usize {
    let Some(min_cut) = text.len().checked_sub(limit).filter(|&c| c > 0) else {
        return 0;
    };
    // Cutting right after a '\n' at or past `min_cut - 1` drops whole lines. '\n' never
    // occurs inside a multi-byte character, so that is also a character boundary.
    let at_line = text.as_bytes()[min_cut - 1..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|pos| min_cut + pos)
        .filter(|&cut| cut < text.len());
    at_line.unwrap_or_else(|| {
        (min_cut..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len())
    })
}

/// A byte count as an `INTEGER`/`bigint` column, saturating.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_within_the_limit_is_kept_whole() {
        assert_eq!(cut_point("abc\ndef\n", 8), 0);
        assert_eq!(cut_point("", 0), 0);
    }

    #[test]
    fn overflow_drops_whole_old_lines() {
        let text = "one\ntwo\nthree\n";
        // 14 bytes, limit 10: at least 4 must go, and "one\n" is exactly 4.
        assert_eq!(cut_point(text, 10), 4);
        // Limit 9: at least 5 must go, so the whole of "two\n" goes too.
        assert_eq!(&text[cut_point(text, 9)..], "three\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_inside_at_a_char_boundary() {
        let text = "ééééé"; // 10 bytes, no newline
        let cut = cut_point(text, 5);
        assert_eq!(cut, 6);
        assert_eq!(&text[cut..], "éé");
        // The newest line alone is too long: keep its tail rather than nothing.
        let text = "old\nxxxxxxxxxx\n";
        assert_eq!(&text[cut_point(text, 5)..], "xxxx\n");
    }

    #[test]
    fn the_head_ends_after_its_last_line_or_at_a_char_boundary() {
        assert_eq!(head_len("ab\ncd\nef", 6), 6);
        assert_eq!(head_len("ab\ncd\nef", 5), 3);
        assert_eq!(head_len("ééé", 5), 4);
        assert_eq!(head_len("abc", 10), 3);
        assert_eq!(head_len("abc", 0), 0);
    }

    #[test]
    fn the_first_overflow_fixes_the_head_and_later_ones_move_the_tail() {
        let mut kept = Kept::default();
        kept.append("one\ntwo\n", 16);
        assert_eq!((kept.text(), kept.total()), ("one\ntwo\n", 8));
        kept.append("three\nfour\n", 16);
        // Head "one\ntwo\n" (8 = 16 / 2); the tail's room is 8: "four\n".
        assert_eq!(kept.text(), "one\ntwo\nfour\n");
        assert_eq!(
            (kept.head_bytes(), kept.dropped(), kept.total()),
            (8, 6, 19)
        );
        kept.append("five\nsix\n", 16);
        assert_eq!(kept.text(), "one\ntwo\nsix\n");
        assert_eq!(
            (kept.head_bytes(), kept.dropped(), kept.total()),
            (8, 16, 28)
        );
        assert_eq!(
            kept.read(0, JobState::Running).text,
            "one\ntwo\n[… 16 bytes skipped …]\nsix\n"
        );
    }

    #[test]
    fn reads_from_each_part_of_the_stream() {
        // Stream: "one\ntwo\n" [0, 8), 16 skipped [8, 24), "six\n" [24, 28).
        let kept = Kept::from_row("one\ntwo\nsix\n".to_owned(), 8, 16);
        let read = |from| kept.read(from, JobState::Succeeded).text;
        assert_eq!(read(4), "two\n[… 16 bytes skipped …]\nsix\n");
        assert_eq!(read(8), "[… 16 bytes skipped …]\nsix\n");
        assert_eq!(read(20), "[… 4 bytes skipped …]\nsix\n");
        assert_eq!(read(24), "six\n");
        assert_eq!(read(26), "x\n");
        assert_eq!(read(28), "");
        assert_eq!(read(u64::MAX), "");
        assert_eq!(kept.read(28, JobState::Succeeded).end, 28);
    }

    #[test]
    fn rows_from_before_heads_read_as_marker_and_tail() {
        let kept = Kept::from_row("tail\n".to_owned(), 0, 7);
        assert_eq!(
            kept.read(0, JobState::Queued).text,
            "[… 7 bytes skipped …]\ntail\n"
        );
        // An overflow keeps them headless: their start is long gone.
        let mut kept = kept;
        kept.append("more\n", 6);
        assert_eq!(
            (kept.text(), kept.head_bytes(), kept.dropped()),
            ("more\n", 0, 12)
        );
    }

    #[test]
    fn offsets_inside_a_character_move_forward_and_bad_heads_are_ignored() {
        let kept = Kept::from_row("éé".to_owned(), 0, 0);
        assert_eq!(kept.read(1, JobState::Queued).text, "é");
        assert_eq!(kept.read(3, JobState::Queued).text, "");
        let odd = Kept::from_row("éé".to_owned(), 1, 3);
        assert_eq!(odd.head_bytes(), 0);
        let beyond = Kept::from_row("ab".to_owned(), 9, 0);
        assert_eq!(beyond.read(0, JobState::Queued).text, "ab");
    }
}
