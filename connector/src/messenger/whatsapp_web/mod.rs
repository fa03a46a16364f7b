//! WhatsApp Web multi-device pairing (the `whatsapp-web` cargo feature, off by
//! default), through the `whatsapp-rust` crate.
//!
//! **Unofficial.** WhatsApp does not allow third-party Web clients and may ban a
//! number that uses one; the Cloud API is the supported path. The pairing QR code
//! goes through the same login page and status fields as Telegram's.
//!
//! The library's session (Signal keys, device identity) lives in the connector's
//! database, sealed ([`store::WaStore`]). A customer's message is acknowledged to
//! WhatsApp only after it is stored there (the library's inbound durability
//! hook); the bridge streams it from there, and the stored copy goes once the
//! inbox has it.

pub mod store;

use super::*;
use crate::store::Store;
use crate::store::crypto::SessionKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use whatsapp_rust::Jid;
use whatsapp_rust::prelude::{Bot, Client, MessageExt};
use whatsapp_rust::types::events::Event as WaEvent;
use whatsapp_rust::wacore::store::traits::DeviceStore;

/// A customer's message as the library gives it, reduced to what the bridge needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Chat JID (`…@s.whatsapp.net`, `…@g.us`).
    pub chat: String,
    /// Whether the chat is a group.
    pub is_group: bool,
    /// Sender JID.
    pub sender: String,
    /// The sender's name as they set it.
    pub push_name: String,
    /// Message id.
    pub id: String,
    /// When it was written, Unix ms.
    pub at_ms: i64,
    /// Its text, if it has one.
    pub text: Option<String>,
    /// Sent by the account itself: from the owner's phone (a device-sent message)
    /// or another of its linked devices.
    pub from_me: bool,
}

/// The person a JID names: its user part, with the phone number when it is one.
fn identity_of(jid: &str, name: &str) -> Identity {
    let user = jid.split(['@', ':']).next().unwrap_or_default().to_string();
    let is_phone = jid.ends_with("@s.whatsapp.net") && user.bytes().all(|b| b.is_ascii_digit());
    Identity {
        id: user.clone(),
        name: if name.is_empty() { user.clone() } else { name.to_string() },
        phone: is_phone.then(|| format!("+{user}")),
        username: None,
    }
}

/// The connector's message of an incoming one (or of one the account sent from
/// the owner's phone: outgoing, to the chat's person).
pub fn to_message(i: &Incoming) -> Message {
    Message {
        chat_id: i.chat.clone(),
        chat_kind: if i.is_group { ChatKind::Group } else { ChatKind::Private },
        chat_title: None,
        chat_members: None,
        message_id: i.id.clone(),
        sender: identity_of(&i.sender, &i.push_name),
        content: Content::Text {
            text: i.text.clone().unwrap_or_else(|| "[a message this connector cannot show]".into()),
        },
        sent_at_ms: i.at_ms,
        edited: false,
        history: false,
        outgoing: i.from_me,
        customer: (i.from_me && !i.is_group).then(|| identity_of(&i.chat, "")),
        forwarded_from: None,
        reply_to: None,
    }
}

#[derive(Default)]
struct Shared {
    login: Option<LoginState>,
    client: Option<Arc<Client>>,
    last_in: HashMap<String, (String, String)>,
}

/// The stored key of a message: its time first (so keys sort in arrival order),
/// then its chat, sender and id (so a redelivery lands on the same key).
pub fn inbound_key(i: &Incoming) -> String {
    format!("{:015}|{}|{}|{}", i.at_ms.max(0), i.chat, i.sender, i.id)
}

/// What a receipt says of our messages: `delivered` when the customer's phone got
/// them, `read` when they opened them (a voice message played counts as read). A
/// customer who turned read receipts off never sends `read`: their replies stay
/// delivered. Receipts of the account's own other devices, and anything else
/// (retries, server errors), say nothing of the customer.
pub fn receipt_status(kind: &whatsapp_rust::wacore::types::presence::ReceiptType) -> Option<&'static str> {
    use whatsapp_rust::wacore::types::presence::ReceiptType;
    match kind {
        ReceiptType::Delivered => Some("delivered"),
        ReceiptType::Read | ReceiptType::Played => Some("read"),
        _ => None,
    }
}

/// The store key of a receipt: its time first, like messages, then what it covers.
fn receipt_key(at_ms: i64, chat: &str, status: &str, first_id: &str) -> String {
    format!("{:015}|{chat}|receipt:{status}|{first_id}", at_ms.max(0))
}

/// Stores each message before WhatsApp is told it arrived.
struct Durable {
    backend: Arc<store::WaStore>,
    shared: Arc<Mutex<Shared>>,
    fed: Arc<Notify>,
}

#[whatsapp_rust::async_trait]
impl whatsapp_rust::InboundDurabilityHook for Durable {
    async fn on_messages(
        &self,
        _client: Arc<Client>,
        batch: &[whatsapp_rust::wacore::types::events::InboundMessage],
    ) -> whatsapp_rust::anyhow::Result<()> {
        for m in batch {
            let incoming = Incoming {
                chat: m.info.source.chat.to_string(),
                is_group: m.info.source.is_group,
                sender: m.info.source.sender.to_string(),
                push_name: m.info.push_name.clone(),
                id: m.info.id.to_string(),
                at_ms: m.info.timestamp.timestamp_millis(),
                text: m.message.text_content().map(str::to_string),
                from_me: m.info.source.is_from_me,
            };
            let event = Event::Message(Box::new(to_message(&incoming)));
            self.backend.put_inbound(&inbound_key(&incoming), &event).await?;
            if !incoming.from_me {
                lock(&self.shared)
                    .last_in
                    .insert(incoming.chat.clone(), (incoming.id.clone(), incoming.sender.clone()));
            }
        }
        self.fed.notify_one();
        Ok(())
    }
}

/// A WhatsApp Web session.
pub struct WhatsAppWeb {
    account: String,
    backend: Arc<store::WaStore>,
    shared: Arc<Mutex<Shared>>,
    fed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WhatsAppWeb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl WhatsAppWeb {
    /// Starts the session of `account` (pairing by QR code when there is none).
    pub fn start(account: &str, db: Store, key: SessionKey) -> Self {
        let backend = Arc::new(store::WaStore::new(db, key, account));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let fed = Arc::new(Notify::new());
        let task = tokio::spawn(supervise(account.to_string(), backend.clone(), shared.clone(), fed.clone()));
        Self { account: account.to_string(), backend, shared, fed, task }
    }

    fn client(&self) -> Result<Arc<Client>, MessengerError> {
        lock(&self.shared)
            .client
            .clone()
            .ok_or_else(|| MessengerError::Unavailable("not connected to WhatsApp yet".into()))
    }
}

/// Runs the session, and starts a new pairing after a logout.
async fn supervise(account: String, backend: Arc<store::WaStore>, shared: Arc<Mutex<Shared>>, fed: Arc<Notify>) {
    loop {
        let s = shared.clone();
        let (b, acct) = (backend.clone(), account.clone());
        let built = Bot::builder()
            .with_backend_arc(backend.clone() as Arc<dyn whatsapp_rust::wacore::store::traits::Backend>)
            .skip_history_sync()
            .with_inbound_durability_hook(Durable {
                backend: backend.clone(),
                shared: shared.clone(),
                fed: fed.clone(),
            })
            .on_event(move |event, client| {
                let (s, b, acct) = (s.clone(), b.clone(), acct.clone());
                async move { on_event(&acct, &s, &b, &event, client).await }
            })
            .build()
            .await;
        match built {
            Ok(bot) => {
                lock(&shared).client = Some(bot.client());
                bot.run().await;
                lock(&shared).client = None;
            }
            Err(e) => tracing::warn!(account, "WhatsApp Web session did not start: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn on_event(
    account: &str,
    shared: &Mutex<Shared>,
    backend: &store::WaStore,
    event: &WaEvent,
    _client: Arc<Client>,
) {
    match event {
        WaEvent::PairingQrCode(q) => {
            lock(shared).login =
                Some(LoginState::Qr { code: q.code.clone(), expires_at_ms: now_ms() + q.timeout.as_millis() as i64 });
        }
        WaEvent::PairSuccess(p) => {
            tracing::info!(account, "WhatsApp Web paired");
            lock(shared).login = Some(LoginState::LoggedIn {
                identity: Identity { id: p.id.user.to_string(), name: p.business_name.clone(), ..Default::default() },
            });
        }
        WaEvent::Connected(_) => {
            let device = backend.load().await.ok().flatten();
            let user = device.and_then(|d| d.pn).map(|j| j.user.to_string()).unwrap_or_default();
            lock(shared).login = Some(LoginState::LoggedIn {
                identity: Identity {
                    id: user.clone(),
                    name: user.clone(),
                    phone: Some(format!("+{user}")),
                    username: None,
                },
            });
        }
        WaEvent::LoggedOut(l) => {
            let reason = format!("WhatsApp ended the linked-device session ({:?}); pair again", l.reason);
            tracing::warn!(account, "{reason}");
            if let Err(e) = backend.wipe().await {
                tracing::error!(account, "could not wipe the WhatsApp Web session: {e}");
            }
            lock(shared).login = Some(LoginState::LoggedOut { reason });
        }
        WaEvent::Receipt(r) if !r.source.is_from_me || r.source.is_group => {
            let Some(status) = receipt_status(&r.r#type) else { return };
            let chat = r.source.chat.to_string();
            let ids: Vec<String> = r.message_ids.iter().map(|id| id.to_string()).collect();
            let key =
                receipt_key(r.timestamp.timestamp_millis(), &chat, status, ids.first().map_or("", String::as_str));
            for (n, message_id) in ids.into_iter().enumerate() {
                let event = Event::Status { chat_id: chat.clone(), message_id, status: status.to_string() };
                if let Err(e) = backend.put_inbound(&format!("{key}|{n}"), &event).await {
                    tracing::warn!(account, "a receipt could not be stored: {e}");
                }
            }
        }
        // Messages are stored by the durability hook before they are acknowledged.
        _ => {}
    }
}

#[async_trait]
impl Messenger for WhatsAppWeb {
    async fn login_state(&self) -> Result<LoginState, MessengerError> {
        Ok(lock(&self.shared)
            .login
            .clone()
            .unwrap_or(LoginState::LoggedOut { reason: "connecting to WhatsApp".into() }))
    }

    async fn submit_login(&self, _code: Option<&str>, _password: Option<&str>) -> Result<(), MessengerError> {
        Err(MessengerError::Rejected("WhatsApp Web pairs by QR code only".into()))
    }

    async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError> {
        let store_err = |e: whatsapp_rust::wacore::store::error::StoreError| MessengerError::Unavailable(e.to_string());
        let after = cursor.unwrap_or_default();
        if !after.is_empty() {
            // Committed with the inbox: the stored copies can go.
            self.backend.inbound_done(after).await.map_err(store_err)?;
        }
        let mut rows = self.backend.inbound_after(after, 500).await.map_err(store_err)?;
        if rows.is_empty() {
            let _ = tokio::time::timeout(wait, self.fed.notified()).await;
            rows = self.backend.inbound_after(after, 500).await.map_err(store_err)?;
        }
        let next = rows.last().map(|(k, _)| k.clone()).unwrap_or_else(|| after.to_string());
        Ok(Batch { events: rows.into_iter().map(|(_, e)| e).collect(), cursor: next })
    }

    async fn send(&self, m: &Outgoing) -> Result<SentRef, MessengerError> {
        let to: Jid =
            m.chat_id.parse().map_err(|_| MessengerError::Rejected(format!("not a WhatsApp chat: {}", m.chat_id)))?;
        let text = match &m.media {
            // Only a file with a link can go as text; a file from the CRM's own
            // storage has none.
            Some(f) if f.crm_file.is_some() => {
                return Err(MessengerError::Rejected(format!(
                    "WhatsApp Web sends text only: {} stays in the CRM",
                    f.file_name
                )));
            }
            Some(f) => format!("{}\n{}: {}", m.text, f.file_name, f.url).trim().to_string(),
            None => m.text.clone(),
        };
        let sent = self.client()?.send_text(to, text).await.map_err(|e| MessengerError::InDoubt(e.to_string()))?;
        let db = |e: crate::store::StoreError| MessengerError::Unavailable(e.to_string());
        let key = format!("sent:{}", m.random_id);
        self.backend_store().kv_put(&self.account, "connector", &key, sent.message_id.as_bytes()).await.map_err(db)?;
        Ok(SentRef { message_id: sent.message_id })
    }

    async fn find_sent(&self, _chat_id: &str, random_id: i64) -> Result<Option<SentRef>, MessengerError> {
        let db = |e: crate::store::StoreError| MessengerError::Unavailable(e.to_string());
        let key = format!("sent:{random_id}");
        let found = self.backend_store().kv_get(&self.account, "connector", &key).await.map_err(db)?;
        Ok(found.map(|id| SentRef { message_id: String::from_utf8_lossy(&id).into_owned() }))
    }

    async fn mark_read(&self, chat_id: &str, _message_id: &str) -> Result<(), MessengerError> {
        let Some((id, sender)) = lock(&self.shared).last_in.get(chat_id).cloned() else { return Ok(()) };
        let (Ok(chat), Ok(sender)) = (chat_id.parse::<Jid>(), sender.parse::<Jid>()) else { return Ok(()) };
        let group_sender = chat.server.to_string().contains("g.us").then_some(&sender);
        self.client()?
            .mark_as_read(&chat, group_sender, &[id.as_str()])
            .await
            .map_err(|e| MessengerError::Unavailable(e.to_string()))
    }

    async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError> {
        Err(MessengerError::Rejected(format!(
            "{}: media over WhatsApp Web is not downloaded by this connector",
            media.file_name
        )))
    }

    async fn logout(&self) -> Result<(), MessengerError> {
        if let Ok(client) = self.client() {
            client.logout().await;
        }
        self.backend.wipe().await.map_err(|e| MessengerError::Unavailable(e.to_string()))
    }
}

impl WhatsAppWeb {
    fn backend_store(&self) -> &Store {
        self.backend.db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_message_is_keyed_by_the_senders_number() {
        let i = Incoming {
            chat: "15550001111@s.whatsapp.net".into(),
            is_group: false,
            sender: "15550001111@s.whatsapp.net".into(),
            push_name: "Maria".into(),
            id: "3EB0ABC".into(),
            at_ms: 1_700_000_000_000,
            text: Some("hi".into()),
            from_me: false,
        };
        let m = to_message(&i);
        assert!(!m.outgoing);
        assert_eq!(
            (m.chat_id.as_str(), m.chat_kind, m.caption()),
            ("15550001111@s.whatsapp.net", ChatKind::Private, "hi")
        );
        assert_eq!((m.sender.id.as_str(), m.sender.name.as_str()), ("15550001111", "Maria"));
        assert_eq!(m.sender.phone.as_deref(), Some("+15550001111"));
        // A group member by LID: no phone is invented.
        let g = to_message(&Incoming {
            chat: "120363@g.us".into(),
            is_group: true,
            sender: "2040:3@lid".into(),
            push_name: String::new(),
            text: None,
            ..i
        });
        assert_eq!((g.chat_kind, g.sender.id.as_str(), g.sender.phone.clone()), (ChatKind::Group, "2040", None));
        assert!(g.caption().contains("cannot show"));
    }

    #[test]
    fn receipts_move_replies_to_delivered_and_read_only() {
        use whatsapp_rust::wacore::types::presence::ReceiptType;
        assert_eq!(receipt_status(&ReceiptType::Delivered), Some("delivered"));
        assert_eq!(receipt_status(&ReceiptType::Read), Some("read"));
        assert_eq!(receipt_status(&ReceiptType::Played), Some("read"));
        for other in [ReceiptType::ReadSelf, ReceiptType::Retry, ReceiptType::Sent, ReceiptType::ServerError] {
            assert_eq!(receipt_status(&other), None, "{other:?}");
        }
        // Receipts sort among the messages by time, and never collide with one.
        let k = receipt_key(1_700_000_000_000, "1555@s.whatsapp.net", "read", "3EB0");
        assert!(k.starts_with("001700000000000|1555@s.whatsapp.net|receipt:read|"));
    }

    #[test]
    fn what_the_owner_sends_from_the_phone_is_the_accounts_side() {
        let m = to_message(&Incoming {
            chat: "15550001111@s.whatsapp.net".into(),
            is_group: false,
            sender: "15550009999:12@s.whatsapp.net".into(),
            push_name: "Shop".into(),
            id: "3EB0DEF".into(),
            at_ms: 1_700_000_000_000,
            text: Some("On our way".into()),
            from_me: true,
        });
        assert!(m.outgoing);
        assert_eq!(m.sender.id, "15550009999");
        let customer = m.customer.expect("the person written to");
        assert_eq!((customer.id.as_str(), customer.phone.as_deref()), ("15550001111", Some("+15550001111")));
    }
}
