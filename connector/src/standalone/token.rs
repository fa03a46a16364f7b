//! The CRM token pairs of `standalone`: obtained and refreshed with each
//! binding's shared OAuth code, kept sealed in the database.

use crate::app::serve::stopped;
use crate::store::Store;
use crate::store::crypto::SessionKey;
use async_trait::async_trait;
use crmessenger_api::config::ConnectorConfig;
use crmessenger_crm::CrmError;
use crmessenger_crm::amocrm::grant::{self, Bootstrap, Renewal};
use crmessenger_crm::amocrm::{OAuthClient, TokenPair, TokenSource};
use crmessenger_crm::clock::Clock;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How a token pair is kept in the database: sealed, with the hash of the
/// credentials it came from (new credentials start over).
#[derive(Serialize, Deserialize)]
struct SealedPair {
    credentials: String,
    pair: TokenPair,
}

/// A binding's token pair, obtained and refreshed with the shared OAuth code and
/// kept sealed in the `sessions` table under `crm-token:NAMESPACE/BINDING`.
pub struct StoredToken {
    row: String,
    store: Store,
    key: SessionKey,
    oauth: OAuthClient,
    bootstrap: Bootstrap,
    credentials: String,
    clock: Arc<dyn Clock>,
    pair: tokio::sync::Mutex<Option<TokenPair>>,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken").field("row", &self.row).finish_non_exhaustive()
    }
}

impl StoredToken {
    /// The token of `config`'s binding.
    pub fn new(
        config: &ConnectorConfig,
        bootstrap: Bootstrap,
        ca_pem: Option<&str>,
        store: Store,
        key: SessionKey,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CrmError> {
        let amo = &config.crm.amocrm;
        let oauth = OAuthClient::new(
            &amo.base_url,
            ca_pem,
            &bootstrap.client_id,
            &bootstrap.client_secret,
            &bootstrap.redirect_uri,
            clock.clone(),
        )?;
        let credentials = {
            use sha2::Digest;
            let text = format!("{:?}", (&bootstrap.client_id, &bootstrap.redirect_uri, &bootstrap.grant));
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        };
        Ok(Self {
            row: format!("crm-token:{}/{}", config.binding.namespace, config.binding.name),
            store,
            key,
            oauth,
            bootstrap,
            credentials,
            clock,
            pair: tokio::sync::Mutex::new(None),
        })
    }

    async fn load(&self) -> Option<TokenPair> {
        let (nonce, ct) = self.store.session(&self.row).await.ok()??;
        let plain = self.key.open(&self.row, &nonce, &ct).ok()?;
        let sealed: SealedPair = serde_json::from_slice(&plain).ok()?;
        (sealed.credentials == self.credentials).then_some(sealed.pair)
    }

    async fn save(&self, pair: &TokenPair) -> Result<(), CrmError> {
        let plain = serde_json::to_vec(&SealedPair { credentials: self.credentials.clone(), pair: pair.clone() })
            .map_err(|e| CrmError::Protocol(e.to_string()))?;
        let (nonce, ct) = self.key.seal(&self.row, &plain).map_err(CrmError::Config)?;
        let now_ms = self.clock.now_secs() * 1000;
        self.store
            .put_session(&self.row, &nonce, &ct, now_ms)
            .await
            .map_err(|e| CrmError::Unavailable(format!("store the token pair: {e}")))
    }

    /// Makes sure a current pair is held (bootstrap or refresh when due); with
    /// `force`, refreshes now (the CRM refused the current token).
    pub async fn ensure(&self, force: bool) -> Result<String, CrmError> {
        let mut held = self.pair.lock().await;
        if held.is_none() {
            *held = self.load().await;
        }
        let now = self.clock.now_secs();
        let renewal = match (force, held.as_ref().and_then(|p| p.refresh_token.clone())) {
            (true, Some(refresh)) => match self.oauth.refresh(&refresh).await {
                Ok(pair) => Renewal::New(pair),
                Err(e) => Renewal::Refused(e),
            },
            _ => grant::renew(&self.oauth, &self.bootstrap, held.as_ref(), now).await,
        };
        match renewal {
            Renewal::Keep => {}
            Renewal::New(pair) => {
                // Store at once: the old refresh token is already spent.
                self.save(&pair).await?;
                tracing::info!(binding = self.row, expires_at = pair.expires_at, "new CRM access token");
                *held = Some(pair);
            }
            Renewal::KeepAfterFailure(e) => {
                tracing::warn!(binding = self.row, "token refresh failed, keeping the current token: {e}")
            }
            Renewal::Refused(e) => return Err(e),
        }
        held.as_ref().map(|p| p.access_token.clone()).ok_or_else(|| CrmError::Protocol("no token".into()))
    }
}

#[async_trait]
impl TokenSource for StoredToken {
    async fn access_token(&self) -> Result<String, CrmError> {
        self.ensure(false).await
    }

    async fn renew(&self, rejected: &str) -> Result<(), CrmError> {
        let current = self.pair.lock().await.as_ref().map(|p| p.access_token.clone());
        if current.as_deref() != Some(rejected) {
            return Ok(()); // someone renewed already
        }
        self.ensure(true).await.map(|_| ())
    }
}

/// Refreshes every token pair before it expires, until `stop`.
pub async fn refresh_tokens(tokens: Vec<Arc<StoredToken>>, mut stop: watch::Receiver<bool>) {
    loop {
        for t in &tokens {
            if let Err(e) = t.ensure(false).await {
                tracing::error!(binding = t.row, "CRM token: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}
