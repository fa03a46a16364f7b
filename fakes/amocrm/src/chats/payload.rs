//! Strict parsing of Chats API message payloads.

use serde_json::{Map, Value};

/// Message types the Chats API accepts.
const TYPES: [&str; 9] = ["text", "contact", "file", "video", "picture", "voice", "audio", "sticker", "location"];

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{what} must be an object"))
}

fn req_str(m: &Map<String, Value>, key: &str, what: &str) -> Result<String, String> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{what}.{key} must be a string")),
        None => Err(format!("{what}.{key} is required")),
    }
}

fn opt_str(m: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{what}.{key} must be a string")),
    }
}

fn opt_int(m: &Map<String, Value>, key: &str, what: &str) -> Result<Option<i64>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("{what}.{key} must be an integer")),
    }
}

/// A sender, receiver or chat user.
#[derive(Clone, Debug)]
pub(crate) struct Participant {
    /// The integration's ID for them.
    pub id: String,
    /// Display name.
    pub name: String,
    /// amojo ID (`ref_id`), for managers and bots.
    pub ref_id: Option<String>,
    /// Avatar URL.
    pub avatar: Option<String>,
    /// `profile.phone`.
    pub phone: Option<String>,
    /// `profile.email`.
    pub email: Option<String>,
}

impl Participant {
    /// Parses `{id*, name*, ref_id, avatar, profile{phone,email}, profile_link}`.
    pub fn parse(v: &Value, what: &str) -> Result<Self, String> {
        let m = obj(v, what)?;
        let id = req_str(m, "id", what)?;
        let name = req_str(m, "name", what)?;
        if id.is_empty() {
            return Err(format!("{what}.id must not be empty"));
        }
        if name.trim().is_empty() {
            return Err(format!("{what}.name must not be empty"));
        }
        let (phone, email) = match m.get("profile") {
            None | Some(Value::Null) => (None, None),
            Some(p) => {
                let p = obj(p, &format!("{what}.profile"))?;
                let w = format!("{what}.profile");
                (opt_str(p, "phone", &w)?, opt_str(p, "email", &w)?)
            }
        };
        opt_str(m, "profile_link", what)?;
        Ok(Self { id, name, ref_id: opt_str(m, "ref_id", what)?, avatar: opt_str(m, "avatar", what)?, phone, email })
    }
}

/// `source.external_id`: ≤40 printable ASCII characters.
pub(crate) fn source(body: &Value) -> Result<Option<String>, String> {
    let Some(src) = body.get("source").filter(|s| !s.is_null()) else {
        return Ok(None);
    };
    let m = obj(src, "source")?;
    let Some(ext) = opt_str(m, "external_id", "source")? else {
        return Ok(None);
    };
    if ext.len() > 40 || !ext.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err("source.external_id must be at most 40 printable ASCII characters".into());
    }
    Ok(Some(ext))
}

/// The `message` object.
#[derive(Clone, Debug)]
pub(crate) struct Body {
    /// Type.
    pub kind: String,
    /// Text (may be empty for media).
    pub text: String,
    /// Media URL.
    pub media: Option<String>,
    /// File name.
    pub file_name: Option<String>,
    /// File size.
    pub file_size: Option<i64>,
}

/// Parses `message`; `editing` relaxes the media requirements as documented.
pub(crate) fn message(v: &Value, editing: bool) -> Result<Body, String> {
    let m = obj(v, "message")?;
    let kind = req_str(m, "type", "message")?;
    if !TYPES.contains(&kind.as_str()) {
        return Err(format!("message.type {kind} is not supported"));
    }
    let text = opt_str(m, "text", "message")?;
    let media = opt_str(m, "media", "message")?;
    let file_name = opt_str(m, "file_name", "message")?;
    let file_size = opt_int(m, "file_size", "message")?;
    match kind.as_str() {
        "text" if text.as_deref().is_none_or(|t| t.is_empty()) => {
            return Err("message.text is required for text messages".into());
        }
        "file" | "video" | "picture" if !editing => {
            if file_name.is_none() || file_size.is_none() {
                return Err(format!("message.file_name and message.file_size are required for {kind}"));
            }
            if media.is_none() {
                return Err(format!("message.media is required for {kind}"));
            }
        }
        "voice" | "audio" if !editing && media.is_none() => {
            return Err(format!("message.media is required for {kind}"));
        }
        "location" => {
            let loc = m.get("location").ok_or("message.location is required")?;
            let loc = obj(loc, "message.location")?;
            for k in ["lat", "lon"] {
                if !loc.get(k).is_some_and(Value::is_number) {
                    return Err(format!("message.location.{k} must be a number"));
                }
            }
        }
        "contact" => {
            let c = m.get("contact").ok_or("message.contact is required")?;
            let c = obj(c, "message.contact")?;
            req_str(c, "name", "message.contact")?;
            req_str(c, "phone", "message.contact")?;
        }
        _ => {}
    }
    Ok(Body { kind, text: text.unwrap_or_default(), media, file_name, file_size })
}

/// The common fields of a `new_message` payload.
#[derive(Debug)]
pub(crate) struct NewMessage {
    /// The integration's message ID.
    pub msgid: String,
    /// The integration's conversation ID.
    pub conversation_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// Milliseconds.
    pub msec_timestamp: Option<i64>,
    /// Suppress Unsorted and notification.
    pub silent: bool,
    /// `source.external_id`.
    pub source: Option<String>,
    /// Author.
    pub sender: Participant,
    /// Recipient (outbound messages only).
    pub receiver: Option<Participant>,
    /// The raw sender / receiver.
    pub raw_sender: Value,
    /// The raw receiver.
    pub raw_receiver: Option<Value>,
    /// The message.
    pub body: Body,
}

/// Parses a `new_message` payload with strict types.
pub(crate) fn new_message(p: &Value) -> Result<NewMessage, String> {
    let m = obj(p, "payload")?;
    let msgid = req_str(m, "msgid", "payload")?;
    let conversation_id = req_str(m, "conversation_id", "payload")?;
    let timestamp = match m.get("timestamp") {
        Some(v) => v.as_i64().ok_or("payload.timestamp must be an integer")?,
        None => return Err("payload.timestamp is required".into()),
    };
    let silent = match m.get("silent") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("payload.silent must be a boolean".into()),
    };
    let raw_sender = m.get("sender").cloned().ok_or("payload.sender is required")?;
    let sender = Participant::parse(&raw_sender, "payload.sender")?;
    let raw_receiver = m.get("receiver").filter(|r| !r.is_null()).cloned();
    let receiver = raw_receiver.as_ref().map(|r| Participant::parse(r, "payload.receiver")).transpose()?;
    let body = message(m.get("message").ok_or("payload.message is required")?, false)?;
    Ok(NewMessage {
        msgid,
        conversation_id,
        timestamp,
        msec_timestamp: opt_int(m, "msec_timestamp", "payload")?,
        silent,
        source: source(p)?,
        sender,
        receiver,
        raw_sender,
        raw_receiver,
        body,
    })
}
