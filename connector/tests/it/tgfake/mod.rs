//! A scripted Telegram behind the adapter's raw-RPC seam. It decodes each request
//! from its serialized TL (by constructor), answers with serialized TL objects as
//! Telegram would, keeps the account's update log with real pts numbering (so
//! getDifference returns exactly what was missed), pushes live updates through a
//! bounded channel that drops when full (as grammers' does), and can be told to
//! fail calls with Telegram's RPC errors.

#![allow(dead_code)]

use async_trait::async_trait;
use crmessenger_connector::messenger::telegram::rpc::{RpcFailure, TgRpc};
use grammers_session::updates::UpdatesLike;
use grammers_tl_types::{self as tl, Deserializable, Identifiable, Serializable};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Telegram's 2048-bit safe prime for Diffie-Hellman (and SRP), with g = 3.
pub const P_HEX: &str = "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c3720fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f642477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b";

/// The signed-in user.
pub const ME: i64 = 1000;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct Script {
    /// The account's datacenter (a QR scan from elsewhere migrates there).
    pub user_dc: i32,
    /// Two-step verification password.
    pub password: Option<String>,
    /// The login code sent by SMS.
    pub code: String,
    /// A bot token that signs in.
    pub bot_token: String,
    /// Seconds a QR token lives.
    pub qr_ttl: i32,
    /// Capacity of the live update channel (what does not fit is dropped).
    pub channel_capacity: usize,
    /// getDifference returns at most this many messages per slice.
    pub difference_limit: usize,
    /// getDifference answers `differenceTooLong` to a client more than this many
    /// pts behind (Telegram does so for a long gap: the client must refetch).
    pub too_long_after: Option<i32>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            user_dc: 2,
            password: None,
            code: "12345".into(),
            bot_token: "123:bot".into(),
            qr_ttl: 30,
            channel_capacity: 100,
            difference_limit: 100,
            too_long_after: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub chat: i64,
    pub text: String,
    pub random_id: i64,
    pub id: i32,
    /// A file sent with it: name, MIME type, bytes.
    pub file: Option<(String, String, Vec<u8>)>,
    /// Earlier texts, oldest first, when it was edited.
    pub edits: Vec<String>,
}

#[derive(Default)]
pub struct World {
    pub script: Option<Script>,
    pub calls: Vec<(i32, String)>,
    pub history_calls: Vec<std::time::Instant>,
    pub qr_exports: u32,
    pub scanned: bool,
    pub authorized_dcs: HashSet<i32>,
    pub bot: bool,
    pub pts: i32,
    pub date: i32,
    /// Account-wide log: (pts, message) for getDifference.
    pub log: Vec<(i32, tl::enums::Message)>,
    /// Account-wide edits and deletions: (pts, update), for getDifference's
    /// `other_updates`.
    pub other_log: Vec<(i32, tl::enums::Update)>,
    /// Each channel's own log: (channel pts, post), for getChannelDifference.
    pub channel_log: HashMap<i64, Vec<(i32, tl::enums::Message)>>,
    pub users: HashMap<i64, tl::enums::User>,
    pub chats: HashMap<i64, tl::enums::Chat>,
    pub next_id: i32,
    pub sent: Vec<Sent>,
    pub random_ids: HashMap<i64, i32>,
    pub reads: Vec<(i64, i32)>,
    pub files: HashMap<i64, Vec<u8>>,
    /// Uploaded parts by file id.
    pub parts: HashMap<i64, std::collections::BTreeMap<i32, Vec<u8>>>,
    /// Fail the next calls of a constructor with these errors, in order.
    pub failures: HashMap<u32, Vec<RpcFailure>>,
    /// Carry out the next send but lose its answer.
    pub lose_next_send_answer: bool,
    /// Every call fails with this (a revoked session).
    pub revoked: Option<RpcFailure>,
    pub dropped_live: u64,
    pub logged_out: bool,
}

impl World {
    /// An account-wide update (an edit, a deletion, a read) at the next pts,
    /// logged for getDifference's `other_updates`.
    fn log_other(&mut self, make: impl FnOnce(i32) -> tl::enums::Update) -> tl::enums::Update {
        self.pts += 1;
        let u = make(self.pts);
        self.other_log.push((self.pts, u.clone()));
        u
    }
}

/// The scripted Telegram.
pub struct FakeTelegram {
    pub world: Mutex<World>,
    tx: mpsc::Sender<UpdatesLike>,
    rx: tokio::sync::Mutex<mpsc::Receiver<UpdatesLike>>,
}

fn rpc(code: i32, message: &str) -> RpcFailure {
    RpcFailure::from_message(code, message)
}

pub fn now() -> i32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i32
}

pub fn user(id: i64, first: &str, username: Option<&str>, phone: Option<&str>, bot: bool) -> tl::enums::User {
    tl::enums::User::User(tl::types::User {
        is_self: id == ME,
        contact: false,
        mutual_contact: false,
        deleted: false,
        bot,
        bot_chat_history: false,
        bot_nochats: false,
        verified: false,
        restricted: false,
        min: false,
        bot_inline_geo: false,
        support: false,
        scam: false,
        apply_min_photo: false,
        fake: false,
        bot_attach_menu: false,
        premium: false,
        attach_menu_enabled: false,
        bot_can_edit: false,
        close_friend: false,
        stories_hidden: false,
        stories_unavailable: false,
        contact_require_premium: false,
        bot_business: false,
        bot_has_main_app: false,
        bot_forum_view: false,
        bot_forum_can_manage_topics: false,
        bot_can_manage_bots: false,
        bot_guestchat: false,
        bot_guard: false,
        id,
        access_hash: Some(id * 7 + 1),
        first_name: Some(first.into()),
        last_name: None,
        username: username.map(str::to_string),
        phone: phone.map(str::to_string),
        photo: None,
        status: None,
        // Telegram sends it with every bot (it shares the `bot` flag bit).
        bot_info_version: bot.then_some(1),
        restriction_reason: None,
        bot_inline_placeholder: None,
        lang_code: None,
        emoji_status: None,
        usernames: None,
        stories_max_id: None,
        color: None,
        profile_color: None,
        bot_active_users: None,
        bot_verification_icon: None,
        send_paid_messages_stars: None,
        linked_community_id: None,
    })
}

pub fn group(id: i64, title: &str) -> tl::enums::Chat {
    tl::enums::Chat::Chat(tl::types::Chat {
        creator: false,
        left: false,
        deactivated: false,
        call_active: false,
        call_not_empty: false,
        noforwards: false,
        id,
        title: title.into(),
        photo: tl::enums::ChatPhoto::Empty,
        participants_count: 3,
        date: 1,
        version: 1,
        migrated_to: None,
        admin_rights: None,
        default_banned_rights: None,
    })
}

pub fn channel(id: i64, title: &str, broadcast: bool) -> tl::enums::Chat {
    tl::enums::Chat::Channel(tl::types::Channel {
        creator: false,
        left: false,
        broadcast,
        verified: false,
        megagroup: !broadcast,
        restricted: false,
        signatures: false,
        min: false,
        scam: false,
        has_link: false,
        has_geo: false,
        slowmode_enabled: false,
        call_active: false,
        call_not_empty: false,
        fake: false,
        gigagroup: false,
        noforwards: false,
        join_to_send: false,
        join_request: false,
        forum: false,
        stories_hidden: false,
        stories_hidden_min: false,
        stories_unavailable: false,
        signature_profiles: false,
        autotranslation: false,
        broadcast_messages_allowed: false,
        monoforum: false,
        forum_tabs: false,
        id,
        access_hash: Some(id * 3 + 5),
        title: title.into(),
        username: None,
        photo: tl::enums::ChatPhoto::Empty,
        date: 1,
        restriction_reason: None,
        admin_rights: None,
        banned_rights: None,
        default_banned_rights: None,
        participants_count: None,
        usernames: None,
        stories_max_id: None,
        color: None,
        profile_color: None,
        emoji_status: None,
        level: None,
        subscription_until_date: None,
        bot_verification_icon: None,
        send_paid_messages_stars: None,
        linked_monoforum_id: None,
        linked_community_id: None,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn message(
    id: i32,
    peer: tl::enums::Peer,
    from: Option<i64>,
    out: bool,
    text: &str,
    media: Option<tl::enums::MessageMedia>,
    date: i32,
    edit_date: Option<i32>,
) -> tl::enums::Message {
    tl::enums::Message::Message(tl::types::Message {
        out,
        mentioned: false,
        media_unread: false,
        silent: false,
        post: from.is_none() && matches!(peer, tl::enums::Peer::Channel(_)),
        from_scheduled: false,
        legacy: false,
        edit_hide: false,
        pinned: false,
        noforwards: false,
        invert_media: false,
        offline: false,
        video_processing_pending: false,
        paid_suggested_post_stars: false,
        paid_suggested_post_ton: false,
        id,
        from_id: from.map(|u| tl::enums::Peer::User(tl::types::PeerUser { user_id: u })),
        from_boosts_applied: None,
        from_rank: None,
        peer_id: peer,
        saved_peer_id: None,
        fwd_from: None,
        via_bot_id: None,
        via_business_bot_id: None,
        guestchat_via_from: None,
        reply_to: None,
        date,
        message: text.into(),
        media,
        reply_markup: None,
        entities: None,
        views: None,
        forwards: None,
        replies: None,
        edit_date,
        post_author: None,
        grouped_id: None,
        reactions: None,
        restriction_reason: None,
        ttl_period: None,
        quick_reply_shortcut_id: None,
        effect: None,
        factcheck: None,
        report_delivery_until_date: None,
        paid_message_stars: None,
        suggested_post: None,
        schedule_repeat_period: None,
        summary_from_language: None,
        rich_message: None,
    })
}

pub fn document(id: i64, size: i64, mime: &str, file_name: &str, voice: bool) -> tl::enums::MessageMedia {
    let mut attributes = vec![tl::enums::DocumentAttribute::Filename(tl::types::DocumentAttributeFilename {
        file_name: file_name.into(),
    })];
    if voice {
        attributes.push(tl::enums::DocumentAttribute::Audio(tl::types::DocumentAttributeAudio {
            voice: true,
            duration: 3,
            title: None,
            performer: None,
            waveform: None,
        }));
    }
    tl::enums::MessageMedia::Document(tl::types::MessageMediaDocument {
        nopremium: false,
        spoiler: false,
        video: false,
        round: false,
        voice,
        document: Some(tl::enums::Document::Document(tl::types::Document {
            id,
            access_hash: 99,
            file_reference: vec![7, 7],
            date: 1,
            mime_type: mime.into(),
            size,
            thumbs: None,
            video_thumbs: None,
            dc_id: 4,
            attributes,
        })),
        alt_documents: None,
        video_cover: None,
        video_timestamp: None,
        ttl_seconds: None,
    })
}

fn authorization(u: tl::enums::User) -> tl::enums::auth::Authorization {
    tl::enums::auth::Authorization::Authorization(tl::types::auth::Authorization {
        setup_password_required: false,
        otherwise_relogin_days: None,
        tmp_sessions: None,
        future_auth_token: None,
        user: u,
    })
}

fn peer_of(input: &tl::enums::InputPeer) -> Option<i64> {
    Some(match input {
        tl::enums::InputPeer::User(u) => u.user_id,
        tl::enums::InputPeer::Chat(c) => -c.chat_id,
        tl::enums::InputPeer::Channel(c) => -1_000_000_000_000 - c.channel_id,
        _ => return None,
    })
}

fn peer_enum(dialog: i64) -> tl::enums::Peer {
    if dialog > 0 {
        tl::enums::Peer::User(tl::types::PeerUser { user_id: dialog })
    } else if dialog > -1_000_000_000_000 {
        tl::enums::Peer::Chat(tl::types::PeerChat { chat_id: -dialog })
    } else {
        tl::enums::Peer::Channel(tl::types::PeerChannel { channel_id: -1_000_000_000_000 - dialog })
    }
}

/// The account's password parameters (SRP over Telegram's prime).
struct Srp {
    salt1: Vec<u8>,
    salt2: Vec<u8>,
    p: Vec<u8>,
    g_b: Vec<u8>,
    random: Vec<u8>,
}

fn srp_parts() -> Srp {
    let p = hex::decode(P_HEX).unwrap();
    // g_b: any value below p serves the computation both sides make.
    let mut g_b = p.clone();
    g_b[0] = 0x11;
    Srp { salt1: b"salt-one".to_vec(), salt2: b"salt-two".to_vec(), p, g_b, random: vec![0x42; 256] }
}

impl FakeTelegram {
    pub fn new(script: Script) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(script.channel_capacity.max(1));
        let mut world = World { script: Some(script), pts: 10, date: now(), next_id: 100, ..World::default() };
        world.users.insert(ME, user(ME, "Shop", Some("shop"), Some("79990000000"), false));
        Arc::new(Self { world: Mutex::new(world), tx, rx: tokio::sync::Mutex::new(rx) })
    }

    fn script(&self) -> Script {
        self.world.lock().unwrap().script.clone().unwrap()
    }

    /// Makes the next calls of `R` fail with `errors`, one each.
    pub fn fail_next<R: Identifiable>(&self, errors: Vec<RpcFailure>) {
        self.world.lock().unwrap().failures.entry(R::CONSTRUCTOR_ID).or_default().extend(errors);
    }

    /// Pushes live updates; dropped (and counted) when the channel is full.
    pub fn push(&self, u: tl::enums::Updates) {
        if self.tx.try_send(UpdatesLike::Updates(u)).is_err() {
            self.world.lock().unwrap().dropped_live += 1;
        }
    }

    /// Updates pushed and not yet read from the connection's channel.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The phone scans the QR code.
    pub fn scan(&self) {
        self.world.lock().unwrap().scanned = true;
        self.push(tl::enums::Updates::UpdateShort(tl::types::UpdateShort {
            update: tl::enums::Update::LoginToken,
            date: now(),
        }));
    }

    /// The account is signed in already (a resumed session).
    pub fn authorize(&self, dc: i32) {
        let mut w = self.world.lock().unwrap();
        w.scanned = true;
        w.authorized_dcs.insert(dc);
    }

    /// Pushes one update live, with the users and chats it names.
    fn push_update(&self, update: tl::enums::Update, users: Vec<tl::enums::User>, chats: Vec<tl::enums::Chat>) {
        self.push(tl::enums::Updates::Updates(tl::types::Updates {
            updates: vec![update],
            users,
            chats,
            date: now(),
            seq: 0,
        }));
    }

    /// Records a customer's message in the account's log (pushing it live when
    /// `live`) and returns its id.
    fn log_message(
        &self,
        chat: i64,
        from: Option<i64>,
        text: &str,
        media: Option<tl::enums::MessageMedia>,
        live: bool,
    ) -> i32 {
        self.log(chat, from, false, text, media, live, |_| {})
    }

    /// A customer forwards a message written by `author` (shown by name only, as
    /// for an account that hides its forwards).
    pub fn customer_forwards(&self, user_id: i64, author: &str, text: &str) -> i32 {
        let author = author.to_string();
        self.log(user_id, None, false, text, None, true, move |m| {
            m.fwd_from = Some(tl::enums::MessageFwdHeader::Header(tl::types::MessageFwdHeader {
                imported: false,
                saved_out: false,
                from_id: None,
                from_name: Some(author),
                date: now() - 3600,
                channel_post: None,
                post_author: None,
                saved_from_peer: None,
                saved_from_msg_id: None,
                saved_from_id: None,
                saved_from_name: None,
                saved_date: None,
                psa_type: None,
            }))
        })
    }

    /// A customer answers message `to` in their private chat, quoting `quote` of it
    /// when given (Telegram sends the quoted part only when the writer selected one).
    pub fn customer_replies(&self, user_id: i64, to: i32, quote: Option<&str>, text: &str) -> i32 {
        let quote = quote.map(str::to_string);
        self.log(user_id, None, false, text, None, true, move |m| {
            m.reply_to = Some(tl::enums::MessageReplyHeader::Header(tl::types::MessageReplyHeader {
                reply_to_scheduled: false,
                forum_topic: false,
                quote: quote.is_some(),
                reply_to_ephemeral: false,
                reply_to_msg_id: Some(to),
                reply_to_peer_id: None,
                reply_from: None,
                reply_media: None,
                reply_to_top_id: None,
                quote_text: quote,
                quote_entities: None,
                quote_offset: None,
                todo_item_id: None,
                poll_option: None,
            }))
        })
    }

    /// What the account's owner writes in a private chat from their own phone:
    /// an `out` message with no `from_id` (as Telegram sends private messages).
    pub fn owner_says(&self, user_id: i64, text: &str, live: bool) -> i32 {
        self.log(user_id, None, true, text, None, live, |_| {})
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        chat: i64,
        from: Option<i64>,
        out: bool,
        text: &str,
        media: Option<tl::enums::MessageMedia>,
        live: bool,
        adjust: impl FnOnce(&mut tl::types::Message),
    ) -> i32 {
        let (update, users, chats, id) = {
            let mut w = self.world.lock().unwrap();
            w.pts += 1;
            w.next_id += 1;
            let (id, pts, date) = (w.next_id, w.pts, now());
            let mut m = message(id, peer_enum(chat), from, out, text, media, date, None);
            if let tl::enums::Message::Message(inner) = &mut m {
                adjust(inner);
            }
            w.log.push((pts, m.clone()));
            let users: Vec<_> =
                from.or((chat > 0).then_some(chat)).and_then(|u| w.users.get(&u).cloned()).into_iter().collect();
            let chats: Vec<_> = w.chats.get(&chat).cloned().into_iter().collect();
            (
                tl::enums::Update::NewMessage(tl::types::UpdateNewMessage { message: m, pts, pts_count: 1 }),
                users,
                chats,
                id,
            )
        };
        if live {
            self.push_update(update, users, chats);
        }
        id
    }

    /// A customer writes in a private chat (pushed live, or with `live` false only
    /// logged: the connection was down).
    pub fn customer_says(&self, user_id: i64, name: &str, text: &str, live: bool) -> i32 {
        self.world
            .lock()
            .unwrap()
            .users
            .entry(user_id)
            .or_insert_with(|| user(user_id, name, Some(&format!("u{user_id}")), Some("79991234567"), false));
        self.log_message(user_id, None, text, None, live)
    }

    /// Someone writes in a small group.
    pub fn group_says(&self, chat_id: i64, title: &str, user_id: i64, name: &str, text: &str) -> i32 {
        {
            let mut w = self.world.lock().unwrap();
            w.users.entry(user_id).or_insert_with(|| user(user_id, name, None, None, false));
            w.chats.entry(-chat_id).or_insert_with(|| group(chat_id, title));
        }
        self.log_message(-chat_id, Some(user_id), text, None, true)
    }

    /// A customer sends a file.
    pub fn customer_sends_file(&self, user_id: i64, name: &str, media: tl::enums::MessageMedia, bytes: Vec<u8>) -> i32 {
        if let tl::enums::MessageMedia::Document(d) = &media
            && let Some(tl::enums::Document::Document(doc)) = &d.document
        {
            self.world.lock().unwrap().files.insert(doc.id, bytes);
        }
        self.world.lock().unwrap().users.entry(user_id).or_insert_with(|| user(user_id, name, None, None, false));
        self.log_message(user_id, None, "see attached", Some(media), true)
    }

    /// A broadcast channel posts (channel updates carry the channel's own pts; a
    /// post not pushed `live` is only in the channel's log).
    pub fn channel_posts(&self, channel_id: i64, title: &str, text: &str, live: bool) -> i32 {
        let chat = channel(channel_id, title, true);
        let peer = tl::enums::Peer::Channel(tl::types::PeerChannel { channel_id });
        let (m, pts) = {
            let mut w = self.world.lock().unwrap();
            w.chats.insert(-1_000_000_000_000 - channel_id, chat.clone());
            // Channel message ids count per channel.
            let log = w.channel_log.entry(channel_id).or_default();
            let (id, pts) = (log.len() as i32 + 1, log.last().map_or(0, |(p, _)| *p) + 1);
            let m = message(id, peer, None, false, text, None, now(), None);
            log.push((pts, m.clone()));
            (m, pts)
        };
        let id = match &m {
            tl::enums::Message::Message(x) => x.id,
            _ => unreachable!(),
        };
        if live {
            let update = tl::types::UpdateNewChannelMessage { message: m, pts, pts_count: 1 };
            self.push_update(tl::enums::Update::NewChannelMessage(update), vec![], vec![chat]);
        }
        id
    }

    /// A customer opens the private chat: our messages up to `max_id` are read
    /// (`updateReadHistoryOutbox`, logged for getDifference and pushed live).
    pub fn customer_reads(&self, user_id: i64, max_id: i32) {
        let u = {
            let mut w = self.world.lock().unwrap();
            w.log_other(|pts| {
                tl::enums::Update::ReadHistoryOutbox(tl::types::UpdateReadHistoryOutbox {
                    peer: peer_enum(user_id),
                    max_id,
                    pts,
                    pts_count: 1,
                })
            })
        };
        self.push_update(u, vec![], vec![]);
    }

    /// A customer edits a message (logged for getDifference; pushed when `live`).
    pub fn customer_edits(&self, user_id: i64, id: i32, text: &str, live: bool) {
        let (u, users) = {
            let mut w = self.world.lock().unwrap();
            let m = message(id, peer_enum(user_id), None, false, text, None, now() - 5, Some(now()));
            let users = w.users.get(&user_id).cloned().into_iter().collect::<Vec<_>>();
            let u = w.log_other(|pts| {
                tl::enums::Update::EditMessage(tl::types::UpdateEditMessage { message: m, pts, pts_count: 1 })
            });
            (u, users)
        };
        if live {
            self.push_update(u, users, vec![]);
        }
    }

    /// A customer deletes messages (Telegram does not say from which chat);
    /// logged for getDifference, pushed when `live`.
    pub fn customer_deletes(&self, ids: Vec<i32>, live: bool) {
        let update = {
            let mut w = self.world.lock().unwrap();
            w.log_other(|pts| {
                tl::enums::Update::DeleteMessages(tl::types::UpdateDeleteMessages { messages: ids, pts, pts_count: 1 })
            })
        };
        if live {
            self.push_update(update, vec![], vec![]);
        }
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.world.lock().unwrap().sent.clone()
    }

    pub fn calls_of(&self, name: &str) -> usize {
        self.world.lock().unwrap().calls.iter().filter(|(_, n)| n == name).count()
    }

    fn answer(&self, dc: i32, body: &[u8]) -> Result<Vec<u8>, RpcFailure> {
        use tl::functions as f;
        let id = u32::from_le_bytes(body[..4].try_into().unwrap());
        let script = self.script();
        let mut w = self.world.lock().unwrap();
        if let Some(list) = w.failures.get_mut(&id)
            && !list.is_empty()
        {
            return Err(list.remove(0));
        }
        if let Some(e) = &w.revoked {
            return Err(e.clone());
        }
        let authorized = w.authorized_dcs.contains(&dc);
        let me = w.users[&ME].clone();
        macro_rules! req {
            ($t:ty) => {
                <$t>::from_bytes(&body[4..]).map_err(|e| rpc(400, &format!("INPUT_REQUEST_INVALID {e}")))?
            };
        }
        macro_rules! need_auth {
            () => {
                if !authorized {
                    return Err(rpc(401, "AUTH_KEY_UNREGISTERED"));
                }
            };
        }
        let out: Vec<u8> = match id {
            f::auth::ExportLoginToken::CONSTRUCTOR_ID => {
                w.calls.push((dc, "exportLoginToken".into()));
                let r = req!(f::auth::ExportLoginToken);
                assert_eq!(r.api_hash, "hash-abc", "the api_hash goes with the export");
                if w.scanned && !authorized {
                    if dc != script.user_dc {
                        tl::enums::auth::LoginToken::MigrateTo(tl::types::auth::LoginTokenMigrateTo {
                            dc_id: script.user_dc,
                            token: b"import-me".to_vec(),
                        })
                        .to_bytes()
                    } else if script.password.is_some() {
                        return Err(rpc(401, "SESSION_PASSWORD_NEEDED"));
                    } else {
                        w.authorized_dcs.insert(dc);
                        tl::enums::auth::LoginToken::Success(tl::types::auth::LoginTokenSuccess {
                            authorization: authorization(me),
                        })
                        .to_bytes()
                    }
                } else {
                    w.qr_exports += 1;
                    tl::enums::auth::LoginToken::Token(tl::types::auth::LoginToken {
                        expires: now() + script.qr_ttl,
                        token: format!("token-{}", w.qr_exports).into_bytes(),
                    })
                    .to_bytes()
                }
            }
            f::auth::ImportLoginToken::CONSTRUCTOR_ID => {
                w.calls.push((dc, "importLoginToken".into()));
                let r = req!(f::auth::ImportLoginToken);
                if r.token != b"import-me" || dc != script.user_dc {
                    return Err(rpc(400, "AUTH_TOKEN_INVALID"));
                }
                if script.password.is_some() {
                    return Err(rpc(401, "SESSION_PASSWORD_NEEDED"));
                }
                w.authorized_dcs.insert(dc);
                tl::enums::auth::LoginToken::Success(tl::types::auth::LoginTokenSuccess {
                    authorization: authorization(me),
                })
                .to_bytes()
            }
            f::account::GetPassword::CONSTRUCTOR_ID => {
                w.calls.push((dc, "getPassword".into()));
                let Srp { salt1, salt2, p, g_b, random } = srp_parts();
                tl::enums::account::Password::Password(tl::types::account::Password {
                    has_recovery: false,
                    has_secure_values: false,
                    has_password: true,
                    current_algo: Some(tl::enums::PasswordKdfAlgo::Sha256Sha256Pbkdf2Hmacsha512iter100000Sha256ModPow(
                        tl::types::PasswordKdfAlgoSha256Sha256Pbkdf2Hmacsha512iter100000Sha256ModPow {
                            salt1,
                            salt2,
                            g: 3,
                            p,
                        },
                    )),
                    srp_b: Some(g_b),
                    srp_id: Some(77),
                    hint: None,
                    email_unconfirmed_pattern: None,
                    new_algo: tl::enums::PasswordKdfAlgo::Unknown,
                    new_secure_algo: tl::enums::SecurePasswordKdfAlgo::Unknown,
                    secure_random: random,
                    pending_reset_date: None,
                    login_email_pattern: None,
                })
                .to_bytes()
            }
            f::auth::CheckPassword::CONSTRUCTOR_ID => {
                w.calls.push((dc, "checkPassword".into()));
                let r = req!(f::auth::CheckPassword);
                let tl::enums::InputCheckPasswordSrp::Srp(srp) = r.password else {
                    return Err(rpc(400, "PASSWORD_HASH_INVALID"));
                };
                let Srp { salt1, salt2, p, g_b, random } = srp_parts();
                let (m1, a) = grammers_crypto::two_factor_auth::calculate_2fa(
                    &salt1,
                    &salt2,
                    &p,
                    &3,
                    g_b,
                    random,
                    script.password.clone().unwrap_or_default(),
                );
                if srp.srp_id != 77 || srp.m1 != m1.to_vec() || srp.a != a.to_vec() {
                    return Err(rpc(400, "PASSWORD_HASH_INVALID"));
                }
                w.authorized_dcs.insert(dc);
                authorization(me).to_bytes()
            }
            f::auth::SendCode::CONSTRUCTOR_ID => {
                w.calls.push((dc, "sendCode".into()));
                let r = req!(f::auth::SendCode);
                if dc != script.user_dc {
                    return Err(rpc(303, &format!("PHONE_MIGRATE_{}", script.user_dc)));
                }
                assert_eq!(r.phone_number, "+79990000000");
                tl::enums::auth::SentCode::Code(tl::types::auth::SentCode {
                    r#type: tl::enums::auth::SentCodeType::App(tl::types::auth::SentCodeTypeApp { length: 5 }),
                    phone_code_hash: "hash-of-code".into(),
                    next_type: None,
                    timeout: None,
                })
                .to_bytes()
            }
            f::auth::SignIn::CONSTRUCTOR_ID => {
                w.calls.push((dc, "signIn".into()));
                let r = req!(f::auth::SignIn);
                if r.phone_code_hash != "hash-of-code" || r.phone_code.as_deref() != Some(script.code.as_str()) {
                    return Err(rpc(400, "PHONE_CODE_INVALID"));
                }
                if script.password.is_some() {
                    return Err(rpc(401, "SESSION_PASSWORD_NEEDED"));
                }
                w.authorized_dcs.insert(dc);
                authorization(me).to_bytes()
            }
            f::auth::ImportBotAuthorization::CONSTRUCTOR_ID => {
                w.calls.push((dc, "importBotAuthorization".into()));
                let r = req!(f::auth::ImportBotAuthorization);
                if r.bot_auth_token != script.bot_token {
                    return Err(rpc(400, "ACCESS_TOKEN_INVALID"));
                }
                w.authorized_dcs.insert(dc);
                w.bot = true;
                authorization(user(ME, "ShopBot", Some("shop_bot"), None, true)).to_bytes()
            }
            f::auth::LogOut::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "logOut".into()));
                w.logged_out = true;
                w.scanned = false;
                w.authorized_dcs.clear();
                tl::enums::auth::LoggedOut::Out(tl::types::auth::LoggedOut { future_auth_token: None }).to_bytes()
            }
            f::updates::GetState::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "getState".into()));
                tl::enums::updates::State::State(tl::types::updates::State {
                    pts: w.pts,
                    qts: 0,
                    date: w.date,
                    seq: 0,
                    unread_count: 0,
                })
                .to_bytes()
            }
            f::updates::GetDifference::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "getDifference".into()));
                let r = req!(f::updates::GetDifference);
                let state = |pts: i32| {
                    tl::enums::updates::State::State(tl::types::updates::State {
                        pts,
                        qts: 0,
                        date: now(),
                        seq: 0,
                        unread_count: 0,
                    })
                };
                if script.too_long_after.is_some_and(|max| w.pts - r.pts > max) {
                    // Too far behind: Telegram gives the current pts and nothing
                    // else; what happened meanwhile must be refetched by the client.
                    return Ok(tl::enums::updates::Difference::TooLong(tl::types::updates::DifferenceTooLong {
                        pts: w.pts,
                    })
                    .to_bytes());
                }
                // New messages and the edits and deletions among them, in pts order.
                let mut newer: Vec<(i32, Result<tl::enums::Message, tl::enums::Update>)> = w
                    .log
                    .iter()
                    .filter(|(pts, _)| *pts > r.pts)
                    .map(|(p, m)| (*p, Ok(m.clone())))
                    .chain(w.other_log.iter().filter(|(pts, _)| *pts > r.pts).map(|(p, u)| (*p, Err(u.clone()))))
                    .collect();
                newer.sort_by_key(|(p, _)| *p);
                if newer.is_empty() && r.pts >= w.pts {
                    tl::enums::updates::Difference::Empty(tl::types::updates::DifferenceEmpty { date: now(), seq: 0 })
                        .to_bytes()
                } else {
                    let users: Vec<_> = w.users.values().cloned().collect();
                    let chats: Vec<_> = w.chats.values().cloned().collect();
                    let page: Vec<_> = newer.iter().take(script.difference_limit).cloned().collect();
                    let more = newer.len() > page.len();
                    let upto = if more { page.last().map(|(p, _)| *p).unwrap_or(r.pts) } else { w.pts };
                    let (mut new_messages, mut other_updates) = (Vec::new(), Vec::new());
                    for (_, entry) in page {
                        match entry {
                            Ok(m) => new_messages.push(m),
                            Err(u) => other_updates.push(u),
                        }
                    }
                    if more {
                        tl::enums::updates::Difference::Slice(tl::types::updates::DifferenceSlice {
                            new_messages,
                            new_encrypted_messages: vec![],
                            other_updates,
                            chats,
                            users,
                            intermediate_state: state(upto),
                        })
                        .to_bytes()
                    } else {
                        tl::enums::updates::Difference::Difference(tl::types::updates::Difference {
                            new_messages,
                            new_encrypted_messages: vec![],
                            other_updates,
                            chats,
                            users,
                            state: state(upto),
                        })
                        .to_bytes()
                    }
                }
            }
            f::updates::GetChannelDifference::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "getChannelDifference".into()));
                let r = req!(f::updates::GetChannelDifference);
                let tl::enums::InputChannel::Channel(c) = &r.channel else {
                    return Err(rpc(400, "CHANNEL_INVALID"));
                };
                let log = w.channel_log.get(&c.channel_id).cloned().unwrap_or_default();
                let current = log.last().map_or(0, |(p, _)| *p);
                let newer: Vec<_> = log.iter().filter(|(p, _)| *p > r.pts).cloned().collect();
                if newer.is_empty() {
                    tl::enums::updates::ChannelDifference::Empty(tl::types::updates::ChannelDifferenceEmpty {
                        r#final: true,
                        pts: r.pts.max(current),
                        timeout: None,
                    })
                    .to_bytes()
                } else {
                    let page: Vec<_> = newer.iter().take(r.limit.max(1) as usize).cloned().collect();
                    let more = newer.len() > page.len();
                    let pts = if more { page.last().map_or(r.pts, |(p, _)| *p) } else { current };
                    let chats: Vec<_> =
                        w.chats.get(&(-1_000_000_000_000 - c.channel_id)).cloned().into_iter().collect();
                    tl::enums::updates::ChannelDifference::Difference(tl::types::updates::ChannelDifference {
                        r#final: !more,
                        pts,
                        timeout: None,
                        new_messages: page.into_iter().map(|(_, m)| m).collect(),
                        other_updates: vec![],
                        chats,
                        users: vec![],
                    })
                    .to_bytes()
                }
            }
            f::messages::SendMessage::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "sendMessage".into()));
                let r = req!(f::messages::SendMessage);
                if w.random_ids.contains_key(&r.random_id) {
                    return Err(rpc(400, "RANDOM_ID_DUPLICATE"));
                }
                if r.message.encode_utf16().count() > 4096 {
                    return Err(rpc(400, "MESSAGE_TOO_LONG"));
                }
                let chat = peer_of(&r.peer).ok_or_else(|| rpc(400, "PEER_ID_INVALID"))?;
                let answer = record_sent(&mut w, chat, &r.message, r.random_id, None);
                if std::mem::take(&mut w.lose_next_send_answer) {
                    return Err(RpcFailure::Io("connection reset after the request was written".into()));
                }
                answer
            }
            f::messages::EditMessage::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "editMessage".into()));
                let r = req!(f::messages::EditMessage);
                let chat = peer_of(&r.peer).ok_or_else(|| rpc(400, "PEER_ID_INVALID"))?;
                let text = r.message.unwrap_or_default();
                if text.encode_utf16().count() > 4096 {
                    return Err(rpc(400, "MESSAGE_TOO_LONG"));
                }
                let Some(sent) = w.sent.iter_mut().find(|s| s.chat == chat && s.id == r.id) else {
                    return Err(rpc(400, "MESSAGE_ID_INVALID"));
                };
                if sent.text == text {
                    return Err(rpc(400, "MESSAGE_NOT_MODIFIED"));
                }
                let before = std::mem::replace(&mut sent.text, text.clone());
                sent.edits.push(before);
                let m = message(r.id, peer_enum(chat), Some(ME), true, &text, None, now() - 1, Some(now()));
                let u = w.log_other(|pts| {
                    tl::enums::Update::EditMessage(tl::types::UpdateEditMessage { message: m, pts, pts_count: 1 })
                });
                tl::enums::Updates::Updates(tl::types::Updates {
                    updates: vec![u],
                    users: vec![],
                    chats: vec![],
                    date: now(),
                    seq: 0,
                })
                .to_bytes()
            }
            f::upload::SaveFilePart::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "saveFilePart".into()));
                let r = req!(f::upload::SaveFilePart);
                if r.bytes.len() > 512 * 1024 {
                    return Err(rpc(400, "FILE_PART_TOO_BIG"));
                }
                w.parts.entry(r.file_id).or_default().insert(r.file_part, r.bytes);
                true.to_bytes()
            }
            f::messages::SendMedia::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "sendMedia".into()));
                let r = req!(f::messages::SendMedia);
                if w.random_ids.contains_key(&r.random_id) {
                    return Err(rpc(400, "RANDOM_ID_DUPLICATE"));
                }
                let chat = peer_of(&r.peer).ok_or_else(|| rpc(400, "PEER_ID_INVALID"))?;
                let (file, mime) = match &r.media {
                    tl::enums::InputMedia::UploadedDocument(d) => (d.file.clone(), d.mime_type.clone()),
                    tl::enums::InputMedia::UploadedPhoto(p) => (p.file.clone(), "image/jpeg".into()),
                    _ => return Err(rpc(400, "MEDIA_INVALID")),
                };
                let tl::enums::InputFile::File(file) = file else { return Err(rpc(400, "FILE_PARTS_INVALID")) };
                let parts = w.parts.remove(&file.id).unwrap_or_default();
                if parts.len() as i32 != file.parts || parts.keys().copied().ne(0..file.parts) {
                    return Err(rpc(400, "FILE_PARTS_INVALID"));
                }
                let bytes: Vec<u8> = parts.into_values().flatten().collect();
                record_sent(&mut w, chat, &r.message, r.random_id, Some((file.name, mime, bytes)))
            }
            f::messages::ReadHistory::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "readHistory".into()));
                let r = req!(f::messages::ReadHistory);
                let chat = peer_of(&r.peer).ok_or_else(|| rpc(400, "PEER_ID_INVALID"))?;
                w.reads.push((chat, r.max_id));
                w.pts += 1;
                tl::enums::messages::AffectedMessages::Messages(tl::types::messages::AffectedMessages {
                    pts: w.pts,
                    pts_count: 1,
                })
                .to_bytes()
            }
            f::messages::GetHistory::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "getHistory".into()));
                w.history_calls.push(std::time::Instant::now());
                let r = req!(f::messages::GetHistory);
                let chat = peer_of(&r.peer).ok_or_else(|| rpc(400, "PEER_ID_INVALID"))?;
                let mut msgs: Vec<_> = w
                    .log
                    .iter()
                    .map(|(_, m)| m.clone())
                    .filter(|m| match m {
                        tl::enums::Message::Message(m) => {
                            peer_to_dialog(&m.peer_id) == chat && (r.offset_id == 0 || m.id < r.offset_id)
                        }
                        _ => false,
                    })
                    .collect();
                msgs.reverse();
                msgs.truncate(r.limit.max(0) as usize);
                let users: Vec<_> = w.users.values().cloned().collect();
                tl::enums::messages::Messages::Messages(tl::types::messages::Messages {
                    messages: msgs,
                    topics: vec![],
                    chats: vec![],
                    users,
                })
                .to_bytes()
            }
            f::messages::GetDialogs::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "getDialogs".into()));
                if w.bot {
                    // Bots have no dialog list.
                    return Err(rpc(400, "BOT_METHOD_INVALID"));
                }
                w.history_calls.push(std::time::Instant::now());
                // Each chat once, by its latest message, most recent first.
                let mut tops: Vec<tl::enums::Message> = Vec::new();
                for (_, m) in w.log.iter().rev() {
                    let tl::enums::Message::Message(x) = m else { continue };
                    if !tops.iter().any(|t| matches!(t, tl::enums::Message::Message(y) if y.peer_id == x.peer_id)) {
                        tops.push(m.clone());
                    }
                }
                let dialogs = tops
                    .iter()
                    .filter_map(|m| match m {
                        tl::enums::Message::Message(m) => Some(tl::enums::Dialog::Dialog(tl::types::Dialog {
                            pinned: false,
                            unread_mark: false,
                            view_forum_as_messages: false,
                            peer: m.peer_id.clone(),
                            top_message: m.id,
                            read_inbox_max_id: 0,
                            read_outbox_max_id: 0,
                            unread_count: 1,
                            unread_mentions_count: 0,
                            unread_reactions_count: 0,
                            unread_poll_votes_count: 0,
                            notify_settings: tl::enums::PeerNotifySettings::Settings(tl::types::PeerNotifySettings {
                                show_previews: None,
                                silent: None,
                                mute_until: None,
                                ios_sound: None,
                                android_sound: None,
                                other_sound: None,
                                stories_muted: None,
                                stories_hide_sender: None,
                                stories_ios_sound: None,
                                stories_android_sound: None,
                                stories_other_sound: None,
                            }),
                            pts: None,
                            draft: None,
                            folder_id: None,
                            ttl_period: None,
                        })),
                        _ => None,
                    })
                    .collect();
                tl::enums::messages::Dialogs::Dialogs(tl::types::messages::Dialogs {
                    dialogs,
                    messages: tops,
                    chats: w.chats.values().cloned().collect(),
                    users: w.users.values().cloned().collect(),
                })
                .to_bytes()
            }
            f::auth::ExportAuthorization::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "exportAuthorization".into()));
                let r = req!(f::auth::ExportAuthorization);
                tl::enums::auth::ExportedAuthorization::Authorization(tl::types::auth::ExportedAuthorization {
                    id: i64::from(r.dc_id),
                    bytes: b"exported".to_vec(),
                })
                .to_bytes()
            }
            f::auth::ImportAuthorization::CONSTRUCTOR_ID => {
                w.calls.push((dc, "importAuthorization".into()));
                let r = req!(f::auth::ImportAuthorization);
                if r.id != i64::from(dc) || r.bytes != b"exported" {
                    return Err(rpc(400, "AUTH_BYTES_INVALID"));
                }
                w.authorized_dcs.insert(dc);
                authorization(me).to_bytes()
            }
            f::upload::GetFile::CONSTRUCTOR_ID => {
                need_auth!();
                w.calls.push((dc, "getFile".into()));
                let r = req!(f::upload::GetFile);
                let tl::enums::InputFileLocation::InputDocumentFileLocation(loc) = r.location else {
                    return Err(rpc(400, "LOCATION_INVALID"));
                };
                if dc != 4 {
                    return Err(rpc(303, "FILE_MIGRATE_4"));
                }
                let file = w.files.get(&loc.id).ok_or_else(|| rpc(400, "FILE_ID_INVALID"))?;
                if r.offset % i64::from(r.limit) != 0 || r.limit > 512 * 1024 {
                    return Err(rpc(400, "LIMIT_INVALID"));
                }
                let start = (r.offset as usize).min(file.len());
                let end = (start + r.limit as usize).min(file.len());
                tl::enums::upload::File::File(tl::types::upload::File {
                    r#type: tl::enums::storage::FileType::FileUnknown,
                    mtime: 0,
                    bytes: file[start..end].to_vec(),
                })
                .to_bytes()
            }
            other => {
                return Err(rpc(400, &format!("METHOD_NOT_SCRIPTED_{other:08x}")));
            }
        };
        Ok(out)
    }
}

/// Our message, sent: logged with the next pts and id, remembered by its
/// random_id; Telegram's answer names the message it created.
fn record_sent(
    w: &mut World,
    chat: i64,
    text: &str,
    random_id: i64,
    file: Option<(String, String, Vec<u8>)>,
) -> Vec<u8> {
    w.pts += 1;
    w.next_id += 1;
    let (id, pts) = (w.next_id, w.pts);
    w.random_ids.insert(random_id, id);
    w.sent.push(Sent { chat, text: text.to_string(), random_id, id, file, edits: Vec::new() });
    let m = message(id, peer_enum(chat), Some(ME), true, text, None, now(), None);
    w.log.push((pts, m.clone()));
    tl::enums::Updates::Updates(tl::types::Updates {
        updates: vec![
            tl::enums::Update::MessageId(tl::types::UpdateMessageId { id, random_id }),
            tl::enums::Update::NewMessage(tl::types::UpdateNewMessage { message: m, pts, pts_count: 1 }),
        ],
        users: vec![],
        chats: vec![],
        date: now(),
        seq: 0,
    })
    .to_bytes()
}

fn peer_to_dialog(p: &tl::enums::Peer) -> i64 {
    match p {
        tl::enums::Peer::User(u) => u.user_id,
        tl::enums::Peer::Chat(c) => -c.chat_id,
        tl::enums::Peer::Channel(c) => -1_000_000_000_000 - c.channel_id,
    }
}

/// The seam, as the adapter sees it.
pub struct Seam(pub Arc<FakeTelegram>);

#[async_trait]
impl TgRpc for Seam {
    async fn invoke(&self, dc_id: i32, body: Vec<u8>) -> Result<Vec<u8>, RpcFailure> {
        self.0.answer(dc_id, &body)
    }

    async fn next_updates(&self) -> Option<UpdatesLike> {
        self.0.rx.lock().await.recv().await
    }
}
