//! Factories: valid domain values in one line.

use kiln_domain::job::Submission;
use kiln_domain::job_type::Catalogue;
use kiln_domain::{NewJob, Role, Timestamp, UserId};
use serde_json::Value;

/// A valid new job of `job_type` with `payload`, owned by `owner`, submitted at `now`.
pub fn new_job(owner: UserId, job_type: &str, payload: Value, now: Timestamp) -> NewJob {
    let sub = Submission {
        job_type: job_type.to_owned(),
        payload,
        ..Submission::default()
    };
    NewJob::parse(sub, owner, Role::Admin, &Catalogue::default(), now).expect("a valid test job")
}
