//! `GET /jobs` query parameters and their parsing into a store [`ListQuery`].

use chrono::DateTime;
use kiln_domain::{JobState, Timestamp, UserId};
use kiln_store::{Cursor, ListQuery, Sort};
use serde::Deserialize;

use crate::problem::ApiError;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 20;
/// Largest page.
pub const MAX_LIMIT: u32 = 100;

/// The raw query string of a job list; every field is parsed here so errors name it.
/// Unknown parameters are refused (400) so a typo (`?stat=queued`) does not silently list
/// everything.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Comma-separated states.
    pub state: Option<String>,
    /// Exact type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Exact queue.
    pub queue: Option<String>,
    /// Exact name.
    pub name: Option<String>,
    /// RFC 3339.
    pub created_after: Option<String>,
    /// RFC 3339.
    pub created_before: Option<String>,
    /// `created_at`, `-created_at` (default), `priority`, `-priority`.
    pub sort: Option<String>,
    /// 1..=100, default 20.
    pub limit: Option<String>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Only this user's jobs, by id or username: `GET /admin/jobs` only (the own list is
    /// the caller's already).
    pub owner: Option<String>,
}

/// A comma-separated list of states (`queued,running`), as the query parameter `field`
/// gives it; an unknown name is a 400 naming the field.
pub fn parse_states(field: &str, list: &str) -> Result<Vec<JobState>, ApiError> {
    list.split(',')
        .map(|s| s.trim().parse::<JobState>())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::invalid(field, e))
}

impl ListParams {
    /// The store query for `owner` (`None`: everyone's jobs).
    pub fn into_query(self, owner: Option<UserId>) -> Result<ListQuery, ApiError> {
        let states = match self.state.as_deref() {
            None | Some("") => Vec::new(),
            Some(list) => parse_states("state", list)?,
        };
        let sort = match self.sort.as_deref() {
            None | Some("-created_at") => Sort::CreatedDesc,
            Some("created_at") => Sort::CreatedAsc,
            Some("priority") => Sort::PriorityAsc,
            Some("-priority") => Sort::PriorityDesc,
            Some(other) => {
                return Err(ApiError::invalid(
                    "sort",
                    format!(
                        "unknown sort `{other}` (expected created_at, -created_at, priority or -priority)"
                    ),
                ));
            }
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ApiError::invalid("limit", "must be an integer from 1 to 100"))?,
        };
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                Cursor::decode(c).ok_or_else(|| {
                    ApiError::invalid("cursor", "is not a cursor this server issued")
                })
            })
            .transpose()?;
        Ok(ListQuery {
            owner,
            states,
            job_type: self.job_type,
            queue: self.queue,
            name: self.name,
            created_after: time("created_after", self.created_after)?,
            created_before: time("created_before", self.created_before)?,
            sort,
            limit,
            cursor,
        })
    }
}

fn time(field: &str, value: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| {
            // An unencoded `+` in an offset arrives as a space.
            DateTime::parse_from_rfc3339(&v.replace(' ', "+"))
                .map(|t| t.to_utc())
                .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 time"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: ListParams) -> Result<ListQuery, Option<String>> {
        p.into_query(Some(UserId(1))).map_err(|e| e.field)
    }

    #[test]
    fn defaults_are_newest_first_twenty() {
        let q = parse(ListParams::default()).unwrap();
        assert_eq!(
            (q.limit, q.sort, q.owner),
            (20, Sort::CreatedDesc, Some(UserId(1)))
        );
    }

    #[test]
    fn states_are_a_comma_list() {
        let q = parse(ListParams {
            state: Some("queued,failed".into()),
            ..ListParams::default()
        })
        .unwrap();
        assert_eq!(q.states, [JobState::Queued, JobState::Failed]);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ListParams {
                limit: Some("101".into()),
                ..ListParams::default()
            },
            ListParams {
                limit: Some("0".into()),
                ..ListParams::default()
            },
            ListParams {
                state: Some("queued,nope".into()),
                ..ListParams::default()
            },
            ListParams {
                sort: Some("name".into()),
                ..ListParams::default()
            },
            ListParams {
                cursor: Some("x".into()),
                ..ListParams::default()
            },
            ListParams {
                created_after: Some("yesterday".into()),
                ..ListParams::default()
            },
        ];
        let fields: Vec<_> = cases
            .into_iter()
            .map(|p| parse(p).unwrap_err().unwrap())
            .collect();
        assert_eq!(
            fields,
            ["limit", "limit", "state", "sort", "cursor", "created_after"]
        );
    }
}
