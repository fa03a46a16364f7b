//! What Meta delivers, read: a customer's message or a status webhook as the
//! bridge's event, and a message's content (text, media, location, contact,
//! button and interactive replies) in the connector's terms.

use super::*;

impl WhatsApp {
    /// A customer's message webhook as an event (and what the adapter learns from it).
    pub(super) async fn message_event(&self, payload: &Value) -> Result<Option<Event>, MessengerError> {
        let m = &payload["message"];
        if payload["echo"].as_bool() == Some(true) {
            return Ok(echo_event(m));
        }
        let contact = &payload["contact"];
        let wa_id = m["from"].as_str().or(contact["wa_id"].as_str()).map(str::to_string);
        let user_id = m["from_user_id"].as_str().or(contact["user_id"].as_str()).map(str::to_string);
        let Some(chat) = wa_id.clone().or(user_id.clone()) else { return Ok(None) };
        let id = m["id"].as_str().unwrap_or_default().to_string();
        let at = m["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0) * 1000;
        let content = content_of(m);
        // The window opens with the customer's last message.
        let known = self.read(&format!("wa-inbound:{chat}")).await?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        if at >= known {
            self.mark(&format!("wa-inbound:{chat}"), &at.to_string()).await?;
            self.mark(&format!("wa-last-in:{chat}"), &id).await?;
        }
        Ok(Some(Event::Message(Box::new(Message {
            chat_id: chat,
            chat_kind: ChatKind::Private,
            chat_title: None,
            chat_members: None,
            message_id: id,
            sender: Identity {
                // Meta's business-scoped user id names the person; the phone, when shared, goes with it.
                id: user_id.or(wa_id.clone()).unwrap_or_default(),
                name: contact["profile"]["name"].as_str().unwrap_or_default().to_string(),
                phone: wa_id.map(|w| if w.starts_with('+') { w } else { format!("+{w}") }),
                username: None,
            },
            content,
            sent_at_ms: at,
            edited: false,
            history: false,
            outgoing: false,
            customer: None,
            forwarded_from: None,
            reply_to: None,
        }))))
    }

    /// A status webhook as an event; its callback data names the send it answers.
    pub(super) async fn status_event(&self, s: &Value) -> Result<Option<Event>, MessengerError> {
        let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else { return Ok(None) };
        let chat = s["recipient_id"].as_str().or(s["recipient_user_id"].as_str()).unwrap_or_default().to_string();
        let rid = s["biz_opaque_callback_data"].as_str().and_then(|c| c.strip_prefix("rid:"));
        let mut shown = status.to_string();
        if status == "failed" {
            let e = &s["errors"][0];
            let code = e["code"].as_i64().unwrap_or(0);
            shown = format!("failed: (#{code}) {}", e["title"].as_str().or(e["message"].as_str()).unwrap_or("error"));
            if code == 131047 {
                self.mark(&format!("wa-closed:{chat}"), &self.clock.now_ms().to_string()).await?;
            }
            if let Some(rid) = rid {
                // Not delivered: a replay may send it again.
                self.mark(&format!("wa-sent:{rid}"), "").await?;
            }
        } else if let Some(rid) = rid {
            self.mark(&format!("wa-sent:{rid}"), id).await?;
        }
        Ok(Some(Event::Status { chat_id: chat, message_id: id.to_string(), status: shown }))
    }
}

/// What the owner sent from the WhatsApp Business app on a coexistence number
/// (`smb_message_echoes`): the account's side of the chat with `to`. It opens
/// no customer-service window.
pub(super) fn echo_event(m: &Value) -> Option<Event> {
    let to = m["to"].as_str()?.to_string();
    let phone = |n: &str| if n.starts_with('+') { n.to_string() } else { format!("+{n}") };
    let from = m["from"].as_str().unwrap_or_default();
    Some(Event::Message(Box::new(Message {
        chat_id: to.clone(),
        chat_kind: ChatKind::Private,
        chat_title: None,
        chat_members: None,
        message_id: m["id"].as_str().unwrap_or_default().to_string(),
        sender: Identity { id: from.to_string(), name: String::new(), phone: Some(phone(from)), username: None },
        content: content_of(m),
        sent_at_ms: m["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0) * 1000,
        edited: false,
        history: false,
        outgoing: true,
        customer: Some(Identity { id: to.clone(), name: String::new(), phone: Some(phone(&to)), username: None }),
        forwarded_from: None,
        reply_to: None,
    })))
}

/// What a customer's WhatsApp message carries, from the webhook's `message`.
pub(super) fn content_of(m: &Value) -> Content {
    let kind = m["type"].as_str().unwrap_or("text");
    let caption = |v: &Value| v["caption"].as_str().unwrap_or_default().to_string();
    match kind {
        "text" => Content::Text { text: m["text"]["body"].as_str().unwrap_or_default().to_string() },
        "image" | "document" | "audio" | "video" | "voice" | "sticker" => {
            let part = &m[kind];
            let mime = part["mime_type"].as_str().unwrap_or("application/octet-stream").to_string();
            let ext = mime.split(['/', ';']).nth(1).unwrap_or("bin").trim().to_string();
            let media_id = part["id"].as_str().unwrap_or_default();
            Content::Media {
                media: MediaRef {
                    id: format!("wa:{media_id}"),
                    kind: match kind {
                        "image" | "sticker" => "photo",
                        "audio" if part["voice"].as_bool() == Some(true) => "voice",
                        "voice" => "voice",
                        k => k,
                    }
                    .into(),
                    file_name: part["filename"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{kind}_{media_id}.{ext}")),
                    mime_type: mime,
                    size: 0,
                },
                caption: caption(part),
            }
        }
        "location" => Content::Location {
            latitude: m["location"]["latitude"].as_f64().unwrap_or_default(),
            longitude: m["location"]["longitude"].as_f64().unwrap_or_default(),
        },
        "contacts" => Content::Contact {
            name: m["contacts"][0]["name"]["formatted_name"].as_str().unwrap_or_default().to_string(),
            phone: m["contacts"][0]["phones"][0]["phone"].as_str().unwrap_or_default().to_string(),
        },
        // A reply to a template's quick-reply button: its text and payload.
        "button" => {
            Content::Text { text: reply_text(m["button"]["text"].as_str(), m["button"]["payload"].as_str(), "button") }
        }
        // A reply to an interactive message: the button or list row chosen.
        "interactive" => {
            let i = &m["interactive"];
            let chosen = match i["type"].as_str() {
                Some("list_reply") => &i["list_reply"],
                _ => &i["button_reply"],
            };
            Content::Text { text: reply_text(chosen["title"].as_str(), chosen["id"].as_str(), "choice") }
        }
        other => Content::Text { text: format!("[{other} message]") },
    }
}

/// A pressed button or chosen row: its title, and the payload it carries.
fn reply_text(title: Option<&str>, payload: Option<&str>, what: &str) -> String {
    let title = title.unwrap_or_default();
    match payload.filter(|p| !p.is_empty() && *p != title) {
        Some(p) => format!("{title} [{what}: {p}]"),
        None => format!("{title} [{what}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text_of(m: Value) -> String {
        match content_of(&m) {
            Content::Text { text } => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn button_and_interactive_replies_keep_their_titles_and_payloads() {
        let quick = json!({ "type": "button", "button": { "text": "Yes, book it", "payload": "CONFIRM_42" } });
        assert_eq!(text_of(quick), "Yes, book it [button: CONFIRM_42]");
        let button = json!({ "type": "interactive", "interactive": {
            "type": "button_reply", "button_reply": { "id": "slot-10am", "title": "10:00" } } });
        assert_eq!(text_of(button), "10:00 [choice: slot-10am]");
        let row = json!({ "type": "interactive", "interactive": {
            "type": "list_reply", "list_reply": { "id": "size-42", "title": "42", "description": "EU" } } });
        assert_eq!(text_of(row), "42 [choice: size-42]");
        // A payload that only repeats the title is not said twice.
        let same = json!({ "type": "button", "button": { "text": "Stop", "payload": "Stop" } });
        assert_eq!(text_of(same), "Stop [button]");
        assert_eq!(text_of(json!({ "type": "order" })), "[order message]");
    }
}
