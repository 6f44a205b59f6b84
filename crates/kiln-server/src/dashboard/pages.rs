//! The page shells: the layout every page shares, and each page's frame. The data inside
//! (rows, counts, timelines) is drawn by the page's script from `/api/v1`.

use kiln_domain::Role;
use maud::{DOCTYPE, Markup, html};

use super::{Viewer, assets};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};

/// The signed-in part of a page: who it is for and the CSRF token its scripts send.
pub struct Shell<'a> {
    pub username: &'a str,
    pub role: Role,
    pub csrf: &'a str,
}

impl<'a> From<&'a Viewer> for Shell<'a> {
    fn from(v: &'a Viewer) -> Self {
        Self {
            username: &v.me.user.username,
            role: v.me.user.role,
            csrf: &v.csrf,
        }
    }
}

/// A whole page: `title`, the navigation for `shell`'s user (none when signed out), the
/// shared script and stylesheet and the page's own `script`, and `main`'s content.
pub fn layout(title: &str, shell: Option<&Shell<'_>>, script: &str, main: Markup) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(shell) = shell {
                    meta name="csrf-token" content=(shell.csrf);
                }
                title { (title) " · Kiln" }
                link rel="icon" type="image/svg+xml" href=(assets::url("icon.svg"));
                link rel="stylesheet" href=(assets::url("app.css"));
                script src=(assets::url("app.js")) defer {}
                script src=(assets::url(script)) defer {}
            }
            body data-role=[shell.map(|s| s.role.to_string())] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Kiln" }
                    @if let Some(shell) = shell {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/" { "My jobs" } }
                                li { a href="/submit" { "Submit" } }
                                @if shell.role >= Role::Operator {
                                    li { a href="/ops/jobs" { "All jobs" } }
                                    li { a href="/ops" { "Operations" } }
                                }
                                @if shell.role >= Role::Admin {
                                    li { a href="/admin/users" { "Users" } }
                                }
                            }
                        }
                        div.who {
                            span { (shell.username) " (" (shell.role) ")" }
                            button #logout type="button" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (main) }
            }
        }
    };
    Html(page.into_string())
}

/// `GET /`: the signed-in user's jobs.
pub async fn jobs(State(state): State<AppState>, viewer: Viewer) -> Html<String> {
    job_list(&state, &viewer, false)
}

/// `GET /ops/jobs`: every user's jobs (operators and admins; others go to their own).
pub async fn all_jobs(State(state): State<AppState>, viewer: Viewer) -> Response {
    if let Some(away) = viewer.lacks(Role::Operator) {
        return away;
    }
    job_list(&state, &viewer, true).into_response()
}

/// The jobs page: the viewer's own jobs, or (`all`) everyone's through the admin routes.
fn job_list(state: &AppState, viewer: &Viewer, all: bool) -> Html<String> {
    let title = if all { "All jobs" } else { "My jobs" };
    let types: Vec<String> = state
        .catalogue()
        .iter()
        .map(|t| t.name.to_owned())
        .collect();
    let states = kiln_domain::JobState::ALL;
    let main = html! {
        h1 { (title) }
        section aria-labelledby="counts-title" {
            h2.sr-only #counts-title { "Jobs per state" }
            ul.counts #counts {}
        }
        form.filters #filters {
            div {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" { "Any" }
                    @for s in states { option value=(s.as_str()) { (s.as_str()) } }
                }
            }
            div {
                label for="f-type" { "Type" }
                select #f-type name="type" {
                    option value="" { "Any" }
                    @for t in &types { option value=(t) { (t) } }
                }
            }
            div {
                label for="f-queue" { "Queue" }
                input #f-queue name="queue" type="text" maxlength="64";
            }
            @if all {
                div {
                    label for="f-owner" { "Owner (name or id)" }
                    input #f-owner name="owner" type="text" maxlength="64";
                }
            }
            div {
                label for="f-name" { "Name" }
                input #f-name name="name" type="text" maxlength="200";
            }
            div {
                label for="f-after" { "Created after" }
                input #f-after name="created_after" type="datetime-local";
            }
            div {
                label for="f-before" { "Created before" }
                input #f-before name="created_before" type="datetime-local";
            }
            div {
                label for="f-sort" { "Sort" }
                select #f-sort name="sort" {
                    option value="-created_at" { "Newest first" }
                    option value="created_at" { "Oldest first" }
                    option value="-priority" { "Highest priority" }
                    option value="priority" { "Lowest priority" }
                }
            }
            div.actions { button type="submit" { "Apply" } }
        }
        div.bulk role="group" aria-label="Selected jobs" {
            span #selected aria-live="polite" { "0 selected" }
            button #bulk-cancel type="button" disabled { "Cancel" }
            button #bulk-retry type="button" disabled { "Retry" }
            button.danger #bulk-delete type="button" disabled { "Delete" }
        }
        div.table-wrap {
            table #jobs data-scope=(if all { "all" } else { "mine" }) {
                caption.sr-only { (title) }
                thead {
                    tr {
                        th scope="col" {
                            input #select-all type="checkbox" aria-label="Select every job shown";
                        }
                        th scope="col" { "Job" }
                        th scope="col" { "Type" }
                        th scope="col" { "State" }
                        th scope="col" class="wide" { "Queue" }
                        th scope="col" class="wide" { "Progress" }
                        th scope="col" { "Created" }
                    }
                }
                tbody {}
            }
        }
        p #empty hidden { "No jobs match these filters." }
        p { button #more type="button" hidden { "Show more" } }
        p.status #status role="status" aria-live="polite" {}
        (confirm_dialog())
    };
    layout(title, Some(&Shell::from(viewer)), "jobs.js", main)
}

/// `GET /jobs/{id}`: one job. The page is the same for any id; its script asks the API,
/// which answers only the job's owner (an operator sees anyone's through the admin routes).
pub async fn job(viewer: Viewer, Path(id): Path<String>) -> Html<String> {
    let main = html! {
        div #job data-job-id=(id) {
            h1 #job-title { "Job" }
            p.error #job-missing hidden role="alert" {
                "No such job: it does not exist, or it is not yours."
            }
            div #job-body hidden {
                div.actions role="group" aria-label="Job actions" {
                    button #job-cancel type="button" hidden { "Cancel" }
                    button #job-retry type="button" hidden { "Retry" }
                    button.danger #job-delete type="button" hidden { "Delete" }
                }
                p {
                    span #job-state {}
                    " "
                    label.inline for="job-progress" { "Progress" }
                    " "
                    progress #job-progress max="100" value="0" {}
                    " "
                    span #job-progress-text {}
                }
                section aria-labelledby="facts-title" {
                    h2 #facts-title { "Details" }
                    dl.facts #job-facts {}
                }
                section #job-error-section hidden aria-labelledby="error-title" {
                    h2 #error-title { "Error" }
                    pre #job-error {}
                }
                section aria-labelledby="payload-title" {
                    h2 #payload-title { "Payload" }
                    pre #job-payload tabindex="0" {}
                }
                section #job-result-section hidden aria-labelledby="result-title" {
                    h2 #result-title { "Result" }
                    pre #job-result tabindex="0" {}
                    p #job-result-more hidden {
                        "Shortened here: " a #job-result-link { "the whole result" }
                    }
                }
                section #job-artifacts-section hidden aria-labelledby="artifacts-title" {
                    h2 #artifacts-title { "Artifacts" }
                    ul #job-artifacts {}
                }
                section #job-timeline-section aria-labelledby="timeline-title" {
                    h2 #timeline-title { "Timeline" }
                    ol.timeline #job-timeline {}
                }
                section #job-log-section aria-labelledby="log-title" {
                    h2 #log-title { "Log" }
                    div.actions {
                        button #log-pause type="button" aria-pressed="false" { "Pause" }
                        a.button #log-download download { "Download" }
                        span #log-status aria-live="polite" {}
                    }
                    pre.log #job-log tabindex="0" aria-label="The job's log" {}
                }
            }
        }
        p.status #status role="status" aria-live="polite" {}
        (confirm_dialog())
    };
    layout("Job", Some(&Shell::from(&viewer)), "job.js", main)
}

/// The dialog a page asks "are you sure?" with (`kiln.confirm` in `app.js`).
pub(super) fn confirm_dialog() -> Markup {
    html! {
        dialog #confirm aria-labelledby="confirm-text" {
            form method="dialog" {
                p #confirm-text {}
                div.actions {
                    button value="cancel" type="submit" { "Go back" }
                    button.danger #confirm-ok value="ok" type="submit" { "Yes" }
                }
            }
        }
    }
}
