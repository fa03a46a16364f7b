//! `kubectl crmessenger status`: bindings → accounts → what is wrong and what
//! waits, read from the API server only (no port-forward, no credentials).

use crmessenger_api::common::conditions;
use crmessenger_api::{CrmBinding, MessengerAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::Serialize;
use std::fmt::Write;

/// One account as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `telegram` or `whatsapp`.
    pub provider: String,
    /// `status.phase` (`Pending` until the operator has written one).
    pub phase: String,
    /// The Ready condition's status (`Unknown` when absent).
    pub ready: String,
    /// The Ready condition's reason.
    pub reason: String,
    /// The Ready condition's message.
    pub message: String,
    /// Who it is signed in as (masked phone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Every condition that is not `True`, as `Type=Status Reason: message`.
    pub problems: Vec<String>,
    /// The queues, when the connector has reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<crmessenger_api::account::QueueStatus>,
    /// What to run next, when a person has something to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One binding and its accounts.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BindingView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The Ready condition's status.
    pub ready: String,
    /// The Ready condition's reason.
    pub reason: String,
    /// The Ready condition's message.
    pub message: String,
    /// The CRM account, as the operator found it (`name (id)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_account: Option<String>,
    /// Every condition that is not `True`.
    pub problems: Vec<String>,
    /// Its accounts.
    pub accounts: Vec<AccountView>,
}

/// The whole tree: bindings with their accounts, then accounts no binding selects.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tree {
    /// The bindings.
    pub bindings: Vec<BindingView>,
    /// Accounts no binding selects.
    pub unbound: Vec<AccountView>,
}

fn ready_of(list: &[Condition]) -> (String, String, String) {
    match conditions::find(list, conditions::READY) {
        Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
        None => ("Unknown".into(), String::new(), "no Ready condition yet".into()),
    }
}

fn problems_of(list: &[Condition]) -> Vec<String> {
    list.iter()
        .filter(|c| c.status != "True" && c.type_ != conditions::READY)
        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect()
}

/// The view of one account.
pub fn account_view(a: &MessengerAccount) -> AccountView {
    let status = a.status.clone().unwrap_or_default();
    let (ready, reason, message) = ready_of(&status.conditions);
    let phase = status
        .phase
        .and_then(|p| serde_json::to_value(p).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "Pending".into());
    let provider =
        serde_json::to_value(a.spec.provider).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let login_reason = conditions::find(&status.conditions, conditions::LOGGED_IN).map(|c| c.reason.as_str());
    let ns = a.namespace().unwrap_or_default();
    let waiting_for_person = login_reason.is_some_and(|r| conditions::login::WAITING_FOR_A_PERSON.contains(&r));
    let dead = status.queues.as_ref().map_or(0, |q| q.dead_letters);
    let next = if phase == "Suspended" {
        Some(format!(
            "kubectl patch messengeraccount {} -n {ns} --type=merge -p '{{\"spec\":{{\"suspend\":false}}}}'",
            a.name_any()
        ))
    } else if waiting_for_person {
        Some(format!("kubectl crmessenger login {} -n {ns}", a.name_any()))
    } else if dead > 0 {
        Some(format!("kubectl crmessenger dead-letters {} -n {ns}", a.name_any()))
    } else {
        None
    };
    AccountView {
        name: a.name_any(),
        namespace: ns,
        provider,
        phase,
        ready,
        reason,
        message,
        identity: status.identity.and_then(|i| i.summary),
        problems: problems_of(&status.conditions),
        queues: status.queues,
        next,
    }
}

/// Builds the tree: each account goes under the binding its status names.
pub fn tree(bindings: &[CrmBinding], accounts: &[MessengerAccount]) -> Tree {
    let mut views: Vec<(Option<(String, String)>, AccountView)> = accounts
        .iter()
        .map(|a| {
            let bound = a
                .status
                .as_ref()
                .and_then(|s| s.binding.as_ref())
                .map(|b| (a.namespace().unwrap_or_default(), b.name.clone()));
            (bound, account_view(a))
        })
        .collect();
    let mut out = Vec::new();
    for b in bindings {
        let status = b.status.clone().unwrap_or_default();
        let (ready, reason, message) = ready_of(&status.conditions);
        let key = (b.namespace().unwrap_or_default(), b.name_any());
        let mut mine = Vec::new();
        views.retain(|(bound, v)| {
            if bound.as_ref() == Some(&key) {
                mine.push(v.clone());
                false
            } else {
                true
            }
        });
        out.push(BindingView {
            name: key.1,
            namespace: key.0,
            ready,
            reason,
            message,
            crm_account: status.crm_account.map(|c| {
                let name = c.name.unwrap_or_default();
                match c.id {
                    Some(id) => format!("{name} ({id})"),
                    None => name,
                }
            }),
            problems: problems_of(&status.conditions),
            accounts: mine,
        });
    }
    Tree { bindings: out, unbound: views.into_iter().map(|(_, v)| v).collect() }
}

fn ms_ago(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, now: jiff::Timestamp) -> String {
    let secs = (now.as_second() - t.0.as_second()).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn write_account(out: &mut String, a: &AccountView, last: bool, now: jiff::Timestamp) {
    let (branch, pad) = if last { ("└─", "   ") } else { ("├─", "│  ") };
    let who = a.identity.as_deref().map(|i| format!("  {i}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{branch} MessengerAccount {}/{}  {}  {}  Ready={} {}{who}",
        a.namespace, a.name, a.provider, a.phase, a.ready, a.reason
    );
    if a.ready != "True" && !a.message.is_empty() {
        let _ = writeln!(out, "{pad}   {}", a.message);
    }
    for p in &a.problems {
        let _ = writeln!(out, "{pad}   {p}");
    }
    if let Some(q) = &a.queues {
        let last_in = q.last_inbound_at.as_ref().map(|t| ms_ago(t, now)).unwrap_or_else(|| "never".into());
        let last_out = q.last_outbound_at.as_ref().map(|t| ms_ago(t, now)).unwrap_or_else(|| "never".into());
        let _ = writeln!(
            out,
            "{pad}   queues: {} to the CRM, {} to the messenger, {} dead · last delivered to the CRM {last_in}, last reply sent {last_out}",
            q.inbound_pending, q.outbound_pending, q.dead_letters
        );
        if let Some(r) = &q.oldest_dead_letter_reason {
            let _ = writeln!(out, "{pad}   oldest dead letter: {r}");
        }
    }
    if let Some(n) = &a.next {
        let _ = writeln!(out, "{pad}   → {n}");
    }
}

/// The tree as text, for a terminal.
pub fn render(t: &Tree, now: jiff::Timestamp) -> String {
    let mut out = String::new();
    for b in &t.bindings {
        let crm = b.crm_account.as_deref().map(|c| format!("  amoCRM {c}")).unwrap_or_default();
        let _ = writeln!(out, "CrmBinding {}/{}  Ready={} {}{crm}", b.namespace, b.name, b.ready, b.reason);
        if b.ready != "True" && !b.message.is_empty() {
            let _ = writeln!(out, "│  {}", b.message);
        }
        for p in &b.problems {
            let _ = writeln!(out, "│  {p}");
        }
        if b.accounts.is_empty() {
            let _ = writeln!(out, "└─ (no accounts)");
        }
        for (i, a) in b.accounts.iter().enumerate() {
            write_account(&mut out, a, i + 1 == b.accounts.len(), now);
        }
    }
    if !t.unbound.is_empty() {
        let _ = writeln!(out, "Not bound to a CrmBinding");
        for (i, a) in t.unbound.iter().enumerate() {
            write_account(&mut out, a, i + 1 == t.unbound.len(), now);
        }
    }
    if out.is_empty() {
        out.push_str("No CrmBindings or MessengerAccounts here.\n");
    }
    out
}
