//! The subcommands put together: `run` (one account in a cluster), the gateway,
//! the sidecar and `replay`. One account's parts are built in [`parts`] and served
//! by the sequence in [`serve`], both shared with `standalone`.

mod parts;
pub mod serve;

pub use parts::*;

use crate::admin::{AccountHandle, Admin};
use crate::gateway::Gateway;
use crate::kube::{KubeEnv, SecretToken, StatusRenderer};
use crate::messenger::Messenger;
use crate::metrics::Metrics;
use crate::state::StateCell;
use crate::store::{POOL_SIZE, Store};
use anyhow::Context;
use crmessenger_api::config::ConnectorConfig;
use crmessenger_crm::budget::Budget;
use crmessenger_crm::clock::{Clock, SystemClock};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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

    // SIGTERM stops the account like anything else does, but is remembered: a
    // stop without it is a deletion, whose cleanup is waited for.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let by_signal = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let (stop_tx, by_signal, key) = (stop_tx.clone(), by_signal.clone(), parts.key.clone());
        async move {
            terminated().await;
            tracing::info!(account = key, "SIGTERM: finishing the calls in flight");
            by_signal.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = stop_tx.send(true);
        }
    });
    let Some(lock) = serve::start(&parts, &store, settings.gateway_url.as_deref(), &mut stop_rx).await else {
        return Ok(0);
    };

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
    // Stopping takes no new work; the calls in flight finish (bounded by the bridge).
    parts.bridge.clone().run(&lock, stop_rx.clone()).await;
    let by_signal = by_signal.load(std::sync::atomic::Ordering::SeqCst);
    if *stop_rx.borrow() && !lock.is_lost() && !by_signal {
        // Stopped for deletion: let the cleanup finish and confirm.
        let _ = tokio::time::timeout(Duration::from_secs(60), deletion).await;
    } else {
        deletion.abort();
    }
    let _ = stop_tx.send(true);
    for t in background {
        t.abort();
    }
    match serve::finish(&parts, lock).await {
        serve::Ended::LockLost => {
            tracing::error!(account = parts.key, "exiting: the account lock was lost");
            Ok(1)
        }
        serve::Ended::Stopped => Ok(0),
    }
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
    metrics_addr: std::net::SocketAddr,
    chats_secret: Option<String>,
    whatsapp: Option<crate::gateway::WhatsAppApp>,
) -> anyhow::Result<i32> {
    let store =
        Store::connect(database_url, crate::store::GATEWAY_POOL_SIZE).await.context("connect to the database")?;
    let listener = tokio::net::TcpListener::bind(listen).await.context("bind the gateway address")?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let gateway = Gateway::new(store).with_chats_secret(chats_secret).with_whatsapp(whatsapp);
    let metrics = tokio::net::TcpListener::bind(metrics_addr).await.context("bind the gateway's metrics address")?;
    tracing::info!(addr = %metrics.local_addr()?, "gateway metrics listening");
    tokio::spawn(crate::http::serve(metrics, gateway.metrics().router(), crate::http::Limits::default()));
    let router = gateway.router();
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
