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
use crate::metrics::Counted;
use crate::problem::ApiError;
use crate::state::AppState;

/// How often an idle SSE stream sends a comment, so proxies keep it open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Query of `GET /jobs/{id}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Stream until the job ends.
    #[serde(default)]
    follow: bool,
}

/// `GET /jobs/{id}/logs[?follow=true]`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/logs",
    tag = "jobs",
    operation_id = "job_logs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), LogParams, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event: the `id` of the last event received")),
    responses(
        (status = 200, description = "The log as text; with `follow=true` a live stream until the job ends: \
            Server-Sent Events (one event per line, `id` = its offset; a final `end` event with the \
            state) with `Accept: text/event-stream`, else chunked text", content(
            (String = "text/plain"),
            (kiln_api::SseEvent = "text/event-stream"),
        )),
        (status = 400, description = "A bad id, query parameter or `Last-Event-ID`"),
        (status = 404, description = "No such job (or not the caller's)"),
    )
)]
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
    let following = Counted::follower(&state);
    let pieces = follow(state, owner, id, follower, from, first).map(move |piece| {
        let _counted = &following;
        piece
    });
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
    /// SSE: one event per line, each with its end offset as id (made as the stream is
    /// polled, not all at once); then `end` or `dropped`.
    fn into_events(self) -> Box<dyn Iterator<Item = Event> + Send> {
        match self {
            Piece::Text { text, start, end } => Box::new(Lines::new(text, start, end)),
            Piece::End(state) => Box::new(std::iter::once(
                Event::default().event("end").data(state.as_str()),
            )),
            Piece::Dropped => Box::new(std::iter::once(
                Event::default().event("dropped").data(DROPPED),
            )),
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
/// after it. The text may hold the store's marker of skipped bytes (at the end of a line),
/// which stands for more (or fewer) bytes of the stream than its own length; its line makes
/// up the difference.
struct Lines {
    text: String,
    pos: usize,
    at: u64,
    end: u64,
    /// Stream bytes not in `text` (the skipped ones, less the marker), until the marker.
    gap: Option<i128>,
}

impl Lines {
    fn new(text: String, start: u64, end: u64) -> Self {
        let gap = i128::from(end) - i128::from(start) - text.len() as i128;
        Self {
            text,
            pos: 0,
            at: start,
            end,
            gap: (gap != 0).then_some(gap),
        }
    }

    /// The next line's byte range in `text` (newline excluded) and its end offset.
    fn next_line(&mut self) -> Option<(std::ops::Range<usize>, u64)> {
        let rest = self.text.get(self.pos..).filter(|r| !r.is_empty())?;
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..len];
        let content = line.strip_suffix('\n').unwrap_or(line);
        let mut advance = len as i128;
        if let Some(gap) = self.gap
            && content.ends_with(" bytes skipped …]")
        {
            advance += gap;
            self.gap = None;
        }
        self.at = u64::try_from(i128::from(self.at) + advance)
            .unwrap_or(self.at)
            .min(self.end);
        let range = self.pos..self.pos + content.len();
        self.pos += len;
        Some((range, self.at))
    }
}

impl Iterator for Lines {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let (range, at) = self.next_line()?;
        Some(Event::default().id(at.to_string()).data(&self.text[range]))
    }
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

    fn lines(text: &str, start: u64, end: u64) -> Vec<(String, u64)> {
        let mut lines = Lines::new(text.to_owned(), start, end);
        let mut out = Vec::new();
        while let Some((range, at)) = lines.next_line() {
            out.push((text[range].to_owned(), at));
        }
        out
    }

    #[test]
    fn each_line_gets_the_offset_after_it() {
        let got = lines("a\nbc\nd", 10, 16);
        assert_eq!(got, [("a".into(), 12), ("bc".into(), 15), ("d".into(), 16)]);
    }

    #[test]
    fn the_skipped_marker_stands_for_the_bytes_it_replaces() {
        let text = "head\n[… 1000 bytes skipped …]\ntail\n";
        // 5 bytes of head, 1000 skipped, 5 of tail: the stream covers 0..1010.
        let got = lines(text, 0, 1010);
        assert_eq!(got[0], ("head".into(), 5));
        assert_eq!(got[1].1, 1005);
        assert_eq!(got[2], ("tail".into(), 1010));
        // A head without a final newline carries the marker on its last line.
        let got = lines("xyz[… 10 bytes skipped …]\nabc\n", 0, 17);
        assert_eq!(got[0].1, 13);
        assert_eq!(got[1], ("abc".into(), 17));
    }
}
