//! The operators' and admins' pages: `/ops` (queues with pause and resume, nodes, and
//! charts of the last hour) and `/admin/users` (users: create, role, disable). Each page
//! sends anyone without the role back to their own jobs; the API routes behind them check
//! the role again.

use axum::response::{IntoResponse, Response};
use kiln_domain::Role;
use maud::html;

use super::Viewer;
use super::pages::{Shell, confirm_dialog, layout};

/// `GET /ops`.
pub async fn page(viewer: Viewer) -> Response {
    if let Some(away) = viewer.lacks(Role::Operator) {
        return away;
    }
    let main = html! {
        h1 { "Operations" }
        section aria-labelledby="charts-title" {
            h2 #charts-title { "The last hour on this node" }
            p.hint #series-node {}
            div.charts {
                figure.chart #chart-throughput {}
                figure.chart #chart-failures {}
                figure.chart #chart-latency {}
            }
        }
        section aria-labelledby="queues-title" {
            h2 #queues-title { "Queues" }
            div.table-wrap {
                table #queues {
                    thead {
                        tr {
                            th scope="col" { "Queue" }
                            th scope="col" { "State" }
                            th scope="col" class="num" { "Scheduled" }
                            th scope="col" class="num" { "Queued" }
                            th scope="col" class="num wide" { "Failed" }
                            th scope="col" class="num" { "Running" }
                            th scope="col" class="wide" { "Limit" }
                            th scope="col" { span.sr-only { "Action" } }
                        }
                    }
                    tbody {}
                }
            }
        }
        section aria-labelledby="nodes-title" {
            h2 #nodes-title { "Nodes" }
            div.table-wrap {
                table #nodes {
                    thead {
                        tr {
                            th scope="col" { "Node" }
                            th scope="col" class="wide" { "Host" }
                            th scope="col" class="num" { "Slots" }
                            th scope="col" class="num" { "Running" }
                            th scope="col" { "Live" }
                            th scope="col" class="wide" { "Heartbeat" }
                            th scope="col" class="wide" { "Version" }
                        }
                    }
                    tbody {}
                }
            }
        }
        p.status #status role="status" aria-live="polite" {}
        (confirm_dialog())
    };
    layout("Operations", Some(&Shell::from(&viewer)), "ops.js", main).into_response()
}

/// `GET /admin/users`.
pub async fn users(viewer: Viewer) -> Response {
    if let Some(away) = viewer.lacks(Role::Admin) {
        return away;
    }
    let roles = [Role::Client, Role::Operator, Role::Admin];
    let main = html! {
        h1 { "Users" }
        section aria-labelledby="new-user-title" {
            h2 #new-user-title { "New user" }
            form.submit #new-user {
                div.field {
                    label for="u-name" { "Username" }
                    input #u-name name="username" type="text" required maxlength="64" autocomplete="off";
                }
                div.field {
                    label for="u-password" { "Password (at least 8 characters)" }
                    input #u-password name="password" type="password" required minlength="8" maxlength="1024" autocomplete="new-password";
                }
                div.field {
                    label for="u-role" { "Role" }
                    select #u-role name="role" {
                        @for r in roles { option value=(r) { (r) } }
                    }
                }
                div.actions { button.primary type="submit" { "Create" } }
            }
            div.error #user-error role="alert" {}
        }
        section aria-labelledby="users-title" {
            h2 #users-title { "Everyone" }
            div.table-wrap {
                table #users {
                    thead {
                        tr {
                            th scope="col" { "User" }
                            th scope="col" { "Role" }
                            th scope="col" { "Enabled" }
                            th scope="col" class="wide" { "Created" }
                        }
                    }
                    tbody {}
                }
            }
        }
        p.status #status role="status" aria-live="polite" {}
        (confirm_dialog())
    };
    layout("Users", Some(&Shell::from(&viewer)), "users.js", main).into_response()
}
