//! OpenAPI schemas of the domain types the wire types carry ([`JobState`], [`Role`],
//! [`Failure`](kiln_domain::Failure), [`JobTypeSpec`](kiln_domain::JobTypeSpec)).
//!
//! `kiln-domain` stays free of `utoipa` (its proc macro would sit under every crate of the
//! workspace), so the wire types name these stand-ins with `#[schema(value_type = …)]`. The
//! enums are built from the domain's own names, so they cannot drift; the structs mirror the
//! domain structs field for field, and the tests below compare them with what the domain
//! types serialise to.

use std::borrow::Cow;

use kiln_domain::{JobState, Role};
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// A string schema whose values are `values`.
fn string_enum<'a>(values: impl IntoIterator<Item = &'a str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

/// The schema named `JobState`: every state's lowercase name.
pub struct JobStateSchema;

impl PartialSchema for JobStateSchema {
    fn schema() -> RefOr<Schema> {
        string_enum(
            JobState::ALL.iter().map(|s| s.as_str()),
            "Where a job is in its life: scheduled → queued → running → succeeded; a \
             retryable failure is `failed` until its next attempt, a permanent one (or the \
             last attempt's) `dead`; `cancelled` at its owner's request.",
        )
    }
}

impl ToSchema for JobStateSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobState")
    }
}

/// Every role, lowest first (a new variant breaks the `match` in the tests).
const ROLES: [Role; 3] = [Role::Client, Role::Operator, Role::Admin];

/// The schema named `Role`: every role's lowercase name.
pub struct RoleSchema;

impl PartialSchema for RoleSchema {
    fn schema() -> RefOr<Schema> {
        string_enum(
            ROLES.iter().map(|r| r.as_str()),
            "What a user may do: a `client` submits and reads their own jobs; an `operator` \
             also sees everyone's jobs, the queues and the metrics; an `admin` also manages \
             users.",
        )
    }
}

impl ToSchema for RoleSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Role")
    }
}

/// A job error as users see it (mirrors [`kiln_domain::Failure`]).
#[derive(ToSchema)]
#[schema(example = json!({"code": "timeout", "message": "the attempt ran longer than 30s", "retryable": true}))]
pub struct Failure {
    /// Stable snake_case code: `timeout`, `lease_lost`, `invalid_input`, `kernel_error`, …
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether another attempt may succeed. Permanent failures go straight to `dead`.
    pub retryable: bool,
}

/// A job type as `GET /api/v1/job-types` serves it (mirrors [`kiln_domain::JobTypeSpec`]).
#[derive(ToSchema)]
pub struct JobTypeSpec {
    /// Its snake_case name, as submissions give it in `type`.
    pub name: String,
    /// One line on what it does.
    pub description: String,
    /// JSON Schema of the payload.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Retry and timeout policy.
    pub policy: Policy,
    /// The least role that may submit it.
    #[schema(value_type = RoleSchema)]
    pub min_role: Role,
}

/// Server-side execution policy of a type (mirrors [`kiln_domain::job_type::Policy`]).
#[derive(ToSchema)]
pub struct Policy {
    /// Attempts before a retryable failure becomes `dead`.
    pub max_attempts: u32,
    /// Per-attempt timeout in ms; 0 means none.
    pub timeout_ms: u64,
    /// Bounds of the random delay before each retry.
    pub backoff: Backoff,
}

/// Exponential backoff bounds, in milliseconds (mirrors [`kiln_domain::retry::Backoff`]).
#[derive(ToSchema)]
pub struct Backoff {
    /// Upper bound of the first retry's delay.
    pub base_ms: u64,
    /// No delay is ever longer than this.
    pub cap_ms: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kiln_domain::job_type::Catalogue;

    use super::*;

    /// The property names of `T`'s schema, and the required ones.
    fn properties<T: ToSchema>() -> (BTreeSet<String>, BTreeSet<String>) {
        let schema = serde_json::to_value(T::schema()).expect("a schema");
        let names = schema["properties"]
            .as_object()
            .expect("an object schema")
            .keys()
            .cloned()
            .collect();
        let required = schema["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (names, required)
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }

    fn enum_values<T: ToSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).expect("a schema");
        schema["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    }

    #[test]
    fn the_enums_list_every_serialised_name() {
        assert_eq!(JobState::ALL.len(), enum_values::<JobStateSchema>().len());
        for (state, name) in JobState::ALL.iter().zip(enum_values::<JobStateSchema>()) {
            assert_eq!(
                serde_json::to_value(state).expect("json"),
                Value::from(name)
            );
        }
        // Exhaustive: a new role fails to compile here until `ROLES` lists it.
        for role in ROLES {
            match role {
                Role::Client | Role::Operator | Role::Admin => {}
            }
        }
        for (role, name) in ROLES.iter().zip(enum_values::<RoleSchema>()) {
            assert_eq!(serde_json::to_value(role).expect("json"), Value::from(name));
        }
    }

    #[test]
    fn the_inline_limit_in_the_description_is_the_constant() {
        let schema = serde_json::to_value(crate::StatusView::<Value>::schema()).expect("json");
        let description = schema["properties"]["result"]["description"].to_string();
        let limit = crate::STATUS_RESULT_INLINE_MAX.to_string();
        assert!(description.contains(&limit), "{description}");
    }

    #[test]
    fn the_mirrors_have_the_domain_types_fields() {
        let failure =
            serde_json::to_value(kiln_domain::Failure::permanent("x", "y")).expect("json");
        assert_eq!(properties::<Failure>(), (keys(&failure), keys(&failure)));
        let spec = Catalogue::default()
            .iter()
            .next()
            .cloned()
            .expect("a job type");
        let spec = serde_json::to_value(spec).expect("json");
        assert_eq!(properties::<JobTypeSpec>(), (keys(&spec), keys(&spec)));
        let policy = &spec["policy"];
        assert_eq!(properties::<Policy>(), (keys(policy), keys(policy)));
        let backoff = &policy["backoff"];
        assert_eq!(properties::<Backoff>(), (keys(backoff), keys(backoff)));
    }
}
