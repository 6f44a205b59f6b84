//! `GET /events`: a Server-Sent Events stream of the state changes of the caller's jobs
//! (every job's for an operator with `?all=true`), filtered by `type`, `queue` and
//! `state`.
//!
//! Each event is `{id, type, state, attempt, at}` (`id` is the job's) with an SSE `id` that
//! is a cursor into the durable event history. A client that reconnects with
//! `Last-Event-ID` first gets every event it missed, from that history, then the live
//! ones; a stream that falls behind the live signals catches up the same way, so no event
//! is lost either way. Comments every 15 s keep an idle stream open.
//!
//! Changes made at the same moment commit (and signal) in any order, so an event may
//! arrive after a later-stamped one was sent: a live event is skipped only if this stream
//! already sent it (it remembers the last [`REMEMBERED`]) or the client's `Last-Event-ID`
//! covers it, never because an event with a later time went first, and a catch-up reads
//! the history again from [`REORDER`] before the last event sent.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};
use kiln_domain::{JobId, JobState, Role, UserId};
use kiln_store::{FeedCursor, FeedEvent, Signal};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use super::logs::HEARTBEAT;
use crate::auth::CurrentUser;
use crate::extract::Query;
use crate::list::parse_states;
use crate::metrics::Counted;
use crate::problem::ApiError;
use crate::state::AppState;

/// Events read from the history per query while catching up.
const PAGE: u32 = 500;
/// How far before the last event sent a catch-up reads the history again: longer than any
/// change takes from its timestamp to its commit.
const REORDER: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// Events a stream remembers having sent, to skip a repeat (a live signal of an event the
/// history gave, or the history read again after [`REORDER`]).
const REMEMBERED: usize = 4096;

/// Query of `GET /events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Every user's jobs (operators and admins only).
    #[serde(default)]
    all: bool,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    job_type: Option<String>,
    /// Only jobs of this queue.
    queue: Option<String>,
    /// Only these states (comma list).
    state: Option<String>,
}

/// Which events a stream sends.
#[derive(Debug, Clone)]
struct Filter {
    owner: Option<UserId>,
    job_type: Option<String>,
    queue: Option<String>,
    states: Option<Vec<JobState>>,
}

impl Filter {
    fn parse(params: EventParams, me: &CurrentUser, state: &AppState) -> Result<Self, ApiError> {
        if params.all {
            me.require(Role::Operator)?;
        }
        if let Some(name) = &params.job_type {
            state.catalogue().get_by_name(name)?;
        }
        let states = params
            .state
            .map(|list| parse_states("state", &list))
            .transpose()?;
        Ok(Self {
            owner: (!params.all).then_some(me.user.id),
            job_type: params.job_type,
            queue: params.queue,
            states,
        })
    }

    fn matches(&self, e: &FeedEvent) -> bool {
        self.owner.is_none_or(|o| o == e.owner)
            && self
                .job_type
                .as_ref()
                .is_none_or(|t| t == e.job_type.as_str())
            && self.queue.as_ref().is_none_or(|q| q == e.queue.as_str())
            && self.states.as_ref().is_none_or(|s| s.contains(&e.state))
    }
}

/// `GET /events`.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "jobs",
    operation_id = "events",
    security(("bearer" = [])),
    params(EventParams, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event: the `id` of the last event received")),
    responses(
        (status = 200, description = "Server-Sent Events: one `{id, type, state, attempt, at}` per \
            state change of the caller's jobs, live, until the client disconnects", content(
            (kiln_api::SseEvent = "text/event-stream"),
        )),
        (status = 400, description = "A bad query parameter or `Last-Event-ID`"),
        (status = 403, description = "`all=true` from a caller who is not an operator"),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    me: CurrentUser,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(params, &me, &state)?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<FeedCursor>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Last-Event-ID", "must be an id this stream sent")
                })?,
        ),
    };
    // Subscribed before the history is read, so nothing falls between the two.
    let signals = state.store().subscribe();
    // Where a stream that falls behind before sending anything catches up from: a
    // second before it started, in case an event's time is a little behind this clock.
    let floor = FeedCursor {
        at: state.now() - chrono::TimeDelta::seconds(1),
        job_id: kiln_domain::JobId(uuid::Uuid::nil()),
        seq: 0,
    };
    let following = Counted::follower(&state);
    let mut feed = Feed {
        state,
        filter,
        signals,
        cursor: resume,
        resumed: resume,
        floor,
        pending: VecDeque::new(),
        sent: Sent::default(),
    };
    feed.catch_up().await?;
    let sse = Sse::new(feed.into_stream().map(move |e| {
        let _counted = &following;
        Ok::<_, Infallible>(render(&e))
    }))
    .keep_alive(KeepAlive::new().interval(HEARTBEAT));
    Ok(sse.into_response())
}

/// The wire form of one event.
fn render(e: &FeedEvent) -> Event {
    let data = serde_json::json!({
        "id": e.job_id,
        "type": e.job_type,
        "state": e.state,
        "attempt": e.attempt,
        "at": kiln_api::ts::format(&e.at),
    });
    Event::default()
        .id(e.cursor().to_string())
        .data(data.to_string())
}

struct Feed {
    state: AppState,
    filter: Filter,
    signals: broadcast::Receiver<Signal>,
    /// The latest event sent (or resumed from).
    cursor: Option<FeedCursor>,
    /// The client's `Last-Event-ID`: it has every event up to there.
    resumed: Option<FeedCursor>,
    /// Where to catch up from while `cursor` is `None`.
    floor: FeedCursor,
    pending: VecDeque<Arc<FeedEvent>>,
    sent: Sent,
}

/// The events a stream sent lately, by job and number.
#[derive(Default)]
struct Sent {
    keys: HashSet<(JobId, i64)>,
    order: VecDeque<(JobId, i64)>,
}

impl Sent {
    fn contains(&self, e: &FeedEvent) -> bool {
        self.keys.contains(&(e.job_id, e.seq))
    }

    /// Notes `e` as sent; `false` if it was already.
    fn insert(&mut self, e: &FeedEvent) -> bool {
        let key = (e.job_id, e.seq);
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        true
    }
}

impl Feed {
    fn into_stream(self) -> impl Stream<Item = Arc<FeedEvent>> + Send + 'static {
        stream::unfold(self, |mut feed| async move {
            loop {
                if let Some(event) = feed.pending.pop_front() {
                    if !feed.sent.insert(&event) {
                        continue;
                    }
                    feed.cursor = feed.cursor.max(Some(event.cursor()));
                    return Some((event, feed));
                }
                if !feed.next().await {
                    return None;
                }
            }
        })
    }

    /// Queues the history after `cursor`, a page at a time, until it is read to the end.
    async fn catch_up(&mut self) -> Result<(), ApiError> {
        let Some(latest) = self.cursor else {
            return Ok(());
        };
        // On the client's own `Last-Event-ID`, from there; later, from a little before the
        // latest event sent (see the module docs), skipping what was sent.
        let mut after = if self.resumed == Some(latest) {
            latest
        } else {
            FeedCursor::before(latest.at - REORDER).max(self.resumed.unwrap_or(self.floor))
        };
        loop {
            let page = self
                .state
                .store()
                .event_feed(self.filter.owner, &after, PAGE)
                .await?;
            let full = page.len() == PAGE as usize;
            if let Some(last) = page.last() {
                after = last.cursor();
            }
            let new = page
                .into_iter()
                .filter(|e| self.filter.matches(e) && !self.sent.contains(e));
            self.pending.extend(new.map(Arc::new));
            if !full {
                break;
            }
        }
        self.cursor = Some(after.max(latest));
        Ok(())
    }

    /// Waits for live events; `false` when the stream must end.
    async fn next(&mut self) -> bool {
        let signal = tokio::select! {
            signal = self.signals.recv() => signal,
            () = self.state.shutdown().cancelled() => return false,
        };
        match signal {
            Ok(Signal::Changed(event)) => {
                let had = self.resumed.is_some_and(|r| event.cursor() <= r);
                if !had && !self.sent.contains(&event) && self.filter.matches(&event) {
                    self.pending.push_back(event);
                }
                true
            }
            Ok(_) => true,
            // Missed live events are in the history: read them from there.
            Err(RecvError::Lagged(_)) => {
                if self.cursor.is_none() {
                    self.cursor = Some(self.floor);
                }
                match self.catch_up().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e.detail, "event stream cannot catch up");
                        false
                    }
                }
            }
            Err(RecvError::Closed) => false,
        }
    }
}
