//! amoCRM OAuth 2.0: the authorization-code exchange and the refresh, in one place
//! for the operator and standalone mode. Refresh tokens are single use; a spent or
//! revoked one is [`CrmError::ReauthorizationRequired`].

use crate::CrmError;
use crate::clock::Clock;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// An access token and the refresh token that replaces it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    /// Bearer token for API calls.
    pub access_token: String,
    /// Single-use refresh token; `None` for long-lived tokens.
    pub refresh_token: Option<String>,
    /// When the access token expires, Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

/// An integration's OAuth client for one amoCRM account host.
pub struct OAuthClient {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    /// A client for the account at `base_url` (its own host, not the www host).
    pub fn new(
        base_url: &str,
        ca_pem: Option<&str>,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CrmError> {
        let http = crate::tls::client_builder(ca_pem)
            .and_then(|b| b.timeout(Duration::from_secs(20)).build().map_err(|e| e.to_string()))
            .map_err(CrmError::Config)?;
        Ok(Self {
            http,
            token_url: format!("{}/oauth2/access_token", base_url.trim_end_matches('/')),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            clock,
        })
    }

    /// Exchanges an authorization code (valid 20 minutes, single use) for a token pair.
    pub async fn exchange_code(&self, code: &str) -> Result<TokenPair, CrmError> {
        self.grant(json!({ "grant_type": "authorization_code", "code": code })).await
    }

    /// Exchanges a refresh token for a new pair. The old refresh token is spent
    /// whether or not the caller manages to store the new one, so store it at once.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, CrmError> {
        self.grant(json!({ "grant_type": "refresh_token", "refresh_token": refresh_token })).await
    }

    async fn grant(&self, mut body: Value) -> Result<TokenPair, CrmError> {
        body["client_id"] = json!(self.client_id);
        body["client_secret"] = json!(self.client_secret);
        body["redirect_uri"] = json!(self.redirect_uri);
        let response = self
            .http
            .post(&self.token_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| CrmError::Unavailable(format!("token endpoint: {e}")))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| CrmError::Unavailable(format!("token endpoint: {e}")))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 200 {
            let access_token = answer
                .get("access_token")
                .and_then(Value::as_str)
                .ok_or_else(|| CrmError::Protocol("token answer without access_token".into()))?;
            let expires_in = answer.get("expires_in").and_then(Value::as_i64).unwrap_or(86_400);
            return Ok(TokenPair {
                access_token: access_token.to_string(),
                refresh_token: answer.get("refresh_token").and_then(Value::as_str).map(str::to_string),
                expires_at: self.clock.now_secs() + expires_in,
            });
        }
        let hint = answer.get("hint").and_then(Value::as_str).unwrap_or_default().to_string();
        let detail = if hint.is_empty() { text.chars().take(200).collect() } else { hint.clone() };
        let lower = hint.to_lowercase();
        Err(match status {
            429 => CrmError::RateLimited {
                retry_after: answer.get("retry_after").and_then(Value::as_u64).map(Duration::from_secs),
            },
            500..=599 => CrmError::Unavailable(format!("token endpoint {status}: {detail}")),
            // The integration's own settings are wrong: a person must fix the Secret.
            _ if lower.contains("client_id") || lower.contains("client_secret") || lower.contains("redirect uri") => {
                CrmError::Config(format!("OAuth client settings rejected: {detail}"))
            }
            // A spent, revoked, expired or unknown code or refresh token: only a new
            // grant by a person helps.
            400 | 401 => CrmError::ReauthorizationRequired(detail),
            _ => CrmError::Rejected { status, detail },
        })
    }
}
