//! `standalone -f DIR`: one host, no Kubernetes. Reads the same resource manifests
//! a cluster would get (MessengerAccount, CrmBinding, SyncPolicy, and the Secrets
//! they name), renders each account's config with the operator's pure function,
//! keeps the CRM token pairs (shared OAuth code, pairs sealed in the database) and
//! runs every account, the gateway and the login pages in one process — on SQLite
//! by default, or on PostgreSQL with `--database-url`.

mod keyfile;
pub mod plan;
mod token;

use keyfile::session_key;
pub use plan::{Plan, load, plan, scripted_url, secrets_of};
pub use token::StoredToken;
use token::refresh_tokens;

use crate::admin::{AccountHandle, Admin};
use crate::app::serve::{self};
use crate::app::{build_account, terminated};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::store::{POOL_SIZE, Store};
use anyhow::{Context, bail};
use crmessenger_crm::clock::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
        // No operator here: the connector finds or creates the identity fields.
        let mut config = config.clone();
        identity_fields(&mut config, token.clone(), ca_pem.as_deref(), &account).await;
        let parts = match build_account(
            &config,
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

/// Fills the contacts' identity fields the binding does not name with the ones
/// found or created in the CRM (as the operator does in a cluster); without an
/// administrator's token it says which fields to create, and customers are then
/// matched by phone only.
async fn identity_fields(
    config: &mut crmessenger_api::config::ConnectorConfig,
    tokens: Arc<dyn crmessenger_crm::amocrm::TokenSource>,
    ca_pem: Option<&str>,
    account: &str,
) {
    use crmessenger_crm::amocrm::identity::{self, Outcome};
    let amo = &mut config.crm.amocrm;
    let f = &mut amo.contact_fields;
    if f.telegram_user_id.is_some() && f.telegram_username.is_some() && f.whatsapp_id.is_some() {
        return;
    }
    let budget = crmessenger_crm::budget::Budget::in_memory(
        Arc::new(SystemClock),
        format!("identity-fields:{}", amo.base_url),
        crmessenger_crm::budget::Limit::AMOCRM_REST,
    );
    let looked =
        match crmessenger_crm::amocrm::Transport::new(&amo.base_url, ca_pem, budget, tokens, Duration::from_secs(10)) {
            Ok(rest) => identity::ensure(&rest).await,
            Err(e) => Err(e),
        };
    match looked {
        Ok(Outcome::Ready(ids)) => {
            let f = &mut amo.contact_fields;
            f.telegram_user_id = f.telegram_user_id.or(ids.telegram_user_id);
            f.telegram_username = f.telegram_username.or(ids.telegram_username);
            f.whatsapp_id = f.whatsapp_id.or(ids.whatsapp_id);
        }
        Ok(Outcome::AdminRequired(missing)) => {
            let codes: Vec<&str> = missing.iter().map(|m| m.code).collect();
            tracing::warn!(
                account,
                "the token may not create contact fields: create text fields of contacts with the codes {} or name fields in spec.crm.amocrm.contactFields; until then customers are matched by phone only",
                codes.join(", ")
            );
        }
        Err(e) => tracing::warn!(account, "looking up the contacts' identity fields: {e}"),
    }
}

/// Serves one account until `stop`; a lost lock is waited for again (another
/// process may have taken the account over and may give it back).
async fn serve_account(
    parts: crate::app::AccountParts,
    store: Store,
    gateway_url: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some(lock) = serve::start(&parts, &store, Some(&gateway_url), &mut stop).await else { return };
        parts.bridge.clone().run(&lock, stop.clone()).await;
        match serve::finish(&parts, lock).await {
            serve::Ended::LockLost => tracing::warn!(account = parts.key, "waiting for the account lock again"),
            serve::Ended::Stopped => return,
        }
    }
}
