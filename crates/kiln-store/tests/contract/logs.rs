//! Job logs: appends and the end offsets they return, the head and tail a long log keeps
//! with the skip marker between them, and reads from any byte offset of the log stream.

use std::ops::Range;
use std::sync::Arc;

use kiln_domain::{JobId, JobState};
use kiln_store::{LogRead, Outcome, Store};
use serde_json::json;

use crate::helpers::*;

/// The line shown for `n` skipped bytes.
fn marker(n: usize) -> String {
    format!("[… {n} bytes skipped …]\n")
}

/// The job's log from `from`, as an operator reads it.
async fn read(store: &Arc<dyn Store>, id: JobId, from: u64) -> LogRead {
    store.log_read(None, id, from).await.expect("read the log")
}

/// Appends `text` and returns the end offset.
async fn append(store: &Arc<dyn Store>, id: JobId, text: &str) -> u64 {
    store
        .log_append(id, text, at(1))
        .await
        .expect("append to the log")
}

pub async fn log_append_and_get(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    assert_eq!(store.log_get(Some(alice), job.id).await.unwrap(), "");
    assert_eq!(append(&store, job.id, "").await, 0, "nothing yet");
    assert_eq!(append(&store, job.id, "one\n").await, 4);
    assert_eq!(append(&store, job.id, "").await, 4, "\"\" returns the end");
    assert_eq!(append(&store, job.id, "two\nthr").await, 11);
    assert_eq!(append(&store, job.id, "ee\n").await, 14);
    assert_eq!(
        store.log_get(Some(alice), job.id).await.unwrap(),
        "one\ntwo\nthree\n"
    );
    let whole = store.log_read(Some(alice), job.id, 0).await.unwrap();
    assert_eq!(
        whole,
        LogRead {
            text: "one\ntwo\nthree\n".to_owned(),
            end: 14,
            state: JobState::Queued,
        }
    );
    assert_eq!(read(&store, job.id, 4).await.text, "two\nthree\n");
    assert_eq!(read(&store, job.id, 11).await.text, "ee\n");
    for from in [14, 15, u64::MAX] {
        let past = read(&store, job.id, from).await;
        assert_eq!((past.text.as_str(), past.end), ("", 14), "from {from}");
    }
}

pub async fn log_keeps_its_head_and_tail_around_a_skip_marker(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    // 100 lines of 20 bytes (2,000 bytes, about twice LOG_LIMIT), appended one by one.
    let line = |i: usize| format!("line {i:04} xxxxxxxxx\n");
    let lines = |range: Range<usize>| range.map(line).collect::<String>();
    assert_eq!(line(0).len(), 20);
    for i in 0..100 {
        assert_eq!(append(&store, job.id, &line(i)).await, 20 * (i as u64 + 1));
    }
    // The head: the whole lines within LOG_LIMIT / 2 = 512 bytes (25 lines, offsets
    // [0, 500)), fixed when the log first overflowed. The tail: the newest whole lines
    // within the other 524 bytes (26 lines, [1480, 2000)). Skipped between: 980 bytes.
    assert_eq!(LOG_LIMIT, 1024);
    let (head, tail, full) = (lines(0..25), lines(74..100), lines(0..100));
    let log = store.log_get(Some(alice), job.id).await.unwrap();
    assert_eq!(log, format!("{head}{}{tail}", marker(980)));
    for (from, want) in [
        (0, log.clone()),
        (250, format!("{}{}{tail}", &full[250..500], marker(980))),
        (499, format!("\n{}{tail}", marker(980))),
        (500, format!("{}{tail}", marker(980))),
        (700, format!("{}{tail}", marker(780))),
        (1479, format!("{}{tail}", marker(1))),
        (1480, tail.clone()),
        (1490, full[1490..].to_owned()),
        (1999, "\n".to_owned()),
        (2000, String::new()),
        (5000, String::new()),
    ] {
        let got = read(&store, job.id, from).await;
        assert_eq!((got.text, got.end), (want, 2000), "from {from}");
    }
    assert_eq!(append(&store, job.id, "").await, 2000);
}

pub async fn log_read_reports_the_job_state_and_hides_other_owners_logs(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let job = echo(&store, alice, at(0)).await;
    append(&store, job.id, "started\n").await;
    let first = store.log_read(Some(alice), job.id, 0).await.unwrap();
    assert_eq!(
        (first.text.as_str(), first.end, first.state),
        ("started\n", 8, JobState::Queued)
    );
    let running = claim_one(&store, "n1", at(2)).await;
    append(&store, job.id, "working\n").await;
    let next = read(&store, job.id, first.end).await;
    assert_eq!(
        (next.text.as_str(), next.end, next.state),
        ("working\n", 16, JobState::Running)
    );
    store
        .job_complete(&lease_of(&running), Outcome::Succeeded(json!(1)), at(3))
        .await
        .unwrap();
    let last = store.log_read(Some(alice), job.id, next.end).await.unwrap();
    assert_eq!(
        (last.text.as_str(), last.end, last.state),
        ("", 16, JobState::Succeeded)
    );
    assert_not_found(store.log_read(Some(bob), job.id, 0).await);
    assert_not_found(store.log_get(Some(bob), job.id).await);
    let missing = JobId::new();
    assert_not_found(store.log_read(None, missing, 0).await);
    assert_not_found(store.log_append(missing, "", at(4)).await);
}

pub async fn a_single_huge_line_keeps_its_start_and_its_end(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    // 3,000 bytes and no line end; letters that tell every position apart.
    let huge: String = (0..3000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(append(&store, job.id, &huge).await, 3000);
    // No line end to cut at: the head is the first 512 bytes, the tail the last 512.
    let log = store.log_get(None, job.id).await.unwrap();
    assert_eq!(
        log,
        format!("{}{}{}", &huge[..512], marker(1976), &huge[2488..])
    );
    // Once a line ends, the tail starts at a line again: "end\n" alone.
    assert_eq!(append(&store, job.id, "\nend\n").await, 3005);
    let log = store.log_get(None, job.id).await.unwrap();
    assert_eq!(log, format!("{}{}end\n", &huge[..512], marker(2489)));
    assert_eq!(read(&store, job.id, 3000).await.text, marker(1) + "end\n");
    assert_eq!(read(&store, job.id, 3001).await.text, "end\n");
}

pub async fn multi_byte_text_is_cut_and_read_at_char_boundaries(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    // One line of 1,000 three-byte characters.
    assert_eq!(append(&store, job.id, &"日".repeat(1000)).await, 3000);
    // Head: the whole characters within 512 bytes (170, [0, 510)). Tail: the newest whole
    // characters within the other 514 (171, [2487, 3000)). Skipped: 1,977 bytes.
    let tail = "日".repeat(171);
    let log = store.log_get(None, job.id).await.unwrap();
    assert_eq!(log, format!("{}{}{tail}", "日".repeat(170), marker(1977)));
    // An offset inside a character starts at the next one.
    for (from, want) in [
        (1, format!("{}{}{tail}", "日".repeat(169), marker(1977))),
        (2, format!("{}{}{tail}", "日".repeat(169), marker(1977))),
        (509, format!("{}{tail}", marker(1977))),
        (2486, format!("{}{tail}", marker(1))),
        (2488, "日".repeat(170)),
        (2998, String::new()),
    ] {
        let got = read(&store, job.id, from).await;
        assert_eq!((got.text, got.end), (want, 3000), "from {from}");
    }
    // Two-byte characters with line ends: the head and the tail are whole lines.
    let other = echo(&store, alice, at(0)).await;
    let line = |i: usize| format!("{} {i:03}\n", "é".repeat(8));
    let lines = |range: Range<usize>| range.map(line).collect::<String>();
    assert_eq!(line(0).len(), 21);
    assert_eq!(append(&store, other.id, &lines(0..60)).await, 1260);
    // Head: the 24 whole lines within 512 bytes (504). Tail: the 24 newest whole lines
    // within the other 520 bytes (504). Skipped: the 12 lines between (252 bytes).
    let log = store.log_get(None, other.id).await.unwrap();
    assert_eq!(
        log,
        format!("{}{}{}", lines(0..24), marker(252), lines(36..60))
    );
}

/// Splits a bounded log into (head, skipped bytes, tail); a log without a marker is all
/// head.
fn split_marker(log: &str) -> (&str, usize, &str) {
    let Some(start) = log.find("[… ") else {
        return (log, 0, "");
    };
    let (head, rest) = log.split_at(start);
    let (line, tail) = rest.split_once('\n').expect("a whole marker line");
    let n = line
        .strip_prefix("[… ")
        .and_then(|r| r.strip_suffix(" bytes skipped …]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a malformed skip marker: {line:?}"));
    (head, n, tail)
}

/// What a read of `full` (every byte appended) from `from` shows, given the kept head
/// (`head` bytes) and the bytes skipped after it.
fn expected(full: &str, head: usize, skipped: usize, from: usize) -> String {
    let mut start = from.min(full.len());
    while !full.is_char_boundary(start) {
        start += 1;
    }
    if skipped == 0 {
        full[start..].to_owned()
    } else if from < head {
        format!(
            "{}{}{}",
            &full[start..head],
            marker(skipped),
            &full[head + skipped..]
        )
    } else if from < head + skipped {
        format!(
            "{}{}",
            marker(head + skipped - from),
            &full[head + skipped..]
        )
    } else {
        full[start..].to_owned()
    }
}

pub async fn log_keeps_a_head_and_a_tail_whatever_is_appended(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    let mut full = String::new();
    let mut fixed_head: Option<String> = None;
    // Multi-byte text, a line longer than the limit, many small lines, empty appends.
    let pieces: Vec<String> = vec![
        "é".repeat(200),
        "\nnext\n".to_owned(),
        "a\n".repeat(300),
        String::new(),
        "日本語のログ\n".repeat(40),
        "x".repeat(LOG_LIMIT + 1),
        "tail\n".to_owned(),
        "🔥".repeat(300),
        "\n".to_owned(),
    ];
    for (i, piece) in pieces.iter().enumerate() {
        full.push_str(piece);
        assert_eq!(
            append(&store, job.id, piece).await,
            full.len() as u64,
            "piece {i}"
        );
        let log = store.log_get(Some(alice), job.id).await.unwrap();
        let (head, skipped, tail) = split_marker(&log);
        assert_eq!(
            head.len() + skipped + tail.len(),
            full.len(),
            "piece {i}: marker total"
        );
        assert!(
            full.starts_with(head),
            "piece {i}: the head is the log's start"
        );
        assert!(full.ends_with(tail), "piece {i}: the tail is the log's end");
        if skipped > 0 {
            assert!(
                head.len() <= LOG_LIMIT / 2,
                "piece {i}: head of {}",
                head.len()
            );
            assert!(
                head.len() + tail.len() <= LOG_LIMIT,
                "piece {i}: kept too much"
            );
            assert!(!tail.is_empty(), "piece {i}: something recent is kept");
            let first = fixed_head.get_or_insert_with(|| head.to_owned());
            assert_eq!(first.as_str(), head, "piece {i}: the head never moves");
        }
        let end = full.len();
        let (h, gap) = (head.len(), head.len() + skipped);
        for from in [
            0,
            1,
            h.saturating_sub(1),
            h,
            (h + gap) / 2,
            gap,
            gap + 1,
            end - 1,
            end,
        ] {
            let got = read(&store, job.id, from as u64).await;
            assert_eq!(
                (got.text, got.end),
                (expected(&full, h, skipped, from), end as u64),
                "piece {i}, from {from}"
            );
        }
    }
    let log = store.log_get(None, job.id).await.unwrap();
    assert!(log.ends_with("🔥\n"), "{log:?}");
}
