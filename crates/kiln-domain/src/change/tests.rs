use serde_json::json;

use super::*;
use crate::clock::from_millis;
use crate::{JobId, NewJob, Priority, QueueName, UserId};

fn at(ms: i64) -> Timestamp {
    from_millis(1_000_000 + ms)
}

/// A stored job of `job_type` in `state`, on its first attempt if it has started.
fn job(job_type: JobType, state: JobState) -> Job {
    let mut job = NewJob {
        id: JobId::new(),
        owner: UserId(1),
        job_type,
        queue: QueueName::default(),
        name: None,
        priority: Priority::default(),
        payload: json!({}),
        state: JobState::Queued,
        run_at: at(0),
        max_attempts: 3,
        created_at: at(0),
        trace_id: None,
        parent_span_id: None,
    }
    .into_job();
    job.state = state;
    if state != JobState::Queued && state != JobState::Scheduled {
        job.attempts = 1;
        job.started_at = Some(at(1));
    }
    if state == JobState::Running {
        job.node = Some("n1".to_owned());
        job.lease_expires_at = Some(at(30_000));
    }
    if state.is_terminal() {
        job.finished_at = Some(at(2));
    }
    job
}

fn note(node: Option<&str>, message: &str) -> Option<Note> {
    Some(Note::new(node.map(str::to_owned), message))
}

#[test]
fn cancel_of_a_waiting_job_cancels_it_at_once() {
    for state in [JobState::Scheduled, JobState::Queued, JobState::Failed] {
        let mut job = job(JobType::Echo, state);
        let change = cancel(&mut job, at(10)).unwrap();
        assert_eq!(change.step, Step::To(JobState::Cancelled));
        assert_eq!(change.note, note(None, "cancelled"));
        assert_eq!(
            (job.state, job.finished_at),
            (JobState::Cancelled, Some(at(10)))
        );
    }
}

#[test]
fn cancel_of_a_running_job_requests_it_once() {
    let mut job = job(JobType::Sleep, JobState::Running);
    let change = cancel(&mut job, at(10)).unwrap();
    assert_eq!(change.step, Step::CancelRequested);
    assert_eq!(change.note, note(Some("n1"), "cancel requested"));
    assert!(job.cancel_requested);
    assert_eq!((job.state, job.updated_at), (JobState::Running, at(10)));
    let again = cancel(&mut job, at(20)).unwrap();
    assert_eq!((again.step, again.note), (Step::CancelRequested, None));
    assert_eq!(job.updated_at, at(10), "a repeated request changes nothing");
}

#[test]
fn cancel_of_a_running_external_job_cancels_it_at_once() {
    let mut job = job(JobType::External, JobState::Running);
    let change = cancel(&mut job, at(10)).unwrap();
    assert_eq!(change.step, Step::To(JobState::Cancelled));
    assert_eq!(change.note, note(None, "cancelled"));
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.finished_at, Some(at(10)));
    assert!(!job.cancel_requested);
    assert_eq!((job.node, job.lease_expires_at), (None, None));
}

#[test]
fn cancel_of_a_terminal_job_changes_nothing() {
    for state in [JobState::Succeeded, JobState::Dead, JobState::Cancelled] {
        let before = job(JobType::Echo, state);
        let mut after = before.clone();
        let change = cancel(&mut after, at(10)).unwrap();
        assert_eq!((change.step, change.note), (Step::Unchanged, None));
        assert_eq!(after, before);
    }
}

#[test]
fn retry_gives_exactly_a_fresh_budget_counted_from_the_attempts_made() {
    let mut dead = job(JobType::Echo, JobState::Dead);
    dead.attempts = 3;
    let change = retry(&mut dead, 3, at(10)).unwrap();
    assert_eq!(change.step, Step::To(JobState::Queued));
    assert_eq!(change.note, note(None, "retry requested"));
    assert_eq!((dead.attempts, dead.max_attempts), (3, 6));
    assert_eq!((dead.run_at, dead.finished_at), (at(10), None));
    let mut failed = job(JobType::Echo, JobState::Failed);
    retry(&mut failed, 0, at(10)).unwrap();
    assert_eq!(failed.max_attempts, 2, "a queued job runs at least once");
    let mut queued = job(JobType::Echo, JobState::Queued);
    assert!(retry(&mut queued, 3, at(10)).is_err());
}

#[test]
fn release_queues_the_job_again_without_spending_its_attempt() {
    let mut running = job(JobType::Echo, JobState::Running);
    let change = release(&mut running, at(10)).unwrap();
    assert_eq!(change.step, Step::To(JobState::Queued));
    assert_eq!(change.note, note(Some("n1"), "released before it started"));
    assert_eq!((running.attempts, running.max_attempts), (1, 4));
    assert_eq!((running.run_at, running.started_at), (at(0), None));
    assert_eq!((running.node, running.lease_expires_at), (None, None));
    // A cancel requested meanwhile ends it: nothing ran.
    let mut asked = job(JobType::Echo, JobState::Running);
    asked.cancel_requested = true;
    let change = release(&mut asked, at(10)).unwrap();
    assert_eq!(change.step, Step::To(JobState::Cancelled));
    assert_eq!(change.note, note(Some("n1"), "cancelled before it started"));
    assert_eq!((asked.finished_at, asked.max_attempts), (Some(at(10)), 3));
    let mut queued = job(JobType::Echo, JobState::Queued);
    assert!(release(&mut queued, at(10)).is_err());
}

#[test]
fn defer_schedules_the_job_later_without_spending_its_attempt() {
    let mut running = job(JobType::PdfAnalyze, JobState::Running);
    let change = defer(
        &mut running,
        at(70),
        "model_unavailable: circuit open",
        at(10),
    )
    .unwrap();
    assert_eq!(change.step, Step::To(JobState::Scheduled));
    assert_eq!(
        change.note,
        note(Some("n1"), "deferred: model_unavailable: circuit open")
    );
    assert_eq!((running.attempts, running.max_attempts), (1, 4));
    assert_eq!((running.run_at, running.started_at), (at(70), None));
    assert_eq!((running.node, running.finished_at), (None, None));
    // Never earlier than now.
    let mut late = job(JobType::PdfAnalyze, JobState::Running);
    defer(&mut late, at(5), "x", at(10)).unwrap();
    assert_eq!(late.run_at, at(10));
    // A cancel requested meanwhile ends it.
    let mut asked = job(JobType::PdfAnalyze, JobState::Running);
    asked.cancel_requested = true;
    let change = defer(&mut asked, at(70), "x", at(10)).unwrap();
    assert_eq!(change.step, Step::To(JobState::Cancelled));
    assert_eq!(asked.max_attempts, 3);
    let mut queued = job(JobType::PdfAnalyze, JobState::Queued);
    assert!(defer(&mut queued, at(70), "x", at(10)).is_err());
}

#[test]
fn reports_move_only_external_jobs() {
    let report_of = |state| Report {
        state,
        result: None,
        error: None,
    };
    let mut echo = job(JobType::Echo, JobState::Queued);
    assert_eq!(
        report(&mut echo, report_of(JobState::Running), at(10)),
        Err(ReportRefused::NotExternal)
    );
    let mut ext = job(JobType::External, JobState::Queued);
    let change = report(&mut ext, report_of(JobState::Running), at(10)).unwrap();
    assert_eq!(change.note, note(None, "reported by owner"));
    assert_eq!((ext.attempts, ext.started_at), (1, Some(at(10))));
    let illegal = report(&mut ext, report_of(JobState::Scheduled), at(20));
    assert!(matches!(illegal, Err(ReportRefused::Illegal(_))));
}

#[test]
fn completion_decides_both_endings() {
    let flaky = Failure::retryable("io", "flaky");
    let failed = Outcome::Failed {
        failure: flaky.clone(),
        retry_at: Some(at(500)),
    };
    let done = Completion::decide(failed, at(10)).unwrap();
    assert_eq!(done.settled.state, JobState::Failed);
    assert_eq!(done.settled.run_at, Some(at(500)));
    assert_eq!(done.settled.finished_at, None);
    assert_eq!(done.settled.message, "io: flaky");
    let pending = done.ending(true);
    assert_eq!(pending.state, JobState::Cancelled);
    assert_eq!((pending.run_at, pending.finished_at), (None, Some(at(10))));
    assert_eq!(pending.message, "cancelled after io: flaky");
    assert_eq!(done.error, Some(flaky));

    let dead = Outcome::Failed {
        failure: Failure::permanent("bad", "no"),
        retry_at: None,
    };
    let done = Completion::decide(dead, at(10)).unwrap();
    assert_eq!(done.ending(true), done.ending(false));
    assert_eq!(done.settled.state, JobState::Dead);

    let done = Completion::decide(Outcome::Succeeded(json!(1)), at(10)).unwrap();
    assert_eq!(done.ending(true).state, JobState::Succeeded);
    assert_eq!((done.result, done.progress), (Some(json!(1)), Some(1.0)));

    let done = Completion::decide(Outcome::Cancelled, at(10)).unwrap();
    assert_eq!(done.settled.state, JobState::Cancelled);
    assert_eq!(done.settled.finished_at, Some(at(10)));
}

#[test]
fn progress_is_clamped_and_nan_is_zero() {
    assert_eq!(clamp_progress(f32::NAN), 0.0);
    assert_eq!(clamp_progress(-1.0), 0.0);
    assert_eq!(clamp_progress(0.25), 0.25);
    assert_eq!(clamp_progress(7.0), 1.0);
}

#[test]
fn a_report_loop_stops_at_the_attempt_cap() {
    let mut j = job(JobType::External, JobState::Queued);
    let report = |state| Report {
        state,
        result: None,
        error: None,
    };
    for _ in 0..MAX_REPORTED_ATTEMPTS {
        report_into(&mut j, report(JobState::Running));
        report_into(&mut j, report(JobState::Failed));
        report_into(&mut j, report(JobState::Queued));
    }
    assert_eq!(j.attempts, MAX_REPORTED_ATTEMPTS);
    let refused = super::report(&mut j, report(JobState::Running), at(5));
    assert!(
        matches!(refused, Err(ReportRefused::TooManyAttempts)),
        "{refused:?}"
    );
    assert_eq!(j.state, JobState::Queued, "nothing changed");
    // It can still end.
    super::report(&mut j, report(JobState::Cancelled), at(6)).unwrap();
}

fn report_into(j: &mut Job, r: Report) {
    super::report(j, r, at(3)).unwrap();
}
