//! `standalone -f DIR`: one host, no Kubernetes. Reads the same resource manifests
//! a cluster would get (MessengerAccount, CrmBinding, SyncPolicy, and the Secrets
//! they name), renders each account's config with the operator's pure function,
//! keeps the CRM token pairs (shared OAuth code, pairs sealed in the database) and
//! runs every account, the gateway and the login pages in one process — on SQLite
//! by default, or on PostgreSQL with `--database-url`.

use crate::admin::{AccountHandle, Admin};
use crate::app::{build_account, register_routes, terminated};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::store::crypto::SessionKey;
use crate::store::lock::AccountLock;
use crate::store::{POOL_SIZE, Store};
use anyhow::{Context, bail};
use async_trait::async_trait;
use crmessenger_api::common::secret_strings;
use crmessenger_api::config::{ConnectorConfig, RuntimeSettings, render};
use crmessenger_api::manifests::{self, Manifests};
use crmessenger_api::selection;
use crmessenger_crm::CrmError;
use crmessenger_crm::amocrm::grant::{self, Bootstrap, Renewal};
use crmessenger_crm::amocrm::{OAuthClient, TokenPair, TokenSource};
use crmessenger_crm::clock::{Clock, SystemClock};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Settings of `standalone`.
#[derive(Debug, Clone)]
pub struct StandaloneSettings {
    /// The directory of manifests (`*.yaml`, `*.yml`, `*.json`).
    pub dir: PathBuf,
    /// Namespace for objects that name none.
    pub namespace: String,
    /// Where the SQLite database and the generated session key live.
    pub data_dir: PathBuf,
    /// A database URL instead of the SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// The session key (64 hex digits or base64); generated into `data_dir` when unset.
    pub session_key: Option<String>,
    /// Health, metrics, status and login state (status and login to loopback only).
    pub admin_addr: SocketAddr,
    /// The login pages.
    pub login_addr: SocketAddr,
    /// The webhook gateway.
    pub gateway_addr: SocketAddr,
    /// The gateway's URL as the CRM reaches it (default: `http://` + `gateway_addr`).
    pub gateway_url: Option<String>,
    /// Scripted messengers: `URL` for every account, or `NAMESPACE/NAME=URL`.
    pub scripted_messengers: Vec<String>,
    /// CRM requests per second, shared by every account of one CRM.
    pub crm_requests_per_second: f64,
    /// The installation's Chats API channel, for bindings with `chatsChannel: true`.
    pub chats: Option<crate::app::ChatsSettings>,
    /// The installation's Meta app, for WhatsApp webhooks.
    pub whatsapp: Option<crate::gateway::WhatsAppApp>,
}

/// Reads every manifest file of `dir` (sorted by name); errors name the file.
pub fn load(dir: &Path, namespace: &str) -> anyhow::Result<Manifests> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read the manifest directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
        .collect();
    files.sort();
    let mut all = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let m = manifests::parse(&text, namespace).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        all.extend(m);
    }
    Ok(all)
}

/// What can run, and what cannot and why.
#[derive(Debug, Default)]
pub struct Plan {
    /// Configs of the accounts that can run, with their binding's credentials.
    pub accounts: Vec<(ConnectorConfig, Bootstrap)>,
    /// `(namespace/name, why)` of each account that cannot.
    pub skipped: Vec<(String, String)>,
}

/// Secrets by `(namespace, name)`, as strings.
pub fn secrets_of(m: &Manifests) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    m.secrets.iter().map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), secret_strings(s))).collect()
}

/// Decides, for every account, its binding and policy and renders its config —
/// the same rules as the operator (the oldest binding that selects an account owns
/// it; every Secret the config names must exist and hold its key). Pure.
pub fn plan(m: &Manifests, crm_requests_per_second: f64) -> Plan {
    let secrets = secrets_of(m);
    let mut out = Plan::default();
    for account in &m.accounts {
        let ns = account.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", account.name_any());
        let result = (|| -> Result<(ConnectorConfig, Bootstrap), String> {
            let binding = selection::owner(account, &m.bindings).ok_or("no CrmBinding selects this account")?;
            let policy_name = &binding.spec.policy_ref.name;
            let policy = m
                .policies
                .iter()
                .find(|p| p.namespace().as_deref() == Some(&ns) && &p.name_any() == policy_name)
                .ok_or_else(|| {
                    format!("CrmBinding {} names SyncPolicy {policy_name}, which is not declared", binding.name_any())
                })?;
            let runtime = RuntimeSettings { crm_requests_per_second, token_version: None };
            let config = render(account, binding, policy, runtime).map_err(|e| e.to_string())?;
            let amo = &config.crm.amocrm;
            let credentials = secrets.get(&(ns.clone(), amo.credentials_secret.name.clone())).ok_or_else(|| {
                format!(
                    "Secret {} (spec.crm.amocrm.credentialsSecret of CrmBinding {}) is not declared",
                    amo.credentials_secret.name,
                    binding.name_any()
                )
            })?;
            let bootstrap = Bootstrap::read(&amo.credentials_secret.name, credentials)?;
            // The token Secret is the operator's; here the pair lives in the database.
            for r in config.secret_refs().into_iter().filter(|r| *r != config.crm.token) {
                let data = secrets
                    .get(&(ns.clone(), r.name.clone()))
                    .ok_or_else(|| format!("Secret {} is not declared", r.name))?;
                if !data.contains_key(&r.key) {
                    return Err(format!("Secret {} has no key {}", r.name, r.key));
                }
            }
            Ok((config, bootstrap))
        })();
        match result {
            Ok(ok) => out.accounts.push(ok),
            Err(why) => out.skipped.push((key, why)),
        }
    }
    out
}

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

/// The scripted messenger URL of `account`, from `NAMESPACE/NAME=URL` or `URL` entries.
pub fn scripted_url<'a>(entries: &'a [String], account: &str) -> Option<&'a str> {
    let specific = entries.iter().find_map(|e| {
        if e.starts_with("http://") || e.starts_with("https://") {
            return None;
        }
        e.split_once('=').filter(|(k, _)| *k == account).map(|(_, v)| v)
    });
    specific
        .or_else(|| entries.iter().find(|e| e.starts_with("http://") || e.starts_with("https://")).map(|s| s.as_str()))
}

fn session_key(s: &StandaloneSettings) -> anyhow::Result<SessionKey> {
    if let Some(text) = &s.session_key {
        return SessionKey::parse(text).map_err(|e| anyhow::anyhow!("--session-key: {e}"));
    }
    let path = s.data_dir.join("session.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => SessionKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let (key, text) = SessionKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("create {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a session key; keep it with the database");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// `standalone`: runs until SIGTERM. Returns the exit code.
pub async fn standalone(s: StandaloneSettings) -> anyhow::Result<i32> {
    let declared = load(&s.dir, &s.namespace)?;
    let plan = plan(&declared, s.crm_requests_per_second);
    for (account, why) in &plan.skipped {
        tracing::error!(account, "not started: {why}");
    }
    if plan.accounts.is_empty() {
        bail!("no account in {} can run ({} declared)", s.dir.display(), declared.accounts.len());
    }
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("create {}", s.data_dir.display()))?;
    let key = session_key(&s)?;
    let url =
        s.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", s.data_dir.join("crmessenger.db").display()));
    let store = Store::connect(&url, POOL_SIZE).await.context("open the database")?;
    let secrets = secrets_of(&declared);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::default());
    let admin = Admin { accounts: Arc::default(), store: store.clone(), metrics: metrics.clone() };

    let admin_listener = tokio::net::TcpListener::bind(s.admin_addr).await.context("bind the admin address")?;
    let login_listener = tokio::net::TcpListener::bind(s.login_addr).await.context("bind the login address")?;
    let gateway_listener = tokio::net::TcpListener::bind(s.gateway_addr).await.context("bind the gateway address")?;
    let admin_url = format!("http://{}", admin_listener.local_addr()?);
    let gateway_url = match &s.gateway_url {
        Some(u) => u.clone(),
        None => format!("http://{}", gateway_listener.local_addr()?),
    };
    tracing::info!(admin = %admin_listener.local_addr()?, login = %login_listener.local_addr()?, gateway = %gateway_listener.local_addr()?, "listening");
    // One host: metrics share the admin port (loopback by default).
    let admin_router = admin.clone().router().merge(admin.clone().metrics_router());
    tokio::spawn(crate::http::serve(admin_listener, admin_router, crate::http::Limits::default()));
    let sidecar = crate::sidecar::Sidecar::new(&admin_url)?;
    tokio::spawn(crate::http::serve(login_listener, sidecar.router(), crate::http::Limits::default()));
    // The same store: on SQLite its in-process wake-ups are how a stored webhook
    // reaches its account at once.
    let chats_secret = s.chats.as_ref().map(|c| c.secret.clone());
    let gateway =
        Gateway::new(store.clone()).with_chats_secret(chats_secret).with_whatsapp(s.whatsapp.clone()).router();
    tokio::spawn(crate::http::serve(gateway_listener, gateway, crate::http::Limits::default()));

    let (stop_tx, stop_rx) = watch::channel(false);
    // Attachments for the CRM are served by the in-process gateway.
    let chats = s.chats.clone().map(|c| crate::app::ChatsSettings { media_url: Some(gateway_url.clone()), ..c });
    let mut tokens: BTreeMap<String, Arc<StoredToken>> = BTreeMap::new();
    let mut tasks = Vec::new();
    for (config, bootstrap) in &plan.accounts {
        let account = format!("{}/{}", config.account.namespace, config.account.name);
        let ns = &config.account.namespace;
        let ca_pem = config
            .crm
            .amocrm
            .ca_secret
            .as_ref()
            .and_then(|r| secrets.get(&(ns.clone(), r.name.clone())).and_then(|d| d.get(&r.key)).cloned());
        let binding = format!("{}/{}", config.binding.namespace, config.binding.name);
        let token = match tokens.get(&binding) {
            Some(t) => t.clone(),
            None => {
                let t = StoredToken::new(
                    config,
                    bootstrap.clone(),
                    ca_pem.as_deref(),
                    store.clone(),
                    key.clone(),
                    clock.clone(),
                )
                .map(Arc::new);
                match t {
                    Ok(t) => {
                        tokens.insert(binding.clone(), t.clone());
                        t
                    }
                    Err(e) => {
                        tracing::error!(account, binding, "not started: {e}");
                        continue;
                    }
                }
            }
        };
        let values: crate::app::SecretValues = config
            .secret_refs()
            .into_iter()
            .filter_map(|r| {
                let v = secrets.get(&(ns.clone(), r.name.clone()))?.get(&r.key)?.clone();
                Some(((r.name, r.key), v))
            })
            .collect();
        let scripted = scripted_url(&s.scripted_messengers, &account);
        // One pool for every account, but each account fences its own writes.
        let store = store.with_own_fence();
        let messenger = match crate::app::messenger_for(config, &store, scripted, &values, Some(&key)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(account, "not started: {e:#}");
                continue;
            }
        };
        let parts = match build_account(
            config,
            &store,
            token,
            ca_pem,
            messenger,
            chats.as_ref(),
            clock.clone(),
            metrics.clone(),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(account, "not started: {e:#}");
                continue;
            }
        };
        if let Ok(mut list) = admin.accounts.write() {
            list.push(AccountHandle {
                key: parts.key.clone(),
                state: parts.state.clone(),
                messenger: parts.messenger.clone(),
            });
        }
        let (store, gateway_url, stop) = (store.clone(), gateway_url.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move { serve_account(parts, store, gateway_url, stop).await }));
    }
    if tasks.is_empty() {
        bail!("no account could be started");
    }
    tokio::spawn(refresh_tokens(tokens.into_values().collect(), stop_rx.clone()));
    terminated().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    Ok(0)
}

async fn serve_account(
    parts: crate::app::AccountParts,
    store: Store,
    gateway_url: String,
    mut stop: watch::Receiver<bool>,
) {
    let state = parts.state.clone();
    let key = parts.key.clone();
    loop {
        let lock = tokio::select! {
            lock = AccountLock::acquire(&store, &key, |why| {
                tracing::warn!(account = key, "{why}");
                state.update(|s| s.waiting = Some(why.to_string()));
            }) => lock,
            _ = stopped(&mut stop) => return,
        };
        let lock = match lock {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(account = key, "account lock: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        parts.state.update(|s| {
            s.waiting = None;
            s.holds_lock = true;
        });
        let mut registered = register_routes(&parts, &store, Some(&gateway_url)).await;
        while let Err(e) = registered {
            tracing::warn!(account = key, "registering webhook routes: {e:#}; retrying in 10 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = stopped(&mut stop) => return lock.release().await,
            }
            registered = register_routes(&parts, &store, Some(&gateway_url)).await;
        }
        tracing::info!(account = key, "running");
        parts.bridge.clone().run(&lock, stop.clone()).await;
        if lock.is_lost() {
            tracing::error!(account = key, "the account lock was lost; waiting for it again");
            // Another connector may take the account over: this one lets go of
            // the messenger at once (it connects again once it holds the lock).
            parts.messenger.disconnect().await;
            parts.state.update(|s| s.holds_lock = false);
            continue;
        }
        lock.release().await;
        tracing::info!(account = key, "stopped");
        return;
    }
}

/// Resolves once `stop` turns true (the guard `wait_for` returns is not held).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn refresh_tokens(tokens: Vec<Arc<StoredToken>>, mut stop: watch::Receiver<bool>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crmessenger_crm::budget::Limit;

    const DIR: &str = r#"
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {name: shop-bot}
spec:
  provider: telegram
  telegram: {loginMethod: botToken, apiCredentials: {secretName: tg}, botToken: {name: tg, key: bot}}
---
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {name: orphan}
spec:
  provider: telegram
  telegram: {loginMethod: botToken, apiCredentials: {secretName: tg}, botToken: {name: tg, key: bot}}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {name: amo}
spec:
  accountNames: [shop-bot]
  policyRef: {name: default}
  crm: {type: amocrm, amocrm: {baseUrl: "https://shop.amocrm.ru", credentialsSecret: {name: amo}}}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {name: default}
spec: {}
---
apiVersion: v1
kind: Secret
metadata: {name: amo}
stringData: {long_lived_token: t}
"#;

    fn with_tg(extra: &str) -> Manifests {
        manifests::parse(
            &format!("{DIR}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tg}}\nstringData: {extra}\n"),
            "home",
        )
        .unwrap()
    }

    fn plan_default(m: &Manifests) -> Plan {
        plan(m, Limit::AMOCRM_REST.rate)
    }

    #[test]
    fn plans_bound_accounts_and_says_why_others_cannot_run() {
        let p = plan_default(&with_tg("{api_id: '1', api_hash: h, bot: b}"));
        assert_eq!(p.accounts.len(), 1);
        assert_eq!(p.accounts[0].0.account.name, "shop-bot");
        assert_eq!(p.skipped, vec![("home/orphan".to_string(), "no CrmBinding selects this account".to_string())]);
    }

    #[test]
    fn a_missing_secret_key_is_named() {
        let p = plan_default(&with_tg("{api_id: '1', api_hash: h}"));
        assert!(p.accounts.is_empty());
        assert_eq!(p.skipped[0], ("home/shop-bot".to_string(), "Secret tg has no key bot".to_string()));
    }

    #[test]
    fn scripted_urls_per_account_or_for_all() {
        let e = vec!["home/a=http://one".to_string(), "http://all".to_string()];
        assert_eq!(scripted_url(&e, "home/a"), Some("http://one"));
        assert_eq!(scripted_url(&e, "home/b"), Some("http://all"));
        assert_eq!(scripted_url(&e[..1], "home/b"), None);
    }
}
