//! Outgoing calls: REST webhooks (unsigned form bodies, retried on amoCRM's
//! schedule on the fake clock) and Chats API hooks (signed, sent once).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use tokio::task::JoinSet;

use crate::model::{HookDelivery, WebhookDelivery};
use crate::state::{PendingDelivery, Shared, State};

/// REST webhook receivers must answer within this.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Chats hook receivers must answer within this.
const CHAT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the background task looks for due retries (real time).
const TICK: Duration = Duration::from_millis(25);
/// A subscription is disabled after more than this many invalid replies…
const DISABLE_AFTER: usize = 100;
/// …within this window (fake clock).
const DISABLE_WINDOW_MS: i64 = 2 * 3600 * 1000;

/// Lowercase hex HMAC-SHA1 of `data` with `secret`.
pub(crate) fn hmac_sha1_hex(secret: &str, data: &[u8]) -> String {
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this branch cannot be taken.
        Err(_) => return String::new(),
    };
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Queues `note_lead` webhooks for a note added to a lead.
pub(crate) fn queue_note_lead(
    shared: &Shared,
    state: &mut State,
    note_id: i64,
    lead_id: i64,
    text: &str,
    created_by: i64,
) {
    let now_ms = shared.clock.now_ms();
    let now_s = now_ms / 1000;
    let stamp =
        jiff::Timestamp::from_second(now_s).map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
    let p = "leads[note][0][note]";
    let pairs: Vec<(String, String)> = vec![
        (format!("{p}[id]"), note_id.to_string()),
        (format!("{p}[text]"), text.to_string()),
        (format!("{p}[note_type]"), "4".into()),
        (format!("{p}[element_id]"), lead_id.to_string()),
        (format!("{p}[element_type]"), "2".into()),
        (format!("{p}[created_by]"), created_by.to_string()),
        (format!("{p}[modified_by]"), created_by.to_string()),
        (format!("{p}[main_user_id]"), created_by.to_string()),
        (format!("{p}[date_create]"), now_s.to_string()),
        (format!("{p}[last_modified]"), now_s.to_string()),
        (format!("{p}[timestamp_x]"), stamp),
        (format!("{p}[account_id]"), shared.config.account_id.to_string()),
        ("account[subdomain]".into(), shared.config.subdomain.clone()),
        ("account[id]".into(), shared.config.account_id.to_string()),
    ];
    let body = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    let subs: Vec<(i64, String)> = state
        .webhooks
        .iter()
        .filter(|w| !w.disabled && w.settings.iter().any(|s| s == "note_lead"))
        .map(|w| (w.id, w.destination.clone()))
        .collect();
    for (subscription_id, destination) in subs {
        state.pending_webhooks.push(PendingDelivery {
            subscription_id,
            destination,
            event: "note_lead".into(),
            body: body.clone(),
            attempt: 1,
            due_ms: now_ms,
        });
    }
}

/// The delay before attempt `attempt + 1` after attempt `attempt` got `status`
/// (0 = no reply), or `None` when amoCRM gives up.
pub(crate) fn retry_delay(attempt: u32, status: u16) -> Option<Duration> {
    let server_side = status == 499 || status >= 500;
    match attempt {
        1 => Some(Duration::from_secs(5 * 60)),
        2 => Some(Duration::from_secs(15 * 60)),
        3 if server_side => Some(Duration::from_secs(15 * 60)),
        4 if server_side => Some(Duration::from_secs(3600)),
        _ => None,
    }
}

/// Delivers due REST webhooks until aborted.
pub(crate) async fn run_webhooks(shared: Arc<Shared>) {
    let mut inflight = JoinSet::new();
    loop {
        tokio::time::sleep(TICK).await;
        while inflight.try_join_next().is_some() {}
        let now = shared.clock.now_ms();
        let due: Vec<PendingDelivery> = {
            let mut state = shared.state();
            let (due, later) = std::mem::take(&mut state.pending_webhooks).into_iter().partition(|p| p.due_ms <= now);
            state.pending_webhooks = later;
            if due.is_empty() && inflight.is_empty() {
                state.webhooks_idle_ms = state.webhooks_idle_ms.max(now);
            }
            due
        };
        for d in due {
            inflight.spawn(deliver(shared.clone(), d));
        }
    }
}

async fn deliver(shared: Arc<Shared>, d: PendingDelivery) {
    let at_ms = shared.clock.now_ms();
    let result = shared
        .http
        .post(&d.destination)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(d.body.clone())
        .timeout(WEBHOOK_TIMEOUT)
        .send()
        .await;
    let (status, error) = match result {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let code = status.unwrap_or(0);
    let success = (100..=299).contains(&code);
    let mut state = shared.state();
    state.webhook_deliveries.push(WebhookDelivery {
        destination: d.destination.clone(),
        event: d.event.clone(),
        attempt: d.attempt,
        at_ms,
        status,
        error,
        success,
        body: d.body.clone(),
    });
    if success {
        return;
    }
    let now = shared.clock.now_ms();
    let invalid = state.webhook_invalid.entry(d.subscription_id).or_default();
    invalid.push(now);
    invalid.retain(|t| now - *t <= DISABLE_WINDOW_MS);
    if invalid.len() > DISABLE_AFTER {
        tracing::warn!(destination = %d.destination, "webhook disabled after too many invalid replies");
        if let Some(w) = state.webhooks.iter_mut().find(|w| w.id == d.subscription_id) {
            w.disabled = true;
        }
        state.pending_webhooks.retain(|p| p.subscription_id != d.subscription_id);
        return;
    }
    let still_active = state.webhooks.iter().any(|w| w.id == d.subscription_id && !w.disabled);
    if let (true, Some(delay)) = (still_active, retry_delay(d.attempt, code)) {
        let due_ms = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        state.pending_webhooks.push(PendingDelivery { attempt: d.attempt + 1, due_ms, ..d });
    }
}

/// Sends one Chats API hook: exactly one attempt, never retried; the result is recorded.
pub(crate) async fn send_chat_hook(
    shared: &Shared,
    url: Option<String>,
    secret: &str,
    body: String,
    message_id: &str,
    conversation_id: &str,
) {
    let signature = hmac_sha1_hex(secret, body.as_bytes());
    let at_ms = shared.clock.now_ms();
    let (status, error) = match &url {
        None => (None, Some("no hook_url configured".to_string())),
        Some(u) => {
            let sent = shared
                .http
                .post(u)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("X-Signature", &signature)
                .body(body.clone())
                .timeout(CHAT_HOOK_TIMEOUT)
                .send()
                .await;
            match sent {
                Ok(r) => (Some(r.status().as_u16()), None),
                Err(e) => (None, Some(e.to_string())),
            }
        }
    };
    shared.state().chat_hook_deliveries.push(HookDelivery {
        url: url.unwrap_or_default(),
        message_id: message_id.to_string(),
        conversation_id: conversation_id.to_string(),
        at_ms,
        body,
        signature,
        status,
        error,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_follows_the_table() {
        assert_eq!(retry_delay(1, 0), Some(Duration::from_secs(300)));
        assert_eq!(retry_delay(2, 404), Some(Duration::from_secs(900)));
        assert_eq!(retry_delay(3, 404), None);
        assert_eq!(retry_delay(3, 0), None);
        assert_eq!(retry_delay(3, 503), Some(Duration::from_secs(900)));
        assert_eq!(retry_delay(4, 499), Some(Duration::from_secs(3600)));
        assert_eq!(retry_delay(5, 500), None);
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 2202 test case 2.
        assert_eq!(hmac_sha1_hex("Jefe", b"what do ya want for nothing?"), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }
}
