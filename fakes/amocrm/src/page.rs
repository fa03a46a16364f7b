//! The sandbox's web page: what a manager would see in amoCRM — contacts, leads
//! with their notes and tasks, and chats — with a reply box, so a person can watch
//! a conversation and answer by hand. Labelled as a sandbox everywhere.
//!
//! - `GET /` (or `/sandbox`): the page; it reloads itself every few seconds unless
//!   someone is typing.
//! - `POST /sandbox/leads/{id}/reply` (form `text`): the manager's reply as a lead
//!   note with the reply prefix (`>> `), the way the connector notices replies.
//! - `POST /sandbox/chats/{conversation}/reply` (form `text`): a manager's message
//!   in a Chats API conversation.

use std::collections::BTreeMap;
use std::fmt::Write;

use http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;

use crate::model::{Direction, Snapshot};
use crate::respond::Resp;
use crate::state::Shared;

/// Paths the page serves.
pub(crate) fn is_page(path: &str) -> bool {
    path == "/" || path == "/sandbox" || path.starts_with("/sandbox/")
}

/// The manager who answers from the page (the account's first user).
const MANAGER: i64 = 1001;

#[derive(Deserialize)]
struct ReplyForm {
    text: String,
}

/// Handles the page's paths.
pub(crate) async fn handle(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Resp {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", [""] | ["sandbox"]) => html(StatusCode::OK, render(&shared.state().snapshot(), &shared.base_url)),
        ("POST", ["sandbox", kind @ ("leads" | "chats"), id, "reply"]) => {
            let form: ReplyForm = match serde_urlencoded::from_bytes(body) {
                Ok(f) => f,
                Err(e) => return text(StatusCode::BAD_REQUEST, &format!("the form needs a text: {e}")),
            };
            let reply = form.text.trim();
            if reply.is_empty() {
                return text(StatusCode::BAD_REQUEST, "write something to send");
            }
            if *kind == "leads" {
                let Ok(lead) = id.parse::<i64>() else { return text(StatusCode::BAD_REQUEST, "not a lead id") };
                if !shared.state().leads.contains_key(&lead) {
                    return text(StatusCode::NOT_FOUND, "no such lead");
                }
                crate::control::add_manager_note(shared, lead, MANAGER, &format!(">> {reply}"));
            } else if let Err(e) = crate::chats::manager_reply(shared, id, MANAGER, reply).await {
                return text(StatusCode::BAD_REQUEST, &format!("{e:#}"));
            }
            let mut resp = text(StatusCode::SEE_OTHER, "sent");
            resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/sandbox"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not a page of the sandbox"),
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = http::Response::new(axum::body::Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn html(status: StatusCode, body: String) -> Resp {
    with_type(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &str) -> Resp {
    with_type(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn time(unix_secs: i64) -> String {
    jiff::Timestamp::from_second(unix_secs).map(|t| t.strftime("%H:%M:%S").to_string()).unwrap_or_default()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}\
header{background:#fff3cd;border-bottom:2px solid #e0b000;padding:10px 20px}\
header b{color:#8a6d00}main{display:grid;grid-template-columns:280px 1fr;gap:16px;padding:16px 20px}\
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:12px 14px;margin-bottom:14px}\
h2{font-size:15px;margin:0 0 8px}h3{font-size:14px;margin:0 0 6px}.muted{color:#6a7785;font-size:12px}\
.note{border-left:3px solid #4a90d9;padding:4px 8px;margin:6px 0;white-space:pre-wrap;font-size:13px}\
.note.out{border-color:#2e9e5b;background:#f0faf4}.task{font-size:13px;margin:4px 0}\
.tag{display:inline-block;background:#e8eef5;border-radius:10px;padding:0 8px;font-size:12px;margin-right:4px}\
form{display:flex;gap:8px;margin-top:8px}textarea{flex:1;height:34px;font:inherit;padding:6px}\
button{background:#2e6fd8;color:#fff;border:0;border-radius:6px;padding:0 14px;font:inherit;cursor:pointer}\
ul{margin:0;padding-left:18px;font-size:13px}";

/// The page for a snapshot of the sandbox.
pub(crate) fn render(s: &Snapshot, base_url: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=utf-8><title>amoCRM sandbox</title><style>{STYLE}</style></head><body>\
         <header><b>SANDBOX</b> — a stand-in for amoCRM on this machine ({}), used by CRMessenger's demo and tests. \
         Nothing here is a real CRM account.</header><main><div>",
        esc(base_url)
    );
    // Contacts.
    let _ = write!(out, "<section id=contacts><h2>Contacts ({})</h2><ul>", s.contacts.len());
    for c in &s.contacts {
        let _ = write!(out, "<li>{} <span class=muted>#{}</span></li>", esc(&c.name), c.id);
    }
    out.push_str("</ul></section>");
    // Chats (Chats API).
    if !s.chats.is_empty() {
        let _ = write!(out, "<section id=chats-list><h2>Chats ({})</h2><ul>", s.chats.len());
        for c in &s.chats {
            let _ = write!(out, "<li><a href=\"#chat-{0}\">{0}</a></li>", esc(&c.conversation_id));
        }
        out.push_str("</ul></section>");
    }
    out.push_str("</div><div>");
    // Leads, newest first, with their notes and tasks.
    let mut notes: BTreeMap<i64, Vec<&crate::model::Note>> = BTreeMap::new();
    for n in s.notes.iter().filter(|n| n.entity_type == "leads") {
        notes.entry(n.entity_id).or_default().push(n);
    }
    let mut leads: Vec<_> = s.leads.iter().collect();
    leads.sort_by_key(|l| std::cmp::Reverse(l.id));
    if leads.is_empty() {
        out.push_str(
            "<section><h2>Leads</h2><p class=muted>No leads yet: they appear when a customer writes.</p></section>",
        );
    }
    for l in leads {
        let contacts: Vec<String> =
            s.contacts.iter().filter(|c| l.contact_ids.contains(&c.id)).map(|c| esc(&c.name)).collect();
        let _ = write!(
            out,
            "<section class=lead id=lead-{id}><h2>{name} <span class=muted>lead #{id} · {contacts}</span></h2>",
            id = l.id,
            name = esc(&l.name),
            contacts = contacts.join(", ")
        );
        for t in &l.tags {
            let _ = write!(out, "<span class=tag>{}</span>", esc(t));
        }
        let mut lead_notes = notes.remove(&l.id).unwrap_or_default();
        lead_notes.sort_by_key(|n| n.id);
        for n in lead_notes {
            let body = n.params["text"].as_str().unwrap_or_default();
            let class = if body.starts_with(">>") { "note out" } else { "note" };
            let _ = write!(
                out,
                "<div class=\"{class}\"><span class=muted>{} · {}</span>\n{}</div>",
                time(n.created_at),
                esc(&n.note_type),
                esc(body)
            );
        }
        for t in s.tasks.iter().filter(|t| t.entity_type == "leads" && t.entity_id == l.id) {
            let state = if t.is_completed { "done" } else { "open" };
            let _ = write!(out, "<div class=task>☐ task ({state}): {}</div>", esc(&t.text));
        }
        let _ = write!(
            out,
            "<form method=post action=\"/sandbox/leads/{}/reply\"><textarea name=text placeholder=\"Reply to the customer\"></textarea><button>Send</button></form></section>",
            l.id
        );
    }
    // Chats API conversations.
    for c in &s.chats {
        let _ = write!(out, "<section id=\"chat-{0}\"><h2>Chat {0}</h2>", esc(&c.conversation_id));
        for m in s.chat_messages.iter().filter(|m| m.conversation_id == c.conversation_id) {
            let class = if m.direction == Direction::Outbound { "note out" } else { "note" };
            let _ = write!(out, "<div class=\"{class}\">{}</div>", esc(&m.text));
        }
        let _ = write!(
            out,
            "<form method=post action=\"/sandbox/chats/{}/reply\"><textarea name=text placeholder=\"Message\"></textarea><button>Send</button></form></section>",
            esc(&c.conversation_id)
        );
    }
    out.push_str(
        "</div></main><script>setInterval(function(){var a=document.activeElement;\
         if(!a||a.tagName!=='TEXTAREA'||!a.value)location.reload()},3000)</script></body></html>",
    );
    out
}
