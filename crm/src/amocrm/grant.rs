//! The bootstrap credentials of a binding and the token pair's lifecycle, shared by
//! the operator (pair kept in a Secret) and standalone mode (pair kept in its
//! database): which keys the credentials must hold, and when and how to get a new pair.

use super::oauth::{OAuthClient, TokenPair};
use crate::{CrmError, ErrorClass};
use std::collections::BTreeMap;
use std::time::Duration;

/// Refresh this long before the access token expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(6 * 3600);

/// How the first token pair is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Exchange an authorization code (valid 20 minutes, single use).
    AuthorizationCode(String),
    /// Refresh with a refresh token obtained elsewhere.
    RefreshToken(String),
    /// A long-lived token: used as it is, never refreshed.
    LongLived(String),
}

/// The OAuth client settings and the grant, read from the credentials' data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// Integration id.
    pub client_id: String,
    /// Integration secret.
    pub client_secret: String,
    /// Redirect URI registered with the integration.
    pub redirect_uri: String,
    /// How to get the first pair.
    pub grant: Grant,
}

impl Bootstrap {
    /// Reads the credentials Secret's data, or says which keys are missing.
    pub fn read(secret_name: &str, data: &BTreeMap<String, String>) -> Result<Bootstrap, String> {
        let get = |k: &str| data.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(token) = get("long_lived_token") {
            return Ok(Bootstrap {
                client_id: get("client_id").unwrap_or_default(),
                client_secret: String::new(),
                redirect_uri: String::new(),
                grant: Grant::LongLived(token),
            });
        }
        let mut lacks: Vec<String> = ["client_id", "client_secret", "redirect_uri"]
            .into_iter()
            .filter(|k| get(k).is_none())
            .map(str::to_string)
            .collect();
        let grant = get("authorization_code")
            .map(Grant::AuthorizationCode)
            .or_else(|| get("refresh_token").map(Grant::RefreshToken));
        let Some(grant) = grant else {
            lacks.push("authorization_code or refresh_token".into());
            return Err(missing(secret_name, &lacks));
        };
        if !lacks.is_empty() {
            return Err(missing(secret_name, &lacks));
        }
        Ok(Bootstrap {
            client_id: get("client_id").unwrap_or_default(),
            client_secret: get("client_secret").unwrap_or_default(),
            redirect_uri: get("redirect_uri").unwrap_or_default(),
            grant,
        })
    }
}

fn missing(secret_name: &str, lacks: &[String]) -> String {
    format!(
        "Secret {secret_name} lacks {}: it needs client_id, client_secret, redirect_uri and authorization_code or refresh_token (or only long_lived_token)",
        lacks.join(", ")
    )
}

/// What [`renew`] decided.
#[derive(Debug)]
pub enum Renewal {
    /// The current pair is good; nothing to store.
    Keep,
    /// A new pair: store it at once (the old refresh token is spent).
    New(TokenPair),
    /// A passing failure; the current pair stays usable until it expires.
    KeepAfterFailure(CrmError),
    /// No usable pair: the error says whether a person must act.
    Refused(CrmError),
}

/// Makes sure there is a current pair: bootstraps when `current` is `None` (no pair,
/// or the credentials changed), refreshes when it is within [`REFRESH_MARGIN`] of
/// expiry. `now` is Unix seconds.
pub async fn renew(oauth: &OAuthClient, bootstrap: &Bootstrap, current: Option<&TokenPair>, now: i64) -> Renewal {
    let result = match current {
        Some(pair) => {
            let due = pair.expires_at.saturating_sub(REFRESH_MARGIN.as_secs() as i64);
            match (&pair.refresh_token, now >= due) {
                (Some(refresh), true) => oauth.refresh(refresh).await,
                _ => return Renewal::Keep,
            }
        }
        None => match &bootstrap.grant {
            Grant::LongLived(t) => Ok(TokenPair { access_token: t.clone(), refresh_token: None, expires_at: i64::MAX }),
            Grant::AuthorizationCode(code) => oauth.exchange_code(code).await,
            Grant::RefreshToken(refresh) => oauth.refresh(refresh).await,
        },
    };
    match result {
        Ok(pair) => Renewal::New(pair),
        Err(e) if e.class() == ErrorClass::Retryable && current.is_some_and(|p| now < p.expires_at) => {
            Renewal::KeepAfterFailure(e)
        }
        Err(e) => Renewal::Refused(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn complete_credentials_give_a_grant() {
        let b = Bootstrap::read(
            "amo",
            &data(&[
                ("client_id", "id"),
                ("client_secret", "s"),
                ("redirect_uri", "https://x"),
                ("authorization_code", "c"),
            ]),
        )
        .unwrap();
        assert_eq!(b.grant, Grant::AuthorizationCode("c".into()));
        let b = Bootstrap::read("amo", &data(&[("long_lived_token", "t")])).unwrap();
        assert_eq!(b.grant, Grant::LongLived("t".into()));
    }

    #[test]
    fn missing_keys_are_named() {
        let e = Bootstrap::read("amo", &data(&[("client_id", "id"), ("redirect_uri", "https://x")])).unwrap_err();
        assert!(e.contains("client_secret") && e.contains("authorization_code or refresh_token"), "{e}");
    }
}
