//! Builders of the updates tests and demos push most often.

use crate::*;

/// The bytes `GET /v1/media/{id}` serves: the id repeated, 1,024 bytes long, or
/// `n` bytes for an id ending in `*<n>`.
pub fn media_bytes(id: &str) -> Vec<u8> {
    let len = id.rsplit_once('*').and_then(|(_, n)| n.parse().ok()).unwrap_or(1024);
    id.bytes().cycle().take(len).collect()
}

/// A customer's text message in a private chat (the common case in tests).
pub fn text(chat: &str, message_id: &str, name: &str, text: &str) -> Update {
    Update {
        seq: 0,
        kind: "message".into(),
        chat_id: chat.into(),
        chat_kind: ChatKind::Private,
        chat_title: None,
        members: None,
        message_id: message_id.into(),
        sender: Sender { id: chat.into(), name: name.into(), phone: None, username: None },
        text: text.into(),
        media: None,
        location: None,
        contact: None,
        sent_at_ms: 0,
        outgoing: false,
        customer: None,
    }
}

/// What `sender` (`(id, name)`) writes in the group `chat` titled `title`, of
/// `members` members.
pub fn group_text(
    chat: &str,
    title: &str,
    members: u32,
    message_id: &str,
    sender: (&str, &str),
    text_: &str,
) -> Update {
    Update {
        chat_kind: ChatKind::Group,
        chat_title: Some(title.into()),
        members: Some(members),
        sender: Sender { id: sender.0.into(), name: sender.1.into(), phone: None, username: None },
        ..text(chat, message_id, sender.1, text_)
    }
}

/// The customer's receipt for message `message_id` the account sent to `chat`:
/// `delivered` or `read`.
pub fn receipt(chat: &str, message_id: &str, status: &str) -> Update {
    Update { kind: status.into(), ..text(chat, message_id, "", "") }
}

/// What the account's owner writes to `chat` from their own phone.
pub fn from_owner(chat: &str, message_id: &str, text_: &str) -> Update {
    Update {
        sender: Sender { id: OWNER_ID.into(), name: OWNER_NAME.into(), phone: None, username: None },
        outgoing: true,
        customer: Some(Sender { id: chat.into(), ..Sender::default() }),
        ..text(chat, message_id, OWNER_NAME, text_)
    }
}

/// The scripted account's own user id and name (the sender of its outgoing messages).
pub const OWNER_ID: &str = "me";
/// See [`OWNER_ID`].
pub const OWNER_NAME: &str = "Shop Owner";
