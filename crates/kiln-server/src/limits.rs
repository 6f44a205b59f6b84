//! Per-user limits: the server's defaults, the overrides an admin sets for one user
//! (`/api/v1/admin/users/{id}/limits`), and a short-lived cache of those overrides.
//!
//! By default clients have the submission rate, the active-job quota and the slot share, and
//! everyone has the storage quota; operators and admins have no rate, quota or share unless
//! an admin sets one for them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_api::limits::{EffectiveLimits, LimitOverrides};
use kiln_domain::{Role, User, UserId};
use kiln_store::UserLimits;

use crate::config::ServerConfig;
use crate::problem::ApiError;
use crate::rate::SubmitRate;

/// How long a user's overrides are trusted without reading them again: a change reaches
/// every node at once through the store's signals; this bounds the time a missed signal
/// (a listener reconnecting) can keep an old value.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// The largest burst an override may give.
const MAX_BURST: u32 = 1_000_000;

/// What holds for one user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    /// Submission rate (`None`: none).
    pub submit: Option<SubmitRate>,
    /// Jobs waiting or running at once (`None`: no limit).
    pub max_active: Option<u64>,
    /// Share of a node's slots (`None`: no limit).
    pub slot_share: Option<f64>,
    /// Bytes of uploaded files kept (`None`: no limit).
    pub storage: Option<u64>,
}

impl Effective {
    /// The defaults of `config` for a user of `role`, with `own` over them.
    pub fn of(config: &ServerConfig, role: Role, own: &UserLimits) -> Self {
        let client = role == Role::Client;
        let default_rate = config.submit_rate.filter(|_| client);
        let submit = match own.submit_rate.as_deref() {
            Some("off") => None,
            // Checked when it was set; a text that no longer parses keeps the default.
            Some(text) => {
                let burst = own
                    .submit_burst
                    .or(default_rate.map(|r| r.burst.get()))
                    .unwrap_or(1);
                SubmitRate::parse(text, burst).ok().or(default_rate)
            }
            // A burst alone: the default rate with that burst.
            None => default_rate.map(|rate| SubmitRate {
                burst: own
                    .submit_burst
                    .and_then(std::num::NonZeroU32::new)
                    .unwrap_or(rate.burst),
                ..rate
            }),
        };
        let limit = |own: Option<u64>, default: Option<u64>| match own {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Self {
            submit,
            max_active: limit(own.max_active, config.max_active.filter(|_| client)),
            slot_share: own
                .slot_share
                .or(config.slot_share.filter(|_| client))
                .filter(|s| *s < 1.0),
            storage: limit(own.storage, config.storage_quota),
        }
    }

    /// As the API shows it.
    pub fn view(&self) -> EffectiveLimits {
        EffectiveLimits {
            submit_rate: self
                .submit
                .map_or_else(|| "off".to_owned(), |r| r.to_string()),
            submit_burst: self.submit.map(|r| r.burst.get()),
            max_active: self.max_active,
            slot_share: self.slot_share.unwrap_or(1.0),
            storage: self.storage,
        }
    }
}

/// Checks overrides sent to the admin API.
pub fn check(body: LimitOverrides) -> Result<UserLimits, ApiError> {
    if let Some(rate) = body.submit_rate.as_deref()
        && rate != "off"
    {
        SubmitRate::parse(rate, 1).map_err(|e| ApiError::invalid("submit_rate", e))?;
    }
    if let Some(burst) = body.submit_burst
        && !(1..=MAX_BURST).contains(&burst)
    {
        return Err(ApiError::invalid(
            "submit_burst",
            format!("must be between 1 and {MAX_BURST}"),
        ));
    }
    if let Some(share) = body.slot_share
        && !(share > 0.0 && share <= 1.0)
    {
        return Err(ApiError::invalid(
            "slot_share",
            "must be above 0 and at most 1",
        ));
    }
    Ok(UserLimits {
        submit_rate: body.submit_rate,
        submit_burst: body.submit_burst,
        max_active: body.max_active,
        slot_share: body.slot_share,
        storage: body.storage,
    })
}

/// The overrides as the API shows them.
pub fn overrides_view(own: &UserLimits) -> LimitOverrides {
    LimitOverrides {
        submit_rate: own.submit_rate.clone(),
        submit_burst: own.submit_burst,
        max_active: own.max_active,
        slot_share: own.slot_share,
        storage: own.storage,
    }
}

/// Users' overrides recently read, by user. Hand-written like the token cache (a mutex
/// around a map): it needs exact invalidation by user.
#[derive(Default)]
pub struct LimitsCache {
    entries: Mutex<HashMap<UserId, (UserLimits, Instant)>>,
}

impl LimitsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (UserLimits, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's overrides if read within [`CACHE_TTL`].
    pub fn get(&self, user: UserId) -> Option<UserLimits> {
        self.lock()
            .get(&user)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(limits, _)| limits.clone())
    }

    /// Forgets `user` (`None`: everyone).
    pub fn forget(&self, user: Option<UserId>) {
        match user {
            Some(user) => {
                self.lock().remove(&user);
            }
            None => self.lock().clear(),
        }
    }

    /// Remembers `user`'s overrides.
    pub fn put(&self, user: UserId, limits: UserLimits) {
        let mut entries = self.lock();
        if entries.len() >= 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        entries.insert(user, (limits, Instant::now()));
    }
}

impl crate::state::AppState {
    /// The bytes `user` keeps: their uploaded files and their jobs' artifacts.
    pub async fn storage_used(
        &self,
        objects: &kiln_objects::Objects,
        user: UserId,
    ) -> Result<u64, ApiError> {
        let files: u64 = objects.file_list(user).await?.iter().map(|f| f.size).sum();
        let artifacts = self.store().owner_artifact_bytes(user).await?;
        Ok(files.saturating_add(artifacts))
    }

    /// The limits that hold for `user` now.
    pub async fn limits_of(&self, user: &User) -> Result<Effective, ApiError> {
        let own = match self.limits_cache().get(user.id) {
            Some(own) => own,
            None => {
                let own = self.store().user_limits(user.id).await?;
                self.limits_cache().put(user.id, own.clone());
                own
            }
        };
        Ok(Effective::of(self.config(), user.role, &own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            submit_rate: Some(SubmitRate::parse("100/s", 1000).unwrap()),
            max_active: Some(10_000),
            slot_share: Some(0.5),
            storage_quota: Some(1 << 30),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn clients_get_the_defaults_and_operators_only_the_storage_quota() {
        let none = UserLimits::default();
        let client = Effective::of(&config(), Role::Client, &none);
        assert_eq!(client.view().submit_rate, "100/s");
        assert_eq!(
            (client.max_active, client.slot_share, client.storage),
            (Some(10_000), Some(0.5), Some(1 << 30))
        );
        let operator = Effective::of(&config(), Role::Operator, &none);
        assert_eq!(
            (operator.submit, operator.max_active, operator.slot_share),
            (None, None, None)
        );
        assert_eq!(operator.storage, Some(1 << 30));
    }

    #[test]
    fn overrides_replace_the_defaults_and_zero_or_off_lifts_them() {
        let own = UserLimits {
            submit_rate: Some("5/m".to_owned()),
            submit_burst: Some(2),
            max_active: Some(0),
            slot_share: Some(0.25),
            storage: Some(0),
        };
        let e = Effective::of(&config(), Role::Client, &own);
        assert_eq!(e.view().submit_rate, "5/m");
        assert_eq!(e.view().submit_burst, Some(2));
        assert_eq!(
            (e.max_active, e.slot_share, e.storage),
            (None, Some(0.25), None)
        );
        let off = UserLimits {
            submit_rate: Some("off".to_owned()),
            ..UserLimits::default()
        };
        assert_eq!(Effective::of(&config(), Role::Client, &off).submit, None);
        // A burst alone keeps the default rate with the new burst.
        let burst = UserLimits {
            submit_burst: Some(7),
            ..UserLimits::default()
        };
        let e = Effective::of(&config(), Role::Client, &burst);
        assert_eq!(
            (e.view().submit_rate.as_str(), e.view().submit_burst),
            ("100/s", Some(7))
        );
        // An override applies to an admin too.
        let capped = UserLimits {
            max_active: Some(3),
            ..UserLimits::default()
        };
        assert_eq!(
            Effective::of(&config(), Role::Admin, &capped).max_active,
            Some(3)
        );
    }

    #[test]
    fn bad_overrides_name_their_field() {
        let bad = |body: LimitOverrides| check(body).unwrap_err().field;
        let rate = LimitOverrides {
            submit_rate: Some("fast".to_owned()),
            ..LimitOverrides::default()
        };
        assert_eq!(bad(rate).as_deref(), Some("submit_rate"));
        let burst = LimitOverrides {
            submit_burst: Some(0),
            ..LimitOverrides::default()
        };
        assert_eq!(bad(burst).as_deref(), Some("submit_burst"));
        for share in [0.0, -1.0, 1.5, f64::NAN] {
            let body = LimitOverrides {
                slot_share: Some(share),
                ..LimitOverrides::default()
            };
            assert_eq!(bad(body).as_deref(), Some("slot_share"));
        }
    }
}
