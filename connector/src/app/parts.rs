//! One account's parts built from its config — the CRM adapter, the messenger
//! adapter, the bridge, the budget — and the webhook routes they need. Shared by
//! `run` (a pod per account) and `standalone` (every account in one process).

use crate::bridge::{Bridge, BridgeSettings, ReplySource};
use crate::gateway::ROUTE_BINDING_CRM;
use crate::messenger::Messenger;
use crate::messenger::scripted::Scripted;
use crate::messenger::telegram;
use crate::metrics::Metrics;
use crate::state::StateCell;
use crate::store::Store;
use crate::store::budget::DbBudgetStore;
use crate::store::crypto::SessionKey;
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
    /// The channel bot's amojo id (issued with the channel): the author of the
    /// account owner's own messages in the CRM's chat.
    pub bot_id: String,
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
    /// From its values, when the channel id, secret and bot id are all set.
    pub fn from_parts(
        base_url: Option<String>,
        channel_id: Option<String>,
        secret: Option<String>,
        bot_id: Option<String>,
    ) -> Option<Self> {
        Some(Self {
            base_url: base_url.filter(|s| !s.is_empty()).unwrap_or_else(|| "https://amojo.amocrm.ru".into()),
            channel_id: channel_id.filter(|s| !s.is_empty())?,
            secret: secret.filter(|s| !s.is_empty())?,
            bot_id: bot_id.filter(|s| !s.is_empty())?,
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
    s.max_media_bytes = config.policy.media.max_bytes();
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
        max_media_bytes: config.policy.media.max_bytes(),
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
    if !crmessenger_crm::phone::known_region(&amo.phone_region) {
        bail!(
            "spec.crm.amocrm.phoneRegion {:?} is not a region phone numbers are known for (use an ISO 3166-1 code such as RU, KZ, DE, US)",
            amo.phone_region
        );
    }
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
            phone_region: amo.phone_region.clone(),
            records: if config.policy.leads.create {
                crmessenger_crm::amocrm::RecordKind::Leads
            } else {
                crmessenger_crm::amocrm::RecordKind::Contacts
            },
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
        fallback_user_id: amo.fallback_user_id,
        replies,
        chats: chats.is_some(),
        media_url: chats.as_ref().and_then(|c| c.media_url.clone()),
        phone_region: amo.phone_region.clone(),
        texts: crate::texts::of(config.crm.language),
        lead_source: config.crm.lead_source.clone(),
        source_tag: config.crm.source_tag.clone(),
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
            .attach_chats(
                &crmessenger_crm::amocrm::ChannelKeys {
                    base_url: &c.base_url,
                    channel_id: &c.channel_id,
                    secret: &c.secret,
                    bot_id: &c.bot_id,
                },
                "CRMessenger",
            )
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
