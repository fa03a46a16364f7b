//! The bridge's decisions that need no IO, kept apart from the passes that do
//! the IO so they can be tested on their own: how due rows are grouped and
//! shared between requests, what a failed delivery or send leads to and when it
//! is tried again, what a new lead, a note and an escalation task say, and when
//! a customer starts waiting for an answer.

use super::retry::backoff;
use crate::messenger::{Event, Identity, Message, MessengerError};
use crate::store::InboxRow;
use crate::texts::Texts;
use crmessenger_api::policy::{ChatFilter, LeadSettings};
use crmessenger_crm::{Channel, ErrorClass, LeadRequest, NoteRequest, Person, TaskRequest};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

/// First delay of a retried delivery or send.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest delay between retries.
pub const RETRY_CAP: Duration = Duration::from_secs(300);

/// Rows grouped by chat: chats in the order their first row came, each chat's
/// rows in their own order (the order a chat's messages are written in).
pub fn by_chat(rows: Vec<InboxRow>) -> Vec<(String, Vec<InboxRow>)> {
    let mut order: Vec<(String, Vec<InboxRow>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in rows {
        match index.get(&r.chat_id) {
            Some(&i) => order[i].1.push(r),
            None => {
                index.insert(r.chat_id.clone(), order.len());
                order.push((r.chat_id.clone(), vec![r]));
            }
        }
    }
    order
}

/// How many chats with only imported history a pass without live messages takes
/// on: one chat's contact, lead and notes are a few CRM requests, so a live
/// message that comes meanwhile waits at most that long.
pub const HISTORY_CHATS_PER_PASS: usize = 1;

/// Of chats grouped for a pass: every chat with a live row (a chat's own history
/// goes with it, before its live rows); only when there is none, at most `cap`
/// chats with only imported history.
pub fn with_history_capped(grouped: Vec<(String, Vec<InboxRow>)>, cap: usize) -> Vec<(String, Vec<InboxRow>)> {
    let live = |rows: &[InboxRow]| rows.iter().any(|r| !r.history);
    if grouped.iter().any(|(_, rows)| live(rows)) {
        return grouped.into_iter().filter(|(_, rows)| live(rows)).collect();
    }
    grouped.into_iter().take(cap).collect()
}

/// Which chats share a request: consecutive chats whose notes together stay
/// within `limit`; a chat is never split, and a chat with more than `limit` notes
/// goes alone (the CRM client pages it).
pub fn shared_requests(sizes: &[usize], limit: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, n) in sizes.iter().enumerate() {
        if i > start && size + n > limit {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// What a failed CRM delivery of a chat's rows leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// The one message is refused for good: it becomes a dead letter.
    DeadLetter,
    /// A batch was refused: the chat goes message by message to find the refused one.
    OneByOne,
    /// Try the rows again after this wait.
    Retry(Duration),
}

/// The decision for a failed delivery of `rows` messages, the chat's
/// `failures`-th in a row (from 1), with the CRM's `Retry-After` if it gave one.
pub fn after_failure(class: ErrorClass, rows: usize, failures: u32, retry_after: Option<Duration>) -> AfterFailure {
    match class {
        ErrorClass::Permanent if rows == 1 => AfterFailure::DeadLetter,
        ErrorClass::Permanent => AfterFailure::OneByOne,
        ErrorClass::Retryable | ErrorClass::Fatal => {
            let wait = backoff(failures.saturating_sub(1), RETRY_BASE, RETRY_CAP);
            AfterFailure::Retry(retry_after.map_or(wait, |ra| wait.max(ra)))
        }
    }
}

/// How long a failed send waits: the messenger's flood wait when it set one,
/// otherwise the backoff after `attempts` earlier attempts.
pub fn send_retry_wait(e: &MessengerError, attempts: i64) -> Duration {
    match e {
        MessengerError::FloodWait(d) => *d,
        _ => backoff(attempts.clamp(0, 10) as u32, RETRY_BASE, RETRY_CAP),
    }
}

/// From when the CRM is searched for notes an interrupted write may have left
/// (Unix seconds): the earliest attempt's start, with a few seconds of clock slack.
pub fn in_doubt_since(rows: &[InboxRow], now_ms: i64) -> i64 {
    rows.iter().filter_map(|r| r.attempt_started_ms).min().unwrap_or(now_ms) / 1000 - 5
}

/// Whether the policy's chat filter lets `m` through: deny wins, then allow (when
/// set, only listed chats pass), then the chat kind. An entry matches the chat id,
/// the customer's `@username` (with or without `@`), or — when it is written as a
/// phone number, with `+` or separators (`+7 999 123-45-67`; a bare number is a
/// chat id) — the customer's phone, compared in E.164.
pub fn chat_allowed(filter: &ChatFilter, m: &Message, region: &str) -> bool {
    // The customer: the sender, or for the account's own message the person written to.
    let who = if m.outgoing { m.customer.as_ref() } else { Some(&m.sender) };
    let username = who.and_then(|w| w.username.clone());
    let e164 = |p: &str| crmessenger_crm::phone::normalize_in(p, region);
    let phone = who.and_then(|w| w.phone.as_deref()).and_then(e164);
    let matches = |entry: &String| {
        let e = entry.trim();
        if e.eq_ignore_ascii_case(&m.chat_id) {
            return true;
        }
        if let Some(u) = &username
            && e.trim_start_matches('@').eq_ignore_ascii_case(u)
        {
            return true;
        }
        let written_as_phone = e.starts_with('+') || e.chars().any(|c| " -().".contains(c));
        written_as_phone && phone.is_some() && e164(e) == phone
    };
    if filter.deny.iter().any(matches) {
        return false;
    }
    if !filter.allow.is_empty() {
        return filter.allow.iter().any(matches);
    }
    match m.chat_kind {
        crate::messenger::ChatKind::Private => filter.private,
        crate::messenger::ChatKind::Group => filter.groups,
        crate::messenger::ChatKind::Channel => filter.channels,
    }
}

/// A person as the CRM knows them, with the ids their messenger gives.
pub fn person(channel: Channel, who: &Identity) -> Person {
    let mut p = Person { name: who.name.clone(), phone: who.phone.clone(), ..Person::default() };
    match channel {
        Channel::Telegram => {
            p.telegram_user_id = who.id.parse().ok();
            p.telegram_username = who.username.clone();
        }
        Channel::Whatsapp => p.whatsapp_id = Some(who.id.clone()),
    }
    p
}

/// Writes the phone numbers a message carries (its sender's, and the customer's of
/// an owner's message) in E.164, reading those without a country code as
/// `region` writes them; one that is no phone number stays as it came.
pub fn phones_in_e164(m: &mut Message, region: &str) {
    for who in std::iter::once(&mut m.sender).chain(m.customer.as_mut()) {
        if let Some(e164) = who.phone.as_deref().and_then(|p| crmessenger_crm::phone::normalize_in(p, region)) {
            who.phone = Some(e164);
        }
    }
}

/// The customer a chat's conversation belongs to, from its due messages: the
/// first customer message's author; for a chat the account's owner started, the
/// person the owner wrote to; failing both, the chat itself (named by its title).
pub fn customer<'a>(channel: Channel, chat: &str, messages: impl IntoIterator<Item = &'a Message>) -> Option<Person> {
    let messages: Vec<&Message> = messages.into_iter().collect();
    if let Some(m) = messages.iter().find(|m| !m.outgoing) {
        return Some(person(channel, &m.sender));
    }
    let first = messages.first()?;
    let identity = first.customer.clone().unwrap_or_else(|| Identity { id: chat.to_string(), ..Identity::default() });
    let mut p = person(channel, &identity);
    if p.name.is_empty() {
        p.name = first.chat_title.clone().unwrap_or_else(|| chat.to_string());
    }
    Some(p)
}

/// Where a new lead goes and what it says.
pub struct LeadPlace {
    /// Pipeline of new leads.
    pub pipeline_id: Option<i64>,
    /// Stage of new leads.
    pub status_id: Option<i64>,
    /// Who the lead is assigned to.
    pub responsible_user_id: Option<i64>,
}

/// The lead for `person`'s first message: named by the policy's template, tagged
/// with the channel and the policy's tags.
pub fn lead_request(leads: &LeadSettings, channel: Channel, person: &Person, place: LeadPlace) -> LeadRequest {
    LeadRequest {
        name: lead_name(&leads.name_template, person, channel.label()),
        pipeline_id: place.pipeline_id,
        status_id: place.status_id,
        responsible_user_id: place.responsible_user_id,
        tags: std::iter::once(channel.label().to_string()).chain(leads.tags.iter().cloned()).collect(),
        reuse_open: leads.reuse_open_lead,
        not_reused: Vec::new(),
        source: None,
    }
}

/// A group chat as its lead shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its title (the chat id when the messenger gave none).
    pub title: String,
    /// How many members it has, when the messenger said.
    pub members: Option<u32>,
}

/// The group a chat is, from its due messages; `None` for a private chat or a
/// channel.
pub fn group<'a>(chat: &str, messages: impl IntoIterator<Item = &'a Message>) -> Option<Group> {
    let m = messages.into_iter().find(|m| m.chat_kind == crate::messenger::ChatKind::Group)?;
    Some(Group { title: m.chat_title.clone().unwrap_or_else(|| chat.to_string()), members: m.chat_members })
}

/// The lead of a group chat: the policy's template filled with the group's title,
/// its member count after it. Never a member's open lead: the group's
/// conversation is not any one member's.
pub fn group_lead_request(
    t: &Texts,
    leads: &LeadSettings,
    channel: Channel,
    group: &Group,
    place: LeadPlace,
) -> LeadRequest {
    let mut request = lead_request(leads, channel, &Person { name: group.title.clone(), ..Person::default() }, place);
    if let Some(n) = group.members {
        request.name = format!("{} · {} {n}", request.name, t.group_of);
    }
    request.reuse_open = false;
    request
}

/// The senders of a group's messages whose contacts are not on its lead yet
/// (`known`), each once, in the order they first wrote. The account's own
/// messages bring none.
pub fn new_members<'a>(
    messages: impl IntoIterator<Item = &'a Message>,
    known: &HashMap<String, i64>,
) -> Vec<&'a Identity> {
    let mut out: Vec<&Identity> = Vec::new();
    for m in messages.into_iter().filter(|m| !m.outgoing && !m.sender.id.is_empty()) {
        if !known.contains_key(&m.sender.id) && !out.iter().any(|o| o.id == m.sender.id) {
            out.push(&m.sender);
        }
    }
    out
}

/// The name of a new lead: the policy's `leads.nameTemplate` with `{name}`,
/// `{channel}`, `{phone}` and `{username}` filled in (a value the messenger did not
/// give becomes empty; the operator refuses any other placeholder).
pub fn lead_name(template: &str, person: &Person, channel: &str) -> String {
    template
        .replace("{name}", &person.name)
        .replace("{channel}", channel)
        .replace("{phone}", person.phone.as_deref().unwrap_or_default())
        .replace("{username}", person.telegram_username.as_deref().unwrap_or_default())
        .trim()
        .to_string()
}

/// The lead note for one event, ending in the marker `[ref <account>:<chat>:<key>]`
/// that finds it again after an interrupted write (`account` is the account's
/// short id); `file` says where the message's file went (the lead's files, or why
/// it is not there).
pub fn note(
    t: &Texts,
    channel: Channel,
    account: &str,
    chat: &str,
    key: &str,
    event: &Event,
    file: Option<&str>,
) -> NoteRequest {
    let marker = format!("[ref {account}:{chat}:{key}]");
    let label = channel.label();
    let body = match event {
        Event::Message(m) => {
            let who = match (&m.sender.username, m.outgoing) {
                (_, true) if m.sender.name.is_empty() => t.account_owner.to_string(),
                (_, true) => format!("{}, {}", t.account_owner, m.sender.name),
                (Some(u), false) => format!("{} (@{u})", m.sender.name),
                (None, false) => m.sender.name.clone(),
            };
            let place = m.chat_title.as_ref().map(|title| format!(" {} {title}", t.in_chat)).unwrap_or_default();
            let edited = if m.edited { format!(" {}", t.edited) } else { String::new() };
            let arrow = if m.outgoing { "→ " } else { "" };
            let file = file.map(|f| format!("\n({f})")).unwrap_or_default();
            format!("{label} · {arrow}{who}{place}{edited}:\n{}{file}", m.summary(t))
        }
        Event::Deleted { message_id, .. } => format!("{label} · {} {message_id}", t.customer_deleted_message),
        Event::Status { message_id, status, .. } => format!("{label} · {} {message_id}: {status}", t.message),
        Event::ReadUpTo { message_id, .. } => format!("{label} · {} {message_id}", t.read_up_to),
    };
    NoteRequest { text: format!("{body}\n{marker}"), marker }
}

/// When the customer started waiting for an answer, once their messages are
/// written at `written_ms`: unchanged while already waiting; otherwise from the
/// first live message (imported history leaves no one waiting), never later than
/// the write.
pub fn unanswered_since(current: Option<i64>, first_live_message_ms: Option<i64>, written_ms: i64) -> Option<i64> {
    current.or(first_live_message_ms.map(|first| first.min(written_ms)))
}

/// A message as the answer bookkeeping sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// When it was sent, Unix ms.
    pub sent_at_ms: i64,
    /// Written on the account's side (the owner answered from their own app).
    pub outgoing: bool,
    /// Imported history.
    pub history: bool,
}

/// Whether a customer waits for an answer after a chat's messages, in order, are
/// written at `written_ms`: an account-side message answers (ending the wait);
/// a live customer message after it starts a new one; imported history starts
/// none. Returns the new wait and whether an answer came (an open escalation
/// task is then done).
pub fn after_turns(current: Option<i64>, turns: &[Turn], written_ms: i64) -> (Option<i64>, bool) {
    let (mut waiting, mut answered) = (current, false);
    for t in turns {
        if t.outgoing {
            (waiting, answered) = (None, true);
        } else if !t.history {
            waiting = unanswered_since(waiting, Some(t.sent_at_ms), written_ms);
        }
    }
    (waiting, answered)
}

/// The longest text one message carries: Telegram's 4,096 (counted in UTF-16
/// units, as Telegram counts) and WhatsApp's 4,096 characters.
pub const MESSAGE_LIMIT: usize = 4096;

/// A reply cut into messages of at most `limit` UTF-16 units, in order: at the
/// last paragraph break, line break or space that fits, else at a character that
/// does not start a combining sequence (a mark, a joiner, a skin tone or a
/// variation selector stays with what it modifies). Nothing is added or lost:
/// the parts put back together are the text.
pub fn split_text(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.encode_utf16().count() > limit {
        // The longest prefix within the limit, as a byte offset.
        let mut fit = 0;
        let mut units = 0;
        for (i, c) in rest.char_indices() {
            units += c.len_utf16();
            if units > limit {
                break;
            }
            fit = i + c.len_utf8();
        }
        let head = &rest[..fit];
        let at = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| head.rfind(sep).map(|i| i + sep.len()).filter(|&i| i > fit / 2))
            .unwrap_or_else(|| {
                let mut at = fit;
                while at > 0 && rest[at..].chars().next().is_some_and(continues) {
                    at = rest[..at].char_indices().next_back().map_or(0, |(i, _)| i);
                }
                if at == 0 { fit } else { at }
            });
        parts.push(rest[..at].to_string());
        rest = &rest[at..];
    }
    parts.push(rest.to_string());
    parts
}

/// Whether `c` belongs to the character before it (combining marks, joiners,
/// variation selectors, emoji skin tones).
fn continues(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05BD | 0x0610..=0x061A | 0x064B..=0x065F | 0x0670
        | 0x06D6..=0x06DC | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x200C | 0x200D | 0x20D0..=0x20FF
        | 0xFE00..=0xFE0F | 0xFE20..=0xFE2F | 0x1F3FB..=0x1F3FF | 0xE0100..=0xE01EF)
}

/// The escalation task on a lead left unanswered: due `deadline` from `now_ms`.
pub fn escalation_task(lead_id: i64, text: &str, now_ms: i64, deadline: Duration) -> TaskRequest {
    TaskRequest {
        lead_id,
        text: text.to_string(),
        complete_till: (now_ms + deadline.as_millis() as i64) / 1000,
        responsible_user_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messenger::{ChatKind, Content};

    fn row(seq: i64, chat: &str) -> InboxRow {
        InboxRow {
            seq,
            chat_id: chat.into(),
            event_key: format!("m{seq}"),
            payload: String::new(),
            attempts: 0,
            attempt_started_ms: None,
            next_attempt_ms: 0,
            received_ms: 0,
            history: false,
        }
    }

    #[test]
    fn a_pass_takes_every_live_chat_and_a_few_history_chats() {
        let old = |seq, chat: &str| InboxRow { history: true, ..row(seq, chat) };
        let grouped =
            by_chat(vec![row(9, "live"), old(1, "h1"), old(2, "h2"), old(3, "h3"), old(4, "mixed"), row(10, "mixed")]);
        let kept: Vec<String> = with_history_capped(grouped, 2).into_iter().map(|(c, _)| c).collect();
        assert_eq!(kept, ["live", "mixed"], "live chats only, a chat's own history with it");
        let quiet = by_chat(vec![old(1, "h1"), old(2, "h2"), old(3, "h3")]);
        let kept: Vec<String> = with_history_capped(quiet, 2).into_iter().map(|(c, _)| c).collect();
        assert_eq!(kept, ["h1", "h2"], "without live messages, a few history chats");
    }

    #[test]
    fn rows_are_grouped_by_chat_in_arrival_order() {
        let rows = vec![row(1, "b"), row(2, "a"), row(3, "b"), row(4, "c"), row(5, "a")];
        let grouped: Vec<(String, Vec<i64>)> =
            by_chat(rows).into_iter().map(|(c, rs)| (c, rs.iter().map(|r| r.seq).collect())).collect();
        assert_eq!(
            grouped,
            vec![("b".into(), vec![1, 3]), ("a".into(), vec![2, 5]), ("c".into(), vec![4])],
            "chats by first arrival, each chat's rows in order"
        );
    }

    #[test]
    fn chats_share_requests_up_to_the_limit_and_are_never_split() {
        assert_eq!(shared_requests(&[100, 100, 100], 250), vec![0..2, 2..3]);
        assert_eq!(shared_requests(&[250, 1], 250), vec![0..1, 1..2]);
        // A chat over the limit goes alone; the ones around it are not dragged in.
        assert_eq!(shared_requests(&[10, 600, 10], 250), vec![0..1, 1..2, 2..3]);
        assert_eq!(shared_requests(&[1; 5], 250), vec![0..5]);
        assert!(shared_requests(&[], 250).is_empty());
    }

    #[test]
    fn a_failure_dead_letters_splits_or_backs_off_by_its_class() {
        assert_eq!(after_failure(ErrorClass::Permanent, 1, 1, None), AfterFailure::DeadLetter);
        assert_eq!(after_failure(ErrorClass::Permanent, 7, 1, None), AfterFailure::OneByOne);
        let AfterFailure::Retry(first) = after_failure(ErrorClass::Retryable, 3, 1, None) else { panic!() };
        assert!(first <= RETRY_BASE * 6 / 5, "first retry is short: {first:?}");
        let AfterFailure::Retry(late) = after_failure(ErrorClass::Fatal, 3, 40, None) else { panic!() };
        // Capped, then jittered by ±20%.
        assert!(late <= RETRY_CAP * 6 / 5 && late >= RETRY_CAP * 4 / 5, "capped: {late:?}");
        // The CRM's Retry-After is honoured when longer than our own wait.
        let ra = Duration::from_secs(90);
        assert_eq!(after_failure(ErrorClass::Retryable, 1, 1, Some(ra)), AfterFailure::Retry(ra));
    }

    #[test]
    fn a_flood_wait_is_waited_out_exactly() {
        let d = Duration::from_secs(37);
        assert_eq!(send_retry_wait(&MessengerError::FloodWait(d), 3), d);
        let other = send_retry_wait(&MessengerError::Unavailable("down".into()), 0);
        assert!(other <= RETRY_BASE * 6 / 5, "{other:?}");
    }

    #[test]
    fn interrupted_writes_are_searched_from_the_earliest_attempt() {
        let mut a = row(1, "x");
        a.attempt_started_ms = Some(20_000);
        let mut b = row(2, "x");
        b.attempt_started_ms = Some(12_000);
        assert_eq!(in_doubt_since(&[a, b, row(3, "x")], 99_000), 7);
        assert_eq!(in_doubt_since(&[row(4, "x")], 99_000), 94);
    }

    fn message(history: bool) -> Message {
        Message {
            chat_id: "42".into(),
            chat_kind: ChatKind::Private,
            chat_title: None,
            chat_members: None,
            message_id: "7".into(),
            sender: Identity { id: "42".into(), name: "Anna".into(), username: Some("anna_k".into()), phone: None },
            content: Content::Text { text: "hello".into() },
            sent_at_ms: 1_000,
            edited: false,
            history,
            outgoing: false,
            customer: None,
            forwarded_from: None,
            reply_to: None,
        }
    }

    #[test]
    fn a_lead_is_named_tagged_and_placed_by_the_policy() {
        let leads = LeadSettings {
            name_template: "{channel}: {name}".into(),
            tags: vec!["vip".into()],
            reuse_open_lead: true,
            ..LeadSettings::default()
        };
        let person = person(Channel::Telegram, &message(false).sender);
        assert_eq!(person.telegram_user_id, Some(42));
        let place = LeadPlace { pipeline_id: Some(3), status_id: Some(4), responsible_user_id: Some(5) };
        let lead = lead_request(&leads, Channel::Telegram, &person, place);
        assert_eq!(lead.name, "Telegram: Anna");
        assert_eq!(lead.tags, vec!["Telegram".to_string(), "vip".to_string()]);
        assert_eq!((lead.pipeline_id, lead.status_id, lead.responsible_user_id), (Some(3), Some(4), Some(5)));
        assert!(lead.reuse_open);
    }

    fn in_group(sender: (&str, &str), outgoing: bool) -> Message {
        let mut m = message(false);
        m.chat_id = "-100".into();
        m.chat_kind = ChatKind::Group;
        m.chat_title = Some("Market".into());
        m.chat_members = Some(12);
        m.sender = Identity { id: sender.0.into(), name: sender.1.into(), ..Identity::default() };
        m.outgoing = outgoing;
        m
    }

    #[test]
    fn a_group_is_its_own_lead_and_each_sender_joins_it_once() {
        assert_eq!(group("42", &[message(false)]), None, "a private chat is no group");
        let msgs = [in_group(("1", "Anna"), false), in_group(("me", "Owner"), true), in_group(("2", "Boris"), false)];
        let g = group("-100", &msgs).unwrap();
        assert_eq!(g, Group { title: "Market".into(), members: Some(12) });
        let leads =
            LeadSettings { name_template: "{channel}: {name}".into(), reuse_open_lead: true, ..Default::default() };
        let place = LeadPlace { pipeline_id: None, status_id: None, responsible_user_id: None };
        let lead = group_lead_request(&crate::texts::EN, &leads, Channel::Telegram, &g, place);
        assert_eq!(lead.name, "Telegram: Market · group of 12");
        assert!(!lead.reuse_open, "never a member's open lead");
        let mut known = HashMap::new();
        let ids = |v: Vec<&Identity>| v.into_iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        let again = [in_group(("2", "Boris"), false), in_group(("1", "Anna"), false), in_group(("3", "Clara"), false)];
        let all: Vec<Message> = msgs.iter().chain(&again).cloned().collect();
        assert_eq!(ids(new_members(&all, &known)), ["1", "2", "3"], "once each, in order, the owner not");
        known.insert("1".to_string(), 501);
        assert_eq!(ids(new_members(&all, &known)), ["2", "3"]);
    }

    #[test]
    fn the_chat_filter_matches_ids_usernames_and_phones_as_people_write_them() {
        let filter = |allow: &[&str], deny: &[&str]| ChatFilter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            ..ChatFilter::default()
        };
        let mut anna = message(false);
        anna.sender.phone = Some("79991234567".into());
        // By phone, however it is written, in allow and in deny.
        assert!(chat_allowed(&filter(&["+7 999 123-45-67"], &[]), &anna, "RU"));
        assert!(!chat_allowed(&filter(&["+7 (999) 000-00-00"], &[]), &anna, "RU"));
        assert!(!chat_allowed(&filter(&[], &["8 999 123 45 67"]), &anna, "RU"));
        // By chat id and by username (with or without @); deny wins over allow.
        assert!(chat_allowed(&filter(&["42"], &[]), &anna, "RU"));
        assert!(chat_allowed(&filter(&["@Anna_K"], &[]), &anna, "RU"));
        assert!(!chat_allowed(&filter(&["anna_k"], &["42"]), &anna, "RU"));
        // A bare number is a chat id, never a phone.
        assert!(!chat_allowed(&filter(&["79991234567"], &[]), &anna, "RU"));
        // The owner's message in that chat is judged by the customer written to.
        let mut own = owner("hi");
        own.customer = Some(Identity { phone: Some("+79991234567".into()), ..Identity::default() });
        assert!(!chat_allowed(&filter(&[], &["+79991234567"]), &own, "RU"));
        assert!(chat_allowed(&filter(&[], &[]), &own, "RU"));
    }

    #[test]
    fn every_placeholder_the_operator_accepts_is_filled() {
        let person = Person {
            name: "Anna".into(),
            phone: Some("+79991234567".into()),
            telegram_username: Some("anna_k".into()),
            ..Person::default()
        };
        assert_eq!(
            lead_name("{channel}: {name} {phone} @{username}", &person, "Telegram"),
            "Telegram: Anna +79991234567 @anna_k"
        );
        // What the messenger did not give is left out, not printed as a placeholder.
        let bare = Person { name: "Boris".into(), ..Person::default() };
        assert_eq!(lead_name("{name} {phone}", &bare, "WhatsApp"), "Boris");
    }

    #[test]
    fn a_note_names_its_sender_and_ends_in_its_marker() {
        let n = note(
            &crate::texts::EN,
            Channel::Telegram,
            "0badf00d",
            "42",
            "m7",
            &Event::Message(Box::new(message(false))),
            None,
        );
        assert_eq!(n.marker, "[ref 0badf00d:42:m7]");
        assert_eq!(n.text, "Telegram · Anna (@anna_k):\nhello\n[ref 0badf00d:42:m7]");
        let deleted = Event::Deleted { chat_id: "42".into(), message_id: "7".into() };
        assert!(
            note(&crate::texts::EN, Channel::Whatsapp, "a", "42", "d7", &deleted, None)
                .text
                .starts_with("WhatsApp · the customer deleted")
        );
    }

    #[test]
    fn notes_and_group_leads_speak_the_bindings_language() {
        let ru = &crate::texts::RU;
        let mut m = message(false);
        m.edited = true;
        m.chat_title = Some("Рынок".into());
        let n = note(ru, Channel::Telegram, "a", "42", "m7", &Event::Message(Box::new(m)), None);
        assert!(n.text.starts_with("Telegram · Anna (@anna_k) в Рынок (изменено):\nhello"), "{}", n.text);
        let deleted = Event::Deleted { chat_id: "42".into(), message_id: "7".into() };
        assert!(
            note(ru, Channel::Whatsapp, "a", "42", "d7", &deleted, None)
                .text
                .starts_with("WhatsApp · клиент удалил сообщение 7")
        );
        let owner_note = note(ru, Channel::Telegram, "a", "42", "9", &Event::Message(Box::new(owner("Еду"))), None);
        assert!(owner_note.text.contains("→ владелец аккаунта"), "{}", owner_note.text);
        let g = Group { title: "Рынок".into(), members: Some(5) };
        let place = LeadPlace { pipeline_id: None, status_id: None, responsible_user_id: None };
        let lead = group_lead_request(ru, &LeadSettings::default(), Channel::Telegram, &g, place);
        assert!(lead.name.ends_with("Рынок · группа из 5"), "{}", lead.name);
    }

    #[test]
    fn waiting_starts_at_the_first_live_message_and_is_kept() {
        assert_eq!(unanswered_since(None, Some(1_000), 5_000), Some(1_000));
        // A message stamped after its own write (clock skew) counts from the write.
        assert_eq!(unanswered_since(None, Some(9_000), 5_000), Some(5_000));
        assert_eq!(unanswered_since(Some(500), Some(1_000), 5_000), Some(500));
        // History alone leaves no one waiting.
        assert_eq!(unanswered_since(None, None, 5_000), None);
    }

    fn owner(text: &str) -> Message {
        let mut m = message(false);
        m.outgoing = true;
        m.sender = Identity::default();
        m.customer = Some(Identity { id: "42".into(), name: "Anna".into(), ..Identity::default() });
        m.content = Content::Text { text: text.into() };
        m
    }

    #[test]
    fn the_customer_is_the_first_customer_message_or_whom_the_owner_wrote_to() {
        let (o, c) = (owner("hi"), message(false));
        let p = customer(Channel::Telegram, "42", [&o, &c]).unwrap();
        assert_eq!((p.name.as_str(), p.telegram_username.as_deref()), ("Anna", Some("anna_k")));
        // Only the owner wrote so far: the person written to.
        let p = customer(Channel::Telegram, "42", [&o]).unwrap();
        assert_eq!((p.name.as_str(), p.telegram_user_id), ("Anna", Some(42)));
        // Nothing known of them: the chat's title, else its id.
        let mut bare = owner("hi");
        bare.customer = None;
        bare.chat_title = Some("Shop group".into());
        assert_eq!(customer(Channel::Telegram, "-77", [&bare]).unwrap().name, "Shop group");
        bare.chat_title = None;
        assert_eq!(customer(Channel::Whatsapp, "15550001", [&bare]).unwrap().whatsapp_id.as_deref(), Some("15550001"));
        assert!(customer(Channel::Telegram, "42", []).is_none());
    }

    #[test]
    fn an_owner_message_is_noted_as_the_accounts_side() {
        let n = note(
            &crate::texts::EN,
            Channel::Telegram,
            "a",
            "42",
            "9",
            &Event::Message(Box::new(owner("On my way"))),
            None,
        );
        assert_eq!(n.text, "Telegram · → the account owner:\nOn my way\n[ref a:42:9]");
        let mut named = owner("ok");
        named.sender.name = "Ivan".into();
        assert!(
            note(&crate::texts::EN, Channel::Telegram, "a", "42", "9", &Event::Message(Box::new(named)), None)
                .text
                .contains("→ the account owner, Ivan:")
        );
    }

    #[test]
    fn the_owners_answer_ends_the_wait_and_a_later_question_starts_one() {
        let turn = |at, outgoing, history| Turn { sent_at_ms: at, outgoing, history };
        assert_eq!(after_turns(None, &[turn(1_000, false, false)], 5_000), (Some(1_000), false));
        assert_eq!(after_turns(Some(1_000), &[turn(2_000, true, false)], 5_000), (None, true));
        assert_eq!(
            after_turns(None, &[turn(1_000, false, false), turn(2_000, true, false), turn(3_000, false, false)], 5_000),
            (Some(3_000), true)
        );
        // The owner's answer in imported history counts too; history alone starts no wait.
        assert_eq!(after_turns(Some(1_000), &[turn(500, true, true)], 5_000), (None, true));
        assert_eq!(after_turns(None, &[turn(500, false, true)], 5_000), (None, false));
    }

    #[test]
    fn long_replies_are_cut_in_order_without_losing_or_breaking_anything() {
        let words: String = (0..2000).map(|i| format!("word{i} ")).collect();
        let parts = split_text(&words, MESSAGE_LIMIT);
        assert!(parts.len() > 1);
        assert_eq!(parts.concat(), words, "nothing added or lost");
        assert!(parts.iter().all(|p| p.encode_utf16().count() <= MESSAGE_LIMIT));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.ends_with(' ')), "cut at spaces");
        // No space to cut at: emoji with a skin tone and letters with combining
        // marks are never split from what they modify.
        let dense = "e\u{301}👋🏽".repeat(3000);
        let parts = split_text(&dense, 100);
        assert_eq!(parts.concat(), dense);
        for p in &parts {
            assert!(p.encode_utf16().count() <= 100, "{}", p.encode_utf16().count());
            assert!(!p.chars().next().is_some_and(continues), "a part starts with a combining character");
        }
        assert_eq!(split_text("short", MESSAGE_LIMIT), vec!["short".to_string()]);
    }

    #[test]
    fn an_escalation_task_is_due_after_the_deadline() {
        let t = escalation_task(9, "Answer", 10_000, Duration::from_secs(3600));
        assert_eq!((t.lead_id, t.text.as_str(), t.complete_till), (9, "Answer", 3610));
    }
}
