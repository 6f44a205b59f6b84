//! Per-user limits: `GET`/`PUT /api/v1/admin/users/{id}/limits`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The limits an admin sets for one user (`PUT /api/v1/admin/users/{id}/limits` replaces
/// them all): each overrides the server's default for this user; absent or `null` keeps the
/// default. Operators and admins have no submission rate, active-job quota or slot share by
/// default, but one set here applies to them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"submit_rate": "10/s", "submit_burst": 50, "max_active": 500, "slot_share": 0.25, "storage": 1_073_741_824u64}))]
pub struct LimitOverrides {
    /// Submissions per period, `N/s`, `N/m` or `N/h` (N ≥ 1), or `off` for none.
    #[serde(default)]
    pub submit_rate: Option<String>,
    /// Submissions at once after being idle (1 to 1,000,000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub submit_burst: Option<u32>,
    /// Jobs waiting or running at once (`0`: no limit).
    #[serde(default)]
    pub max_active: Option<u64>,
    /// The share of each node's slots the user's jobs may hold (above 0, at most 1; at
    /// least one slot).
    #[serde(default)]
    pub slot_share: Option<f64>,
    /// Bytes of uploaded files the user may keep (`0`: no limit).
    #[serde(default)]
    pub storage: Option<u64>,
}

/// The limits that hold for a user: their overrides over the server's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EffectiveLimits {
    /// Submissions per period (`N/s`, `N/m`, `N/h`), or `off`.
    pub submit_rate: String,
    /// Submissions at once after being idle (`null` with no rate).
    pub submit_burst: Option<u32>,
    /// Jobs waiting or running at once (`null`: no limit).
    pub max_active: Option<u64>,
    /// The share of each node's slots (`1`: no limit).
    pub slot_share: f64,
    /// Bytes of uploaded files kept (`null`: no limit).
    pub storage: Option<u64>,
}

/// A user's limits: what an admin set, and what holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserLimitsView {
    /// The user's id.
    pub user_id: i64,
    /// What an admin set for this user (`null`: the default).
    pub overrides: LimitOverrides,
    /// What holds for the user now (per node for the rate and the slot share).
    pub effective: EffectiveLimits,
}
