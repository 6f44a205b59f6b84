//! `GET /submit`: a form for a new job. The type's payload fields are built in the page by
//! `submit.js` from the type's JSON Schema (`GET /api/v1/job-types`), so a new type or a
//! changed bound needs no change here.

use axum::extract::State;
use axum::response::Html;
use maud::html;

use super::Viewer;
use super::pages::{Shell, layout};
use crate::state::AppState;

/// `GET /submit`.
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Html<String> {
    let role = viewer.me.user.role;
    let types: Vec<_> = state
        .catalogue()
        .iter()
        .filter(|t| t.min_role <= role)
        .collect();
    let main = html! {
        h1 { "Submit a job" }
        form.submit #submit {
            div.field {
                label for="type" { "Type" }
                select #type name="type" aria-describedby="type-description" {
                    @for t in &types { option value=(t.name) { (t.name) } }
                }
                p.hint #type-description {}
            }
            fieldset #payload {
                legend { "Payload" }
                div #payload-fields {}
            }
            details.options {
                summary { "Queue, priority, name and timing" }
                div.field {
                    label for="o-name" { "Name" }
                    input #o-name name="name" type="text" maxlength="200";
                }
                div.field {
                    label for="o-queue" { "Queue" }
                    input #o-queue name="queue" type="text" maxlength="64" placeholder="default";
                }
                div.field {
                    label for="o-priority" { "Priority (−100 to 100; higher runs first)" }
                    input #o-priority name="priority" type="number" min="-100" max="100" step="1";
                }
                div.field {
                    label for="o-delay" { "Delay in milliseconds" }
                    input #o-delay name="delay_ms" type="number" min="0" step="1";
                }
            }
            div.actions { button.primary type="submit" { "Submit" } }
        }
        div.error #submit-error role="alert" {}
        p.status #status role="status" aria-live="polite" {}
    };
    layout("Submit", Some(&Shell::from(&viewer)), "submit.js", main)
}
