//! The subcommands put together: one account's runtime (shared by `run` in a
//! cluster and `standalone` on one host), the gateway, the sidecar and `replay`.

use crate::admin::{AccountHandle, Admin};
use crate::bridge::{Bridge, BridgeSettings, ReplySource};
use crate::gateway::{Gateway, ROUTE_BINDING_CRM};
use crate::kube::{KubeEnv, SecretToken, StatusRenderer};
use crate::messenger::Messenger;
use crate::messenger::scripted::Scripted;
use crate::messenger::telegram;
use crate::metrics::Metrics;
use crate::state::StateCell;
use crate::store::budget::DbBudgetStore;
use crate::store::crypto::SessionKey;
use crate::store::lock::AccountLock;
use crate::store::{POOL_SIZE, Store};
use anyhow::{Context, bail};
use crmessenger_api::account::Provider;
use crmessenger_api::account::TelegramLoginMethod;
use crmessenger_api::binding::ReplyDetection;
use crmessenger_api::common::SecretKeyRef;
use crmessenger_api::common::parse_duration;
use crmessenger_api::config::ConnectorConfig;
use crmessenger_crm::amocrm::{AmoConfig, AmoCrm, IdentityFields, TokenSource, Transport};
use crmessenger_crm::budget::{Budget, Limit};
use crmessenger_crm::clock::{Clock, SystemClock};
use crmessenger_crm::{Channel, Crm};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The parts of one account, built from its config.
pub struct AccountParts {
    /// `namespace/name`.
    pub key: String,
    /// The CRM adapter.
    pub crm: Arc<AmoCrm>,
    /// The messenger adapter.
    pub messenger: Arc<dyn Messenger>,
    /// The bridge.
    pub bridge: Arc<Bridge>,
    /// The account's state.
    pub state: Arc<StateCell>,
    /// The REST budget (its rate follows the config without a restart).
    pub budget: Budget,
    /// The Chats API channel, when the binding sends messages to the CRM's chat.
    pub chats: Option<ChatsSettings>,
    /// The WhatsApp phone number id whose webhooks are this account's.
    pub wa_number: Option<String>,
}

/// The installation's amoCRM Chats API channel (one per installation).
#[derive(Clone)]
pub struct ChatsSettings {
    /// The amojo host, e.g. `https://amojo.amocrm.ru`.
    pub base_url: String,
    /// Channel id.
    pub channel_id: String,
    /// Channel secret (signs requests and hooks).
    pub secret: String,
    /// The gateway's public URL, under which attachments are served to amoCRM
    /// (without one, a media message goes as its text and a description).
    pub media_url: Option<String>,
}

impl std::fmt::Debug for ChatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatsSettings").field("base_url", &self.base_url).field("channel_id", &self.channel_id).finish()
    }
}

impl ChatsSettings {
    /// From the three values, when the channel id and secret are both set.
    pub fn from_parts(base_url: Option<String>, channel_id: Option<String>, secret: Option<String>) -> Option<Self> {
        Some(Self {
            base_url: base_url.filter(|s| !s.is_empty()).unwrap_or_else(|| "https://amojo.amocrm.ru".into()),
            channel_id: channel_id.filter(|s| !s.is_empty())?,
            secret: secret.filter(|s| !s.is_empty())?,
            media_url: None,
        })
    }
}

/// The budget rate a config asks for (amoCRM's documented limit when unset).
pub fn limit_of(config: &ConnectorConfig) -> Limit {
    let rps = config.runtime.crm_requests_per_second;
    if rps > 0.0 { Limit { rate: rps, burst: 1 } } else { Limit::AMOCRM_REST }
}

/// Secret values a config names, by (Secret name, key).
pub type SecretValues = BTreeMap<(String, String), String>;

fn secret(values: &SecretValues, r: &SecretKeyRef) -> anyhow::Result<String> {
    values
        .get(&(r.name.clone(), r.key.clone()))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("Secret {} has no key {}", r.name, r.key))
}

/// The Telegram adapter's settings from a config and the Secret values it names.
pub fn telegram_settings(config: &ConnectorConfig, values: &SecretValues) -> anyhow::Result<telegram::Settings> {
    let t = config.telegram.as_ref().context("the account has no telegram settings")?;
    let creds = &t.api_credentials;
    let id_ref = SecretKeyRef { name: creds.secret_name.clone(), key: creds.api_id_key.clone() };
    let api_id: i32 = secret(values, &id_ref)?.trim().parse().map_err(|_| {
        anyhow::anyhow!("Secret {} key {}: api_id must be the number from my.telegram.org", id_ref.name, id_ref.key)
    })?;
    let api_hash = secret(values, &SecretKeyRef { name: creds.secret_name.clone(), key: creds.api_hash_key.clone() })?;
    let login = match t.login_method {
        TelegramLoginMethod::Qr => telegram::LoginMethod::Qr,
        TelegramLoginMethod::PhoneCode => telegram::LoginMethod::PhoneCode {
            phone: t.phone_number.clone().context("loginMethod phoneCode needs phoneNumber")?,
        },
        TelegramLoginMethod::BotToken => telegram::LoginMethod::Bot {
            token: secret(values, t.bot_token.as_ref().context("loginMethod botToken needs botToken")?)?
                .trim()
                .to_string(),
        },
    };
    let account = format!("{}/{}", config.account.namespace, config.account.name);
    let mut s = telegram::Settings::new(&account, api_id, api_hash.trim(), login);
    s.password = t.two_factor_password.as_ref().map(|r| secret(values, r)).transpose()?;
    s.max_media_bytes = config.policy.media.max_size_mib.max(1) as u64 * 1024 * 1024;
    Ok(s)
}

/// The account's messenger adapter: the scripted messenger at `scripted_url`
/// (tests and demos), or the provider's real adapter.
pub async fn messenger_for(
    config: &ConnectorConfig,
    store: &Store,
    scripted_url: Option<&str>,
    values: &SecretValues,
    session_key: Option<&SessionKey>,
) -> anyhow::Result<Arc<dyn Messenger>> {
    if let Some(url) = scripted_url {
        return Ok(Arc::new(Scripted::new(url)?));
    }
    match config.provider {
        Provider::Telegram => {
            let settings = telegram_settings(config, values)?;
            let key = session_key.context(
                "Telegram sessions are kept encrypted in the database: give the connector a session key (CRMESSENGER_SESSION_KEY or --session-key)",
            )?;
            let session = Arc::new(
                telegram::session::DbSession::load(store.clone(), key.clone(), &settings.account)
                    .await
                    .context("load the Telegram session")?,
            );
            let rpc = telegram::rpc::GrammersRpc::start(
                session.clone(),
                settings.api_id,
                &telegram::rpc::Device::default(),
                TELEGRAM_UPDATES_CAPACITY,
            );
            Ok(Arc::new(telegram::Telegram::new(settings, Arc::new(rpc), session)))
        }
        Provider::Whatsapp if config.whatsapp.as_ref().is_some_and(|w| w.cloud_api.is_none()) => {
            whatsapp_web(config, store, session_key)
        }
        Provider::Whatsapp => {
            let settings = whatsapp_settings(config, values)?;
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            Ok(Arc::new(crate::messenger::whatsapp::WhatsApp::new(settings, store.clone(), clock)?))
        }
    }
}

/// WhatsApp Web pairing, in connectors built with the `whatsapp-web` feature.
#[cfg(feature = "whatsapp-web")]
fn whatsapp_web(
    config: &ConnectorConfig,
    store: &Store,
    session_key: Option<&SessionKey>,
) -> anyhow::Result<Arc<dyn Messenger>> {
    let key = session_key.context(
        "WhatsApp Web sessions are kept encrypted in the database: give the connector a session key (CRMESSENGER_SESSION_KEY or --session-key)",
    )?;
    let account = format!("{}/{}", config.account.namespace, config.account.name);
    tracing::warn!(account, "WhatsApp Web pairing is unofficial: WhatsApp may ban numbers that use it");
    Ok(Arc::new(crate::messenger::whatsapp_web::WhatsAppWeb::start(&account, store.clone(), key.clone())))
}

/// WhatsApp Web pairing is not in connectors built without the feature.
#[cfg(not(feature = "whatsapp-web"))]
fn whatsapp_web(
    _config: &ConnectorConfig,
    _store: &Store,
    _session_key: Option<&SessionKey>,
) -> anyhow::Result<Arc<dyn Messenger>> {
    bail!(
        "WhatsApp Web pairing (loginMethod: qr) is not in this connector build (cargo feature whatsapp-web); use loginMethod: cloudApi, the official Cloud API"
    )
}

/// The WhatsApp adapter's settings from a config and the Secret values it names.
/// The Graph API base is `CRMESSENGER_WHATSAPP_GRAPH_URL` when set.
pub fn whatsapp_settings(
    config: &ConnectorConfig,
    values: &SecretValues,
) -> anyhow::Result<crate::messenger::whatsapp::Settings> {
    let w = config.whatsapp.as_ref().context("the account has no whatsapp settings")?;
    let Some(cloud) = &w.cloud_api else {
        bail!("loginMethod qr pairs WhatsApp Web; it has no Cloud API settings");
    };
    Ok(crate::messenger::whatsapp::Settings {
        account: format!("{}/{}", config.account.namespace, config.account.name),
        graph_url: std::env::var("CRMESSENGER_WHATSAPP_GRAPH_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| crate::messenger::whatsapp::GRAPH_URL.into()),
        phone_number_id: cloud.phone_number_id.clone(),
        access_token: secret(values, &cloud.access_token)?.trim().to_string(),
        template: config.policy.whatsapp.as_ref().and_then(|p| p.outside_window_template.clone()),
        max_media_bytes: config.policy.media.max_size_mib.max(1) as u64 * 1024 * 1024,
        ca_pem: None,
    })
}

/// grammers' own update channel: drained at once into the adapter's queue.
pub const TELEGRAM_UPDATES_CAPACITY: usize = 1_000;

/// Builds an account's parts around its messenger adapter.
#[allow(clippy::too_many_arguments)]
pub fn build_account(
    config: &ConnectorConfig,
    store: &Store,
    tokens: Arc<dyn TokenSource>,
    ca_pem: Option<String>,
    messenger: Arc<dyn Messenger>,
    chats: Option<&ChatsSettings>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<AccountParts> {
    let key = format!("{}/{}", config.account.namespace, config.account.name);
    let amo = &config.crm.amocrm;
    let budget = Budget::new(
        Arc::new(DbBudgetStore::new(store.clone())),
        clock.clone(),
        format!("amocrm-rest:{}", amo.base_url.trim_end_matches('/')),
        limit_of(config),
    );
    let timeout = Duration::from_secs(10);
    let rest = Transport::new(&amo.base_url, ca_pem.as_deref(), budget.clone(), tokens, timeout)?;
    let crm = Arc::new(AmoCrm::new(
        AmoConfig {
            base_url: amo.base_url.clone(),
            ca_pem,
            identity_fields: IdentityFields {
                telegram_user_id: amo.contact_fields.telegram_user_id,
                telegram_username: amo.contact_fields.telegram_username,
                whatsapp_id: amo.contact_fields.whatsapp_id,
            },
            reply_prefix: amo.replies.note_prefix.clone(),
            request_timeout: timeout,
            chats: None,
        },
        rest,
        clock.clone(),
    )?);
    let replies = match amo.replies.detection {
        ReplyDetection::Webhook => ReplySource::Webhook,
        ReplyDetection::Poll => {
            ReplySource::Poll(parse_duration(&amo.replies.poll_interval).unwrap_or(Duration::from_secs(10)))
        }
    };
    let chats = match (amo.chats_channel, chats) {
        (true, Some(c)) => Some(c.clone()),
        (true, None) => bail!(
            "the binding asks for the Chats API (chatsChannel: true), but this installation has no Chats API channel (channel id and secret)"
        ),
        (false, _) => None,
    };
    let state = Arc::new(StateCell::new(&key));
    let settings = BridgeSettings {
        account: key.clone(),
        binding: format!("{}/{}", config.binding.namespace, config.binding.name),
        crm_key: amo.base_url.trim_end_matches('/').to_string(),
        channel: match config.provider {
            Provider::Telegram => Channel::Telegram,
            Provider::Whatsapp => Channel::Whatsapp,
        },
        policy: config.policy.clone(),
        pipeline_id: amo.pipeline_id,
        status_id: amo.status_id,
        responsible_user_ids: amo.responsible_user_ids.clone(),
        replies,
        chats: chats.is_some(),
        media_url: chats.as_ref().and_then(|c| c.media_url.clone()),
    };
    let bridge = Arc::new(Bridge::new(
        settings,
        store.clone(),
        crm.clone() as Arc<dyn Crm>,
        messenger.clone(),
        clock,
        metrics,
        state.clone(),
    ));
    let wa_number = config.whatsapp.as_ref().and_then(|w| w.cloud_api.as_ref()).map(|c| c.phone_number_id.clone());
    Ok(AccountParts { key, crm, messenger, bridge, state, budget, chats, wa_number })
}

/// Registers what the gateway needs to route this account's webhooks, and
/// subscribes the binding's webhook when replies come that way.
pub async fn register_routes(parts: &AccountParts, store: &Store, gateway_url: Option<&str>) -> anyhow::Result<()> {
    let s = parts.bridge.settings();
    if let Some(c) = &parts.chats {
        parts
            .crm
            .attach_chats(&c.base_url, &c.channel_id, &c.secret, "CRMessenger")
            .await
            .context("connect the Chats API channel to the amoCRM account")?;
    }
    store.put_route(ROUTE_BINDING_CRM, &s.binding, &s.crm_key).await?;
    if let Some(number) = &parts.wa_number {
        // The gateway hands this number's webhooks to this account.
        store.put_route(crate::gateway::ROUTE_WA_NUMBER, number, &parts.key).await?;
    }
    if s.replies == ReplySource::Webhook {
        let Some(gateway) = gateway_url else {
            bail!("the binding's replies.detection is webhook, but no gateway URL is configured (--gateway-url)");
        };
        let token = store.webhook_token(&s.binding).await?;
        let url = format!("{}/amocrm/webhook/{token}", gateway.trim_end_matches('/'));
        parts.crm.subscribe_webhook(&url, &["note_lead"]).await.context("subscribe the amoCRM webhook")?;
        // From here the holder of the binding's webhook duty keeps it subscribed.
        parts.bridge.set_webhook_url(url);
    }
    Ok(())
}

/// Resolves when SIGTERM or SIGINT arrives.
pub use crmessenger_telemetry::shutdown_signal as terminated;

/// Settings of `run`.
pub struct RunSettings {
    /// Database URL.
    pub database_url: String,
    /// Admin (health; status and login for loopback) address.
    pub admin_addr: std::net::SocketAddr,
    /// Metrics address (the only port the account's NetworkPolicy admits).
    pub metrics_addr: std::net::SocketAddr,
    /// The gateway's public URL (for webhook subscriptions).
    pub gateway_url: Option<String>,
    /// The session key (messenger sessions at rest).
    pub session_key: Option<String>,
    /// The installation's Chats API channel (its `media_url` the gateway's).
    pub chats: Option<ChatsSettings>,
    /// The scripted messenger's URL (tests and demos).
    pub scripted_messenger: Option<String>,
    /// Where the connector is in the cluster.
    pub env: KubeEnv,
}

/// `run`: one account, in a cluster. Returns the process exit code.
pub async fn run(settings: RunSettings) -> anyhow::Result<i32> {
    // Checked at start so a bad key fails the pod at once, not at the first login.
    let session_key = match &settings.session_key {
        Some(text) => Some(
            crate::store::crypto::SessionKey::parse(text)
                .map_err(|e| anyhow::anyhow!("CRMESSENGER_SESSION_KEY: {e}"))?,
        ),
        None => None,
    };
    let env = settings.env.clone();
    let config = env.config().await?;
    let ns = env.namespace.clone();
    // Every Secret the config names must exist and hold its key; say which is missing.
    let mut values = SecretValues::new();
    for r in config.secret_refs() {
        let value = crate::kube::secret_value(&env.client, &ns, &r).await?;
        values.insert((r.name, r.key), value);
    }
    let ca_pem = match &config.crm.amocrm.ca_secret {
        Some(r) => Some(crate::kube::secret_value(&env.client, &ns, r).await?),
        None => None,
    };
    let store = Store::connect(&settings.database_url, POOL_SIZE).await.context("connect to the database")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::default());
    let tokens = Arc::new(SecretToken::new(env.client.clone(), &ns, config.crm.token.clone()));
    let messenger =
        messenger_for(&config, &store, settings.scripted_messenger.as_deref(), &values, session_key.as_ref()).await?;
    let parts = build_account(
        &config,
        &store,
        tokens.clone(),
        ca_pem,
        messenger,
        settings.chats.as_ref(),
        clock.clone(),
        metrics.clone(),
    )?;
    let admin = Admin {
        accounts: Arc::new(std::sync::RwLock::new(vec![AccountHandle {
            key: parts.key.clone(),
            state: parts.state.clone(),
            messenger: parts.messenger.clone(),
        }])),
        store: store.clone(),
        metrics: metrics.clone(),
    };
    serve_admin(admin, settings.admin_addr, settings.metrics_addr).await?;

    let state = parts.state.clone();
    let lock = tokio::select! {
        lock = AccountLock::acquire(&store, &parts.key, |why| {
            tracing::warn!(account = parts.key, "{why}");
            state.update(|s| s.waiting = Some(why.to_string()));
        }) => lock?,
        _ = terminated() => return Ok(0),
    };
    parts.state.update(|s| {
        s.waiting = None;
        s.holds_lock = true;
    });
    tracing::info!(account = parts.key, "holding the account lock");
    register_routes(&parts, &store, settings.gateway_url.as_deref()).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let hash = config.hash();
    let background = vec![
        tokio::spawn(heartbeat(env.clone(), stop_rx.clone())),
        tokio::spawn(report_status(
            env.clone(),
            parts.state.clone(),
            hash.clone(),
            login_method(&config),
            stop_rx.clone(),
        )),
        tokio::spawn(follow_config(env.clone(), hash, parts.budget.clone(), tokens, stop_tx.clone())),
        tokio::spawn(login_from_secret(env.clone(), parts.messenger.clone(), parts.state.clone(), stop_rx.clone())),
    ];
    let deletion = tokio::spawn(watch_deletion(
        env.clone(),
        parts.messenger.clone(),
        store.clone(),
        parts.key.clone(),
        stop_tx.clone(),
    ));
    let bridge = parts.bridge.clone();
    let by_signal = {
        let bridge_run = bridge.run(&lock, stop_rx.clone());
        tokio::pin!(bridge_run);
        let by_signal = tokio::select! {
            _ = &mut bridge_run => false,
            _ = terminated() => true,
        };
        if by_signal {
            // Stop taking work; the calls in flight finish (bounded by the bridge).
            tracing::info!(account = parts.key, "SIGTERM: finishing the calls in flight");
            let _ = stop_tx.send(true);
            bridge_run.await;
        }
        by_signal
    };
    let lost = lock.is_lost();
    if *stop_rx.borrow() && !lost && !by_signal {
        // Stopped for deletion: let the cleanup finish and confirm.
        let _ = tokio::time::timeout(Duration::from_secs(60), deletion).await;
    } else {
        deletion.abort();
    }
    let _ = stop_tx.send(true);
    for t in background {
        t.abort();
    }
    if lost {
        parts.messenger.disconnect().await;
        tracing::error!(account = parts.key, "exiting: the account lock was lost");
        return Ok(1);
    }
    lock.release().await;
    tracing::info!(account = parts.key, "stopped");
    Ok(0)
}

fn login_method(config: &ConnectorConfig) -> String {
    let v = match (&config.telegram, &config.whatsapp) {
        (Some(t), _) => serde_json::to_value(t.login_method),
        (_, Some(w)) => serde_json::to_value(w.login_method),
        _ => return String::new(),
    };
    v.ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

async fn heartbeat(env: KubeEnv, stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if let Err(e) = env.renew().await {
            tracing::warn!("could not renew the Lease {}: {e}", env.lease);
        }
        tokio::time::sleep(crate::kube::RENEW_EVERY).await;
    }
}

async fn report_status(env: KubeEnv, state: Arc<StateCell>, hash: String, method: String, stop: watch::Receiver<bool>) {
    let mut renderer = StatusRenderer::default();
    let mut rx = state.subscribe();
    let mut last: Option<serde_json::Value> = None;
    while !*stop.borrow() {
        let doc = renderer.render(&state.get(), &hash, &env.pod, &method);
        if last.as_ref() != Some(&doc) {
            match env.apply_status(doc.clone()).await {
                Ok(()) => last = Some(doc),
                Err(e) => tracing::warn!("could not write the account status: {e}"),
            }
        }
        tokio::time::sleep(crate::kube::STATUS_EVERY).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
    }
}

/// While the messenger waits for a login code or password, takes it from the
/// account's `<account>-login` Secret (`code`, `password` keys) and deletes the
/// Secret once used, so the value is not left behind.
async fn login_from_secret(
    env: KubeEnv,
    messenger: Arc<dyn Messenger>,
    state: Arc<StateCell>,
    stop: watch::Receiver<bool>,
) {
    use crate::messenger::LoginState;
    while !*stop.borrow() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let wants = match state.get().login {
            Some(LoginState::CodeRequired) => "code",
            Some(LoginState::PasswordRequired) => "password",
            _ => continue,
        };
        let (code, password) = match env.login_secret_values().await {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("reading the Secret {}: {e}", env.login_secret());
                continue;
            }
        };
        let (code, password) = if wants == "code" { (code, password) } else { (None, password) };
        if code.is_none() && password.is_none() {
            continue;
        }
        match messenger.submit_login(code.as_deref(), password.as_deref()).await {
            Ok(()) => tracing::info!("login {wants} from the Secret {} accepted", env.login_secret()),
            Err(e) => tracing::warn!("login {wants} from the Secret {} refused: {e}", env.login_secret()),
        }
        // Used (accepted or not): a wrong value must be replaced, not retried.
        if let Err(e) = env.delete_login_secret().await {
            tracing::warn!("could not delete the Secret {}: {e}", env.login_secret());
        }
        // The ingest loop notices the new login state.
        state.update(|s| s.login = None);
    }
}

/// Applies config changes that need no restart (budget rate, token version); a
/// change of anything else is left to the pod rollout the operator starts.
async fn follow_config(
    env: KubeEnv,
    hash: String,
    budget: Budget,
    tokens: Arc<SecretToken>,
    stop: watch::Sender<bool>,
) {
    let mut token_version: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if *stop.borrow() {
            return;
        }
        let config = match env.config().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("config: {e}");
                continue;
            }
        };
        let limit = limit_of(&config);
        if budget.limit() != limit {
            tracing::info!(rate = limit.rate, "CRM request budget changed");
            budget.set_limit(limit);
        }
        if config.runtime.token_version != token_version {
            if token_version.is_some() {
                tokens.invalidate();
            }
            token_version = config.runtime.token_version.clone();
        }
        if config.hash() != hash {
            tracing::info!("the config changed in a way that needs a restart; the operator rolls the pod");
        }
    }
}

/// On account deletion: log the messenger out, purge the account's rows, and
/// confirm in status so the operator removes its finalizer.
async fn watch_deletion(
    env: KubeEnv,
    messenger: Arc<dyn Messenger>,
    store: Store,
    key: String,
    stop: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let deleting = matches!(env.account().await, Ok(Some(a)) if a.metadata.deletion_timestamp.is_some());
        if !deleting {
            continue;
        }
        tracing::info!(account = key, "the account is being deleted: logging out and purging its data");
        let _ = stop.send(true);
        if let Err(e) = messenger.logout().await {
            tracing::warn!(account = key, "messenger logout failed: {e}");
        }
        if let Err(e) = store.purge(&key).await {
            tracing::error!(account = key, "purge failed: {e}");
            continue;
        }
        let now = jiff::Timestamp::now().to_string();
        match env.apply_status(serde_json::json!({ "connector": { "cleanupCompletedAt": now } })).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("could not confirm the cleanup: {e}"),
        }
    }
}

/// Serves the admin port on `admin_addr` and metrics on `metrics_addr` (in the
/// background, once both are bound).
async fn serve_admin(
    admin: Admin,
    admin_addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(admin_addr).await.context("bind the admin address")?;
    let metrics = tokio::net::TcpListener::bind(metrics_addr).await.context("bind the metrics address")?;
    tracing::info!(admin = %listener.local_addr()?, metrics = %metrics.local_addr()?, "admin and metrics ports listening");
    tokio::spawn(crate::http::serve(listener, admin.clone().router(), crate::http::Limits::default()));
    tokio::spawn(crate::http::serve(metrics, admin.metrics_router(), crate::http::Limits::default()));
    Ok(())
}

/// `gateway`: serves webhooks until SIGTERM; `chats_secret` verifies Chats API
/// hooks, `whatsapp` the Meta app's webhooks.
pub async fn gateway(
    database_url: &str,
    listen: std::net::SocketAddr,
    chats_secret: Option<String>,
    whatsapp: Option<crate::gateway::WhatsAppApp>,
) -> anyhow::Result<i32> {
    let store =
        Store::connect(database_url, crate::store::GATEWAY_POOL_SIZE).await.context("connect to the database")?;
    let listener = tokio::net::TcpListener::bind(listen).await.context("bind the gateway address")?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let router = Gateway::new(store).with_chats_secret(chats_secret).with_whatsapp(whatsapp).router();
    crate::http::serve_until(listener, router, crate::http::Limits::default(), terminated()).await?;
    Ok(0)
}

/// `sidecar`: serves the login and status pages until SIGTERM.
pub async fn sidecar(admin_url: &str, listen: std::net::SocketAddr) -> anyhow::Result<i32> {
    let listener = tokio::net::TcpListener::bind(listen).await.context("bind the sidecar address")?;
    tracing::info!(addr = %listener.local_addr()?, "sidecar listening");
    let router = crate::sidecar::Sidecar::new(admin_url)?.router();
    crate::http::serve_until(listener, router, crate::http::Limits::default(), terminated()).await?;
    Ok(0)
}

/// `replay`: lists the account's dead letters and puts them back in their queues.
pub async fn replay(database_url: &str, account: &str) -> anyhow::Result<i32> {
    let store = Store::connect(database_url, 1).await.context("connect to the database")?;
    let dead = store.dead_letters(account).await?;
    for d in &dead {
        println!("{} #{} chat {}: {}", d.queue, d.seq, d.chat_id, d.reason);
    }
    let n = store.replay_dead(account).await?;
    println!("re-queued {n} dead letter(s) of {account}");
    Ok(0)
}
