//! From Telegram's TL objects to the connector's messages and events.

use crate::messenger::{ChatKind, Content, Event, Identity, MediaRef, Message};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use grammers_session::types::{ChannelState, PeerId, UpdatesState};
use grammers_session::updates::{MessageBox, State};
use grammers_tl_types::{self as tl, Deserializable, Serializable};
use std::collections::HashMap;

/// Users and chats that came with a batch of updates, by id.
#[derive(Default)]
pub struct Peers {
    users: HashMap<i64, tl::types::User>,
    chats: HashMap<i64, (String, ChatKind, Option<u32>)>,
}

impl Peers {
    /// Indexes the users and chats of a batch.
    pub fn new(users: &[tl::enums::User], chats: &[tl::enums::Chat]) -> Self {
        let mut p = Peers::default();
        for u in users {
            if let tl::enums::User::User(u) = u {
                p.users.insert(u.id, u.clone());
            }
        }
        for c in chats {
            let members = |n: i32| u32::try_from(n).ok();
            let (id, title, kind, count) = match c {
                tl::enums::Chat::Chat(c) => {
                    (PeerId::chat_unchecked(c.id), c.title.clone(), ChatKind::Group, members(c.participants_count))
                }
                tl::enums::Chat::Forbidden(c) => (PeerId::chat_unchecked(c.id), c.title.clone(), ChatKind::Group, None),
                tl::enums::Chat::Channel(c) => (
                    PeerId::channel_unchecked(c.id),
                    c.title.clone(),
                    if c.broadcast { ChatKind::Channel } else { ChatKind::Group },
                    c.participants_count.and_then(members),
                ),
                tl::enums::Chat::ChannelForbidden(c) => (
                    PeerId::channel_unchecked(c.id),
                    c.title.clone(),
                    if c.broadcast { ChatKind::Channel } else { ChatKind::Group },
                    None,
                ),
                _ => continue,
            };
            p.chats.insert(dialog_id(id), (title, kind, count));
        }
        p
    }

    /// A user's identity (only the id when the batch did not carry the user).
    pub fn identity(&self, user_id: i64) -> Identity {
        match self.users.get(&user_id) {
            Some(u) => identity_of(u),
            None => Identity { id: user_id.to_string(), ..Default::default() },
        }
    }
}

/// The person a TL user is.
pub fn identity_of(u: &tl::types::User) -> Identity {
    let name = [u.first_name.as_deref(), u.last_name.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Identity {
        id: u.id.to_string(),
        name: if name.is_empty() { u.username.clone().unwrap_or_else(|| u.id.to_string()) } else { name },
        phone: u
            .phone
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|p| if p.starts_with('+') { p.clone() } else { format!("+{p}") }),
        username: u.username.clone(),
    }
}

/// A peer's Bot API dialog id: users positive, groups negative, channels -100….
pub fn dialog_id(id: PeerId) -> i64 {
    id.bot_api_dialog_id().unwrap_or(0)
}

/// The chat id string of a TL peer.
pub fn chat_id_of(peer: &tl::enums::Peer) -> String {
    dialog_id(PeerId::from(peer)).to_string()
}

/// The peer a chat id names.
pub fn peer_of(chat_id: &str) -> Option<PeerId> {
    chat_id.parse().ok().and_then(PeerId::from_bot_api_dialog_id)
}

/// A message of a chat, or `None` for service messages. An `out` message (the
/// account's own: its owner wrote it on another device, or it is a reply the
/// connector sent) is marked outgoing, with the owner as its sender and, in a
/// private chat, the customer the chat is with.
pub fn message(m: &tl::enums::Message, peers: &Peers, edited: bool) -> Option<Message> {
    let tl::enums::Message::Message(m) = m else { return None };
    let chat = PeerId::from(&m.peer_id);
    let chat_key = dialog_id(chat);
    let (chat_kind, chat_title, chat_members) = match &m.peer_id {
        tl::enums::Peer::User(_) => (ChatKind::Private, None, None),
        _ => match peers.chats.get(&chat_key) {
            Some((title, kind, members)) => (*kind, Some(title.clone()), *members),
            None => (
                if matches!(m.peer_id, tl::enums::Peer::Channel(_)) && m.post {
                    ChatKind::Channel
                } else {
                    ChatKind::Group
                },
                None,
                None,
            ),
        },
    };
    let customer = match &m.peer_id {
        tl::enums::Peer::User(u) if m.out => Some(peers.identity(u.user_id)),
        _ => None,
    };
    let sender = match (&m.from_id, &m.peer_id) {
        (Some(tl::enums::Peer::User(u)), _) => peers.identity(u.user_id),
        // Our own message in a private chat names no author: the account's owner.
        (None, tl::enums::Peer::User(_)) if m.out => Identity::default(),
        (None, tl::enums::Peer::User(u)) => peers.identity(u.user_id),
        // A channel post (or an anonymous admin): the chat speaks.
        _ => Identity {
            id: chat_key.to_string(),
            name: chat_title.clone().unwrap_or_else(|| chat_key.to_string()),
            ..Default::default()
        },
    };
    let date = if edited { m.edit_date.unwrap_or(m.date) } else { m.date };
    Some(Message {
        chat_id: chat_key.to_string(),
        chat_kind,
        chat_title,
        chat_members,
        message_id: m.id.to_string(),
        sender,
        content: content(m),
        sent_at_ms: i64::from(date) * 1000,
        edited,
        history: false,
        outgoing: m.out,
        customer,
        forwarded_from: m.fwd_from.as_ref().map(|f| forwarded_from(f, peers)),
        reply_to: reply_to(m.reply_to.as_ref()),
    })
}

/// Who a forwarded message came from: the name Telegram shows (a hidden
/// account's chosen name, a person, or a channel).
fn forwarded_from(f: &tl::enums::MessageFwdHeader, peers: &Peers) -> String {
    let tl::enums::MessageFwdHeader::Header(f) = f;
    if let Some(name) = f.from_name.clone().filter(|n| !n.is_empty()) {
        return name;
    }
    match &f.from_id {
        Some(tl::enums::Peer::User(u)) => {
            let who = peers.identity(u.user_id);
            if who.name.is_empty() { format!("user {}", u.user_id) } else { who.name }
        }
        Some(p) => {
            let id = chat_id_of(p);
            peers.chats.get(&id.parse().unwrap_or_default()).map(|(title, ..)| title.clone()).unwrap_or(id)
        }
        None => "a hidden account".into(),
    }
}

/// The message a message answers, with the part its writer quoted.
fn reply_to(r: Option<&tl::enums::MessageReplyHeader>) -> Option<crate::messenger::Reply> {
    let Some(tl::enums::MessageReplyHeader::Header(h)) = r else { return None };
    Some(crate::messenger::Reply {
        message_id: h.reply_to_msg_id?.to_string(),
        quote: h.quote_text.clone().filter(|q| !q.is_empty()),
    })
}

fn content(m: &tl::types::Message) -> Content {
    let text = || Content::Text { text: m.message.clone() };
    match &m.media {
        Some(tl::enums::MessageMedia::Photo(p)) => match &p.photo {
            Some(tl::enums::Photo::Photo(photo)) => {
                photo_ref(photo).map(|media| Content::Media { media, caption: m.message.clone() }).unwrap_or_else(text)
            }
            _ => text(),
        },
        Some(tl::enums::MessageMedia::Document(d)) => match &d.document {
            Some(tl::enums::Document::Document(doc)) => {
                Content::Media { media: document_ref(doc, d.voice), caption: m.message.clone() }
            }
            _ => text(),
        },
        Some(tl::enums::MessageMedia::Geo(g)) => match &g.geo {
            tl::enums::GeoPoint::Point(p) => Content::Location { latitude: p.lat, longitude: p.long },
            _ => text(),
        },
        Some(tl::enums::MessageMedia::Contact(c)) => Content::Contact {
            name: format!("{} {}", c.first_name, c.last_name).trim().to_string(),
            phone: c.phone_number.clone(),
        },
        Some(tl::enums::MessageMedia::Poll(p)) => Content::Text { text: poll_text(p) },
        _ => text(),
    }
}

/// A poll as a line a manager reads: `[poll: question — answer / answer]` (a quiz
/// says so; a closed poll too).
fn poll_text(p: &tl::types::MessageMediaPoll) -> String {
    let tl::enums::Poll::Poll(poll) = &p.poll;
    let tl::enums::TextWithEntities::Entities(question) = &poll.question;
    let answers: Vec<&str> = poll
        .answers
        .iter()
        .filter_map(|a| match a {
            tl::enums::PollAnswer::Answer(a) => {
                let tl::enums::TextWithEntities::Entities(t) = &a.text;
                Some(t.text.as_str())
            }
            _ => None,
        })
        .collect();
    let kind = if poll.quiz { "quiz" } else { "poll" };
    let closed = if poll.closed { ", closed" } else { "" };
    format!("[{kind}{closed}: {} — {}]", question.text, answers.join(" / "))
}

fn photo_ref(photo: &tl::types::Photo) -> Option<MediaRef> {
    // The largest size: what a person would open.
    let (kind, size) = photo
        .sizes
        .iter()
        .filter_map(|s| match s {
            tl::enums::PhotoSize::Size(s) => Some((s.r#type.clone(), s.size as u64)),
            tl::enums::PhotoSize::Progressive(s) => Some((s.r#type.clone(), s.sizes.iter().max().copied()? as u64)),
            _ => None,
        })
        .max_by_key(|(_, size)| *size)?;
    let location = tl::enums::InputFileLocation::InputPhotoFileLocation(tl::types::InputPhotoFileLocation {
        id: photo.id,
        access_hash: photo.access_hash,
        file_reference: photo.file_reference.clone(),
        thumb_size: kind,
    });
    Some(MediaRef {
        id: encode_location(photo.dc_id, &location),
        kind: "photo".into(),
        file_name: format!("photo_{}.jpg", photo.id),
        mime_type: "image/jpeg".into(),
        size,
    })
}

fn document_ref(doc: &tl::types::Document, voice: bool) -> MediaRef {
    let mut kind = "document";
    let mut file_name = None;
    for a in &doc.attributes {
        match a {
            tl::enums::DocumentAttribute::Filename(f) => file_name = Some(f.file_name.clone()),
            tl::enums::DocumentAttribute::Audio(a) => kind = if a.voice || voice { "voice" } else { "audio" },
            tl::enums::DocumentAttribute::Video(_) if kind == "document" => kind = "video",
            _ => {}
        }
    }
    let location = tl::enums::InputFileLocation::InputDocumentFileLocation(tl::types::InputDocumentFileLocation {
        id: doc.id,
        access_hash: doc.access_hash,
        file_reference: doc.file_reference.clone(),
        thumb_size: String::new(),
    });
    let ext = match kind {
        "voice" => "ogg",
        "video" => "mp4",
        "audio" => "mp3",
        _ => "bin",
    };
    MediaRef {
        id: encode_location(doc.dc_id, &location),
        kind: kind.into(),
        file_name: file_name.unwrap_or_else(|| format!("{kind}_{}.{ext}", doc.id)),
        mime_type: doc.mime_type.clone(),
        size: doc.size.max(0) as u64,
    }
}

/// A media id: the datacenter and the serialized file location.
pub fn encode_location(dc_id: i32, location: &tl::enums::InputFileLocation) -> String {
    format!("tg:{dc_id}:{}", URL_SAFE_NO_PAD.encode(location.to_bytes()))
}

/// The datacenter and file location of a media id.
pub fn decode_location(id: &str) -> Option<(i32, tl::enums::InputFileLocation)> {
    let rest = id.strip_prefix("tg:")?;
    let (dc, b64) = rest.split_once(':')?;
    let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
    Some((dc.parse().ok()?, tl::enums::InputFileLocation::from_bytes(&bytes).ok()?))
}

/// What an update means to the bridge (`None`: nothing for it). `chats_of` resolves
/// the chat of an account-wide deletion, which Telegram does not name.
pub fn event(update: &tl::enums::Update, peers: &Peers, chat_of: impl Fn(i32) -> Option<String>) -> Vec<Event> {
    use tl::enums::Update as U;
    let one = |m: Option<Message>| m.map(|m| vec![Event::Message(Box::new(m))]).unwrap_or_default();
    match update {
        U::NewMessage(u) => one(message(&u.message, peers, false)),
        U::NewChannelMessage(u) => one(message(&u.message, peers, false)),
        U::EditMessage(u) => one(message(&u.message, peers, true)),
        U::EditChannelMessage(u) => one(message(&u.message, peers, true)),
        // Telegram does not say from which chat: the adapter's memory of recent
        // ids, else an empty chat the bridge fills from the stored message.
        U::DeleteMessages(u) => u
            .messages
            .iter()
            .map(|id| Event::Deleted { chat_id: chat_of(*id).unwrap_or_default(), message_id: id.to_string() })
            .collect(),
        // Our messages read by the customer, up to `max_id` (bots get none).
        U::ReadHistoryOutbox(u) => {
            vec![Event::ReadUpTo { chat_id: chat_id_of(&u.peer), message_id: u.max_id.to_string() }]
        }
        U::ReadChannelOutbox(u) => vec![Event::ReadUpTo {
            chat_id: dialog_id(PeerId::channel_unchecked(u.channel_id)).to_string(),
            message_id: u.max_id.to_string(),
        }],
        U::DeleteChannelMessages(u) => {
            let chat = dialog_id(PeerId::channel_unchecked(u.channel_id)).to_string();
            u.messages.iter().map(|id| Event::Deleted { chat_id: chat.clone(), message_id: id.to_string() }).collect()
        }
        _ => Vec::new(),
    }
}

/// Moves a full update state past one update.
pub fn advance(state: &mut UpdatesState, s: &State) {
    state.date = state.date.max(s.date);
    if s.seq != 0 {
        state.seq = s.seq;
    }
    match s.message_box {
        Some(MessageBox::Common { pts }) => state.pts = pts,
        Some(MessageBox::Secondary { qts }) => state.qts = qts,
        Some(MessageBox::Channel { channel_id, pts }) => match state.channels.iter_mut().find(|c| c.id == channel_id) {
            Some(c) => c.pts = pts,
            None => state.channels.push(ChannelState { id: channel_id, pts }),
        },
        None => {}
    }
}

/// The cursor text of an update state.
pub fn cursor_of(state: &UpdatesState) -> String {
    serde_json::to_string(state).unwrap_or_default()
}

/// The update state of a cursor.
pub fn state_of(cursor: &str) -> Option<UpdatesState> {
    serde_json::from_str(cursor).ok()
}

/// The login URL of a token: `tg://login?token=` and the token in base64url
/// without padding.
pub fn login_url(token: &[u8]) -> String {
    format!("tg://login?token={}", URL_SAFE_NO_PAD.encode(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_url_is_unpadded_base64url() {
        // Bytes that need '-', '_' and would need padding in standard base64:
        // 0xfb 0xff 0xbf → "-_-_" and 0xfa → "-g" (standard: "+/+/", "+g==").
        assert_eq!(login_url(&[0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfa]), "tg://login?token=-_-_-_-_-g");
        assert_eq!(login_url(b"hello"), "tg://login?token=aGVsbG8");
    }

    #[test]
    fn chat_ids_round_trip_through_peers() {
        for id in [PeerId::user_unchecked(42), PeerId::chat_unchecked(77), PeerId::channel_unchecked(1_234_567)] {
            let text = dialog_id(id).to_string();
            assert_eq!(peer_of(&text), Some(id), "{text}");
        }
        assert_eq!(dialog_id(PeerId::channel_unchecked(1_234_567)), -1_000_001_234_567);
        assert_eq!(peer_of("0"), None);
        assert_eq!(peer_of("chat"), None);
    }

    #[test]
    fn a_media_id_carries_its_location() {
        let location = tl::enums::InputFileLocation::InputDocumentFileLocation(tl::types::InputDocumentFileLocation {
            id: 9,
            access_hash: -5,
            file_reference: vec![1, 2, 3],
            thumb_size: String::new(),
        });
        let id = encode_location(4, &location);
        assert_eq!(decode_location(&id), Some((4, location)));
        assert_eq!(decode_location("tg:4:!!"), None);
        assert_eq!(decode_location("wa:1"), None);
    }

    #[test]
    fn the_state_moves_per_message_box() {
        let mut s = UpdatesState { pts: 10, qts: 1, date: 100, seq: 5, channels: vec![] };
        advance(&mut s, &State { date: 101, seq: 6, message_box: Some(MessageBox::Common { pts: 11 }) });
        advance(&mut s, &State { date: 101, seq: 0, message_box: Some(MessageBox::Channel { channel_id: 7, pts: 3 }) });
        advance(&mut s, &State { date: 102, seq: 0, message_box: Some(MessageBox::Channel { channel_id: 7, pts: 4 }) });
        assert_eq!(
            s,
            UpdatesState { pts: 11, qts: 1, date: 102, seq: 6, channels: vec![ChannelState { id: 7, pts: 4 }] }
        );
        assert_eq!(state_of(&cursor_of(&s)), Some(s));
    }

    #[test]
    fn a_poll_reads_as_its_question_and_answers() {
        let text = |t: &str| {
            tl::enums::TextWithEntities::Entities(tl::types::TextWithEntities { text: t.into(), entities: vec![] })
        };
        let answer = |t: &str, o: u8| {
            tl::enums::PollAnswer::Answer(tl::types::PollAnswer {
                text: text(t),
                option: vec![o],
                media: None,
                added_by: None,
                date: None,
            })
        };
        let poll = tl::types::Poll {
            id: 1,
            closed: false,
            public_voters: false,
            multiple_choice: false,
            quiz: false,
            open_answers: false,
            revoting_disabled: false,
            shuffle_answers: false,
            hide_results_until_close: false,
            creator: false,
            subscribers_only: false,
            question: text("Which day suits you?"),
            answers: vec![answer("Saturday", 0), answer("Sunday", 1)],
            close_period: None,
            close_date: None,
            countries_iso2: None,
            hash: 0,
        };
        let media = |poll: tl::types::Poll| tl::types::MessageMediaPoll {
            poll: tl::enums::Poll::Poll(poll),
            results: tl::enums::PollResults::Results(Box::new(tl::types::PollResults {
                min: false,
                has_unread_votes: false,
                can_view_stats: false,
                results: None,
                total_voters: None,
                recent_voters: None,
                solution: None,
                solution_entities: None,
                solution_media: None,
            })),
            attached_media: None,
        };
        assert_eq!(poll_text(&media(poll.clone())), "[poll: Which day suits you? — Saturday / Sunday]");
        let quiz = tl::types::Poll { quiz: true, closed: true, ..poll };
        assert_eq!(poll_text(&media(quiz)), "[quiz, closed: Which day suits you? — Saturday / Sunday]");
    }
}
