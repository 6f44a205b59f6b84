//! `GET /jobs/{id}/logs`: the log as text, or with `?follow=true` a live stream of it.
//!
//! A followed log is sent from the start (or from `Last-Event-ID`), then each new line as
//! the worker writes it, and the stream ends once the job is terminal. With
//! `Accept: text/event-stream` it is Server-Sent Events, one event per line whose `id` is
//! the line's end offset in the log stream, so a reconnecting client resumes with
//! `Last-Event-ID`; a final `end` event carries the job's state. Otherwise it is chunked
//! `text/plain`. A follower too slow to keep up gets a `dropped` event (or line) and its
//! stream ends: it never slows the job.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};
use kiln_domain::{JobId, JobState, UserId};
use kiln_store::LogRead;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::CurrentUser;
use crate::extract::{Path, Query};
use crate::follow::{Chunk, Follower};
use crate::problem::ApiError;
use crate::state::AppState;

/// How often an idle SSE stream sends a comment, so proxies keep it open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Query of `GET /jobs/{id}/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Stream until the job ends.
    #[serde(default)]
    follow: bool,
}

/// `GET /jobs/{id}/logs[?follow=true]`.
pub async fn logs(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    Query(params): Query<LogParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let owner = Some(me.user.id);
    if !params.follow {
        let text = state.store().log_get(owner, id).await?;
        return Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let from = last_event_id(&headers)?.unwrap_or(0);
    let follower = state.log_hub().follow(id);
    let first = state.store().log_read(owner, id, from).await?;
    let pieces = follow(state, owner, id, follower, from, first);
    if wants_sse(&headers) {
        let events = pieces.flat_map(|piece| stream::iter(piece.into_events()));
        let sse = Sse::new(events.map(Ok::<_, Infallible>))
            .keep_alive(KeepAlive::new().interval(HEARTBEAT));
        return Ok(sse.into_response());
    }
    let bytes =
        pieces.filter_map(|piece| async move { piece.into_text().map(Ok::<_, Infallible>) });
    Ok((
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(bytes),
    )
        .into_response())
}

/// Whether the client asked for Server-Sent Events.
pub fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The `Last-Event-ID` offset to resume from; 400 if it is not one of ours.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be an id this stream sent"))
}

/// What a followed log sends.
enum Piece {
    /// Log text read from `start`; it ends at offset `end`.
    Text { text: String, start: u64, end: u64 },
    /// The job is terminal: nothing more will come.
    End(JobState),
    /// The follower fell behind and is dropped.
    Dropped,
}

impl Piece {
    /// SSE: one event per line, each with its end offset as id; then `end` or `dropped`.
    fn into_events(self) -> Vec<Event> {
        match self {
            Piece::Text { text, start, end } => lines_with_offsets(&text, start, end)
                .map(|(line, at)| Event::default().id(at.to_string()).data(line))
                .collect(),
            Piece::End(state) => vec![Event::default().event("end").data(state.as_str())],
            Piece::Dropped => vec![Event::default().event("dropped").data(DROPPED)],
        }
    }

    fn into_text(self) -> Option<Bytes> {
        match self {
            Piece::Text { text, .. } => Some(Bytes::from(text)),
            Piece::End(_) => None,
            Piece::Dropped => Some(Bytes::from(format!("[… {DROPPED} …]\n"))),
        }
    }
}

const DROPPED: &str = "this follower fell too far behind and was dropped; reconnect to resume";

/// The lines of `text`, read from log offset `start` up to `end`, each with the offset
/// after it. The text may hold the store's one-line marker of skipped bytes, which stands
/// for more (or fewer) bytes of the stream than its own length; it is the line that makes
/// up the difference.
fn lines_with_offsets(text: &str, start: u64, end: u64) -> impl Iterator<Item = (&str, u64)> {
    let gap = i128::from(end) - i128::from(start) - text.len() as i128;
    let mut at = start;
    let mut gap_left = gap != 0;
    text.split_inclusive('\n').map(move |line| {
        let mut advance = line.len() as i128;
        if gap_left && line.starts_with("[… ") && line.contains(" bytes skipped …]") {
            advance += gap;
            gap_left = false;
        }
        at = u64::try_from(i128::from(at) + advance).unwrap_or(at);
        (line.strip_suffix('\n').unwrap_or(line), at.min(end))
    })
}

/// The stream of a followed log: what `first` holds, then the job's live chunks.
fn follow(
    state: AppState,
    owner: Option<UserId>,
    id: JobId,
    follower: Follower,
    from: u64,
    first: LogRead,
) -> impl Stream<Item = Piece> + Send + 'static {
    let mut f = Following {
        state,
        owner,
        id,
        follower,
        offset: from,
        pending: VecDeque::new(),
        done: false,
    };
    f.take(first);
    stream::unfold(f, |mut f| async move {
        loop {
            if let Some(piece) = f.pending.pop_front() {
                return Some((piece, f));
            }
            if f.done {
                return None;
            }
            f.next().await;
        }
    })
}

struct Following {
    state: AppState,
    owner: Option<UserId>,
    id: JobId,
    follower: Follower,
    offset: u64,
    pending: VecDeque<Piece>,
    done: bool,
}

impl Following {
    /// Queues what a read from the store returned; a terminal job ends the stream.
    fn take(&mut self, read: LogRead) {
        if !read.text.is_empty() {
            self.pending.push_back(Piece::Text {
                text: read.text,
                start: self.offset,
                end: read.end,
            });
        }
        self.offset = self.offset.max(read.end);
        if read.state.is_terminal() {
            self.pending.push_back(Piece::End(read.state));
            self.done = true;
        }
    }

    /// Waits for the next chunk and queues what it brings.
    async fn next(&mut self) {
        let chunk = tokio::select! {
            chunk = self.follower.recv() => chunk,
            () = self.state.shutdown().cancelled() => Err(RecvError::Closed),
        };
        match chunk {
            Ok(Chunk::Text { end, .. }) if end <= self.offset => {}
            Ok(Chunk::Text { start, end, text }) if start == self.offset => {
                self.pending.push_back(Piece::Text {
                    text: text.to_string(),
                    start,
                    end,
                });
                self.offset = end;
            }
            // A gap, text from another node, or the job's end: the store has it all.
            Ok(Chunk::Text { .. } | Chunk::Moved | Chunk::Ended) => self.reread().await,
            Err(RecvError::Lagged(_)) => {
                self.pending.push_back(Piece::Dropped);
                self.done = true;
            }
            Err(RecvError::Closed) => self.done = true,
        }
    }

    async fn reread(&mut self) {
        match self
            .state
            .store()
            .log_read(self.owner, self.id, self.offset)
            .await
        {
            Ok(read) => self.take(read),
            // Deleted meanwhile, or the store failed: the stream ends.
            Err(e) => {
                tracing::debug!(job_id = %self.id, error = %e, "log follower stops");
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_gets_the_offset_after_it() {
        let got: Vec<_> = lines_with_offsets("a\nbc\nd", 10, 16).collect();
        assert_eq!(got, [("a", 12), ("bc", 15), ("d", 16)]);
    }

    #[test]
    fn the_skipped_marker_stands_for_the_bytes_it_replaces() {
        let text = "head\n[… 1000 bytes skipped …]\ntail\n";
        // 5 bytes of head, 1000 skipped, 5 of tail: the stream covers 0..1010.
        let got: Vec<_> = lines_with_offsets(text, 0, 1010).collect();
        assert_eq!(got[0], ("head", 5));
        assert_eq!(got[1].1, 1005);
        assert_eq!(got[2], ("tail", 1010));
    }
}
