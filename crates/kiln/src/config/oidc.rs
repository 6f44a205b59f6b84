//! `KILN_OIDC_*`: an OpenID Connect provider (Microsoft Entra ID or any with discovery):
//! its bearer JWTs accepted beside Kiln's own tokens, and, with a client id, the
//! dashboard's "Sign in with Microsoft".

use clap::Args;
use kiln_server::auth::oidc::OidcConfig;

use super::Secret;

/// The provider's settings.
#[derive(Debug, Clone, Args)]
pub struct OidcArgs {
    /// Accept OpenID Connect bearer tokens (JWTs) from this issuer beside Kiln's own tokens:
    /// its identifier exactly as tokens carry it in `iss` (Microsoft Entra ID:
    /// `https://login.microsoftonline.com/<tenant-id>/v2.0`). Its keys are found through
    /// `<issuer>/.well-known/openid-configuration`.
    #[arg(long = "oidc-issuer", env = "KILN_OIDC_ISSUER")]
    pub issuer: Option<String>,
    /// The audience (`aud`) those tokens must be for (Entra: the app's client id or
    /// Application ID URI).
    #[arg(long = "oidc-audience", env = "KILN_OIDC_AUDIENCE")]
    pub audience: Option<String>,
    /// The claim that lists a person's roles (Entra app roles: `roles`); its values
    /// `Kiln.Admin`/`Kiln.Operator` (or `admin`/`operator`) set their Kiln role at each
    /// sign-in. Without it a new person is a client and admins manage roles in Kiln.
    #[arg(long = "oidc-roles-claim", env = "KILN_OIDC_ROLES_CLAIM")]
    pub roles_claim: Option<String>,
    /// The dashboard's application (client) id at the provider: with it the sign-in page
    /// offers "Sign in with Microsoft" (the authorization-code flow with PKCE; the
    /// redirect URI to register is `<the dashboard's origin>/login/microsoft/callback`).
    #[arg(long = "oidc-client-id", env = "KILN_OIDC_CLIENT_ID")]
    pub client_id: Option<String>,
    /// The client secret, for an app registered as a web application (a registration as a
    /// single-page application redeems its codes with PKCE alone).
    #[arg(
        long = "oidc-client-secret",
        env = "KILN_OIDC_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<Secret>,
}

impl OidcArgs {
    /// The provider's checked settings (`None` without an issuer); each problem found is
    /// added to `problems`.
    pub fn check(&self, problems: &mut Vec<String>) -> Option<OidcConfig> {
        let Some(issuer) = &self.issuer else {
            for (set, name) in [
                (self.audience.is_some(), "KILN_OIDC_AUDIENCE"),
                (self.client_id.is_some(), "KILN_OIDC_CLIENT_ID"),
                (self.client_secret.is_some(), "KILN_OIDC_CLIENT_SECRET"),
            ] {
                if set {
                    problems.push(format!("{name} needs KILN_OIDC_ISSUER"));
                }
            }
            return None;
        };
        let config = OidcConfig::new(
            issuer,
            self.audience.as_deref().unwrap_or_default(),
            self.roles_claim.as_deref(),
        )
        .map_err(|e| problems.push(e))
        .ok()?;
        let client_id = self.client_id.as_deref().map(str::trim);
        match (client_id, &self.client_secret) {
            (Some(""), _) => {
                problems.push("KILN_OIDC_CLIENT_ID is empty".to_owned());
                None
            }
            (None, Some(_)) => {
                problems.push("KILN_OIDC_CLIENT_SECRET needs KILN_OIDC_CLIENT_ID".to_owned());
                None
            }
            (id, secret) => Some(
                config.with_client(id.map(str::to_owned), secret.as_ref().map(|s| s.0.clone())),
            ),
        }
    }
}
