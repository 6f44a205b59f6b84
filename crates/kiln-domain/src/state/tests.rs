use super::*;
use JobState::*;

/// The whole state machine (`docs/design.md`, "Lifecycle"): every (state, event) pair and
/// its expected outcome.
/// `None` means illegal.
fn expected(from: JobState, event: Event) -> Option<Step> {
    let to = |s| Some(Step::To(s));
    match (from, event) {
        (Scheduled, Event::Due) => to(Queued),
        (Scheduled, Event::Cancel) => to(Cancelled),
        (Queued, Event::Claim) => to(Running),
        (Queued, Event::Cancel) => to(Cancelled),
        (Running, Event::Succeed) => to(Succeeded),
        (Running, Event::Fail { retry: true }) => to(Failed),
        (Running, Event::Fail { retry: false }) => to(Dead),
        (Running, Event::Cancel) => Some(Step::CancelRequested),
        (Running, Event::Abort) => to(Cancelled),
        (Running, Event::Release) => to(Queued),
        (Running, Event::Defer) => to(Scheduled),
        (Failed, Event::Due) => to(Queued),
        (Failed, Event::Cancel) => to(Cancelled),
        (Failed, Event::Retry) => to(Queued),
        (Succeeded, Event::Cancel) => Some(Step::Unchanged),
        (Dead, Event::Cancel) => Some(Step::Unchanged),
        (Dead, Event::Retry) => to(Queued),
        (Cancelled, Event::Cancel) => Some(Step::Unchanged),
        _ => None,
    }
}

#[test]
fn every_state_event_pair_matches_the_spec_table() {
    let mut legal = 0;
    for from in JobState::ALL {
        for event in Event::ALL {
            let got = transition(from, event).ok();
            assert_eq!(got, expected(from, event), "{from} + {event:?}");
            legal += usize::from(got.is_some());
        }
    }
    assert_eq!(legal, 18, "the table has 18 legal pairs");
}

#[test]
fn illegal_transition_names_state_and_event() {
    let err = transition(Succeeded, Event::Retry).unwrap_err();
    assert_eq!(err.to_string(), "cannot retry a job that is succeeded");
}

#[test]
fn terminal_states_only_leave_through_retry() {
    for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
        for event in Event::ALL {
            if let Ok(Step::To(to)) = transition(from, event) {
                assert_eq!(event, Event::Retry, "{from} left by {event:?}");
                assert_eq!(to, Queued);
            }
        }
    }
}

#[test]
fn states_round_trip_through_their_names() {
    for state in JobState::ALL {
        assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, format!("\"{}\"", state.as_str()));
    }
    assert!("RUNNING".parse::<JobState>().is_err());
}

#[test]
fn future_run_at_starts_scheduled() {
    let now = crate::clock::from_millis(10_000);
    assert_eq!(
        initial_state(crate::clock::from_millis(10_001), now),
        Scheduled
    );
    assert_eq!(initial_state(now, now), Queued);
}

#[test]
fn external_reports_follow_the_state_machine() {
    assert_eq!(report(Queued, Running), Ok(Event::Claim));
    assert_eq!(report(Running, Succeeded), Ok(Event::Succeed));
    assert_eq!(report(Running, Dead), Ok(Event::Fail { retry: false }));
    assert_eq!(report(Running, Cancelled), Ok(Event::Abort));
    assert_eq!(report(Queued, Cancelled), Ok(Event::Cancel));
    assert!(report(Queued, Succeeded).is_err());
    assert!(report(Succeeded, Running).is_err());
    assert!(
        report(Succeeded, Cancelled).is_err(),
        "a no-op is not a report"
    );
}
