//! The bootstrap credentials Secret of a binding: which keys it must hold. Pure.

use crate::conditions::Verdict;
use crmessenger_api::common::conditions::CREDENTIALS_VALID;
use std::collections::BTreeMap;

/// How the operator obtains the first token pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Exchange an authorization code (valid 20 minutes, single use).
    AuthorizationCode(String),
    /// Refresh with a refresh token the user obtained elsewhere.
    RefreshToken(String),
    /// A long-lived token: used as it is, never refreshed.
    LongLived(String),
}

/// The OAuth client settings and the grant, read from the Secret's data.
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

/// Reads the bootstrap Secret's data, or says which keys are missing.
pub fn read(secret_name: &str, data: &BTreeMap<String, String>) -> Result<Bootstrap, Verdict> {
    let get = |k: &str| data.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(token) = get("long_lived_token") {
        return Ok(Bootstrap {
            client_id: get("client_id").unwrap_or_default(),
            client_secret: String::new(),
            redirect_uri: String::new(),
            grant: Grant::LongLived(token),
        });
    }
    let missing: Vec<&str> =
        ["client_id", "client_secret", "redirect_uri"].into_iter().filter(|k| get(k).is_none()).collect();
    let grant = get("authorization_code")
        .map(Grant::AuthorizationCode)
        .or_else(|| get("refresh_token").map(Grant::RefreshToken));
    if !missing.is_empty() || grant.is_none() {
        let mut lacks: Vec<String> = missing.iter().map(|k| k.to_string()).collect();
        if grant.is_none() {
            lacks.push("authorization_code or refresh_token".into());
        }
        return Err(Verdict::no(
            CREDENTIALS_VALID,
            "SecretKeysMissing",
            format!(
                "Secret {secret_name} lacks {}: it needs client_id, client_secret, redirect_uri and authorization_code or refresh_token (or only long_lived_token)",
                lacks.join(", ")
            ),
        ));
    }
    Ok(Bootstrap {
        client_id: get("client_id").unwrap_or_default(),
        client_secret: get("client_secret").unwrap_or_default(),
        redirect_uri: get("redirect_uri").unwrap_or_default(),
        grant: grant.unwrap_or(Grant::LongLived(String::new())),
    })
}

pub use crmessenger_api::common::secret_strings as decode;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn complete_secrets_give_a_grant() {
        let b = read(
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
        let b = read("amo", &data(&[("long_lived_token", "t")])).unwrap();
        assert_eq!(b.grant, Grant::LongLived("t".into()));
    }

    #[test]
    fn missing_keys_are_named() {
        let e = read("amo", &data(&[("client_id", "id"), ("redirect_uri", "https://x")])).unwrap_err();
        assert_eq!(e.reason, "SecretKeysMissing");
        assert!(
            e.message.contains("client_secret") && e.message.contains("authorization_code or refresh_token"),
            "{}",
            e.message
        );
    }
}
