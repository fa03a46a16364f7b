//! The connector's side of Kubernetes, with only what its Role allows: read its
//! ConfigMap and the Secrets its config names, renew its Lease (the heartbeat the
//! operator watches), patch its own account's status by server-side apply as
//! `crmessenger-connector`, and watch its account for deletion.

use crate::messenger::LoginState;
use crate::state::AccountState;
use async_trait::async_trait;
use crmessenger_api::MessengerAccount;
use crmessenger_api::common::SecretKeyRef;
use crmessenger_api::config::{CONFIG_KEY, ConnectorConfig};
use crmessenger_crm::CrmError;
use crmessenger_crm::amocrm::TokenSource;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The connector's field manager.
pub const MANAGER: &str = crmessenger_api::common::managers::CONNECTOR;
/// How often the Lease is renewed (the operator's heartbeat timeout is longer).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Status is written on change, at most this often.
pub const STATUS_EVERY: Duration = Duration::from_secs(3);

/// Where the connector is in the cluster (from the pod's environment).
#[derive(Clone)]
pub struct KubeEnv {
    /// API client (the pod's ServiceAccount, or a kubeconfig out of cluster).
    pub client: kube::Client,
    /// Namespace of the account.
    pub namespace: String,
    /// The account's name.
    pub account: String,
    /// The ConfigMap with the rendered config.
    pub config_map: String,
    /// The Lease to renew.
    pub lease: String,
    /// This pod's name (the Lease holder).
    pub pod: String,
}

/// Reads a Secret value, with errors that name the Secret and key but never a value.
pub async fn secret_value(client: &kube::Client, namespace: &str, r: &SecretKeyRef) -> anyhow::Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(|e| anyhow::anyhow!("read Secret {namespace}/{}: {e}", r.name))?
        .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{} does not exist", r.name))?;
    if let Some(value) = crmessenger_api::common::secret_strings(&secret).remove(&r.key) {
        return Ok(value);
    }
    if secret.data.as_ref().is_some_and(|d| d.contains_key(&r.key)) {
        anyhow::bail!("Secret {namespace}/{} key {:?} is not UTF-8", r.name, r.key);
    }
    anyhow::bail!("Secret {namespace}/{} has no key {:?}", r.name, r.key)
}

impl KubeEnv {
    /// The name of the Secret a person can put a login code or password in.
    pub fn login_secret(&self) -> String {
        format!("{}-login", self.account)
    }

    /// The `code` and `password` in the account's login Secret, if it exists.
    pub async fn login_secret_values(&self) -> anyhow::Result<Option<(Option<String>, Option<String>)>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(secret) = api.get_opt(&self.login_secret()).await? else { return Ok(None) };
        let mut data = crmessenger_api::common::secret_strings(&secret);
        let take = |d: &mut std::collections::BTreeMap<String, String>, k: &str| {
            d.remove(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
        };
        Ok(Some((take(&mut data, "code"), take(&mut data, "password"))))
    }

    /// Deletes the login Secret (after its values were used).
    pub async fn delete_login_secret(&self) -> anyhow::Result<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.delete(&self.login_secret(), &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and parses the config from the ConfigMap.
    pub async fn config(&self) -> anyhow::Result<ConnectorConfig> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cm = api
            .get_opt(&self.config_map)
            .await
            .map_err(|e| anyhow::anyhow!("read ConfigMap {}/{}: {e}", self.namespace, self.config_map))?
            .ok_or_else(|| anyhow::anyhow!("ConfigMap {}/{} does not exist", self.namespace, self.config_map))?;
        let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).ok_or_else(|| {
            anyhow::anyhow!("ConfigMap {}/{} has no key {CONFIG_KEY}", self.namespace, self.config_map)
        })?;
        serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "ConfigMap {}/{} key {CONFIG_KEY} is not a connector config: {e}",
                self.namespace,
                self.config_map
            )
        })
    }

    /// Renews the Lease once.
    pub async fn renew(&self) -> anyhow::Result<()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut lease = api.get(&self.lease).await?;
        let now = MicroTime(jiff::Timestamp::now());
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.pod) {
            spec.holder_identity = Some(self.pod.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        api.replace(&self.lease, &PostParams::default(), &lease).await?;
        Ok(())
    }

    /// Applies the connector's part of the account status.
    pub async fn apply_status(&self, status: serde_json::Value) -> anyhow::Result<()> {
        let api: Api<MessengerAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = json!({
            "apiVersion": format!("{}/{}", crmessenger_api::GROUP, crmessenger_api::VERSION),
            "kind": "MessengerAccount",
            "status": status,
        });
        api.patch_status(&self.account, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        Ok(())
    }

    /// The account (to see a deletion request).
    pub async fn account(&self) -> anyhow::Result<Option<MessengerAccount>> {
        let api: Api<MessengerAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.get_opt(&self.account).await?)
    }
}

/// The current access token, read from the operator-owned token Secret and read
/// again when the CRM refuses it or the config says the Secret changed.
pub struct SecretToken {
    client: kube::Client,
    namespace: String,
    secret: SecretKeyRef,
    cached: Mutex<Option<String>>,
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretToken").field("namespace", &self.namespace).field("secret", &self.secret.name).finish()
    }
}

impl SecretToken {
    /// A token source reading `secret` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, secret: SecretKeyRef) -> Self {
        Self { client, namespace: namespace.to_string(), secret, cached: Mutex::new(None) }
    }

    /// Forgets the cached token (the Secret changed).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[async_trait]
impl TokenSource for SecretToken {
    async fn access_token(&self) -> Result<String, CrmError> {
        if let Some(t) = self.cached.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(t);
        }
        let t = secret_value(&self.client, &self.namespace, &self.secret)
            .await
            .map_err(|e| CrmError::Unavailable(e.to_string()))?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        Ok(t)
    }

    async fn renew(&self, rejected: &str) -> Result<(), CrmError> {
        self.invalidate();
        let fresh = self.access_token().await?;
        if fresh == rejected {
            return Err(CrmError::Unauthorized(format!(
                "the token in Secret {}/{} was refused and the operator has not replaced it yet",
                self.namespace, self.secret.name
            )));
        }
        Ok(())
    }
}

/// Masks all but the last four digits of a phone number.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    let keep = digits.len().saturating_sub(4);
    let tail: String = digits[keep..].iter().collect();
    format!("+{}{tail}", "*".repeat(keep))
}

/// Renders the connector's part of the status from the account state, keeping
/// each condition's `lastTransitionTime` while its status does not change.
#[derive(Default)]
pub struct StatusRenderer {
    previous: BTreeMap<String, Condition>,
}

impl StatusRenderer {
    /// The status document for `state`.
    pub fn render(&mut self, state: &AccountState, config_hash: &str, pod: &str, method: &str) -> serde_json::Value {
        use crmessenger_api::common::conditions::login;
        let now = Time(jiff::Timestamp::now());
        let (logged_in, login_reason, login_message) = match &state.login {
            Some(LoginState::LoggedIn { .. }) => {
                (true, login::LOGGED_IN, "the messenger session is active".to_string())
            }
            Some(LoginState::Qr { .. }) => match &state.logout_reason {
                Some(reason) => (
                    false,
                    login::LOGGED_OUT,
                    format!(
                        "the session ended: {reason}; scan the new QR code on the login page (kubectl port-forward to the sidecar)"
                    ),
                ),
                None => (
                    false,
                    login::WAITING_FOR_QR_SCAN,
                    "scan the QR code on the login page (kubectl port-forward to the sidecar)".into(),
                ),
            },
            Some(LoginState::CodeRequired) => {
                (false, login::CODE_REQUIRED, "enter the login code on the login page".into())
            }
            Some(LoginState::PasswordRequired) => {
                (false, login::PASSWORD_REQUIRED, "enter the two-factor password on the login page".into())
            }
            Some(LoginState::LoggedOut { reason }) => {
                (false, login::LOGGED_OUT, format!("the session ended: {reason}"))
            }
            None => (false, login::STARTING, "the connector is starting".into()),
        };
        let waiting = state.waiting.clone();
        let conds = [
            ("LoggedIn", logged_in, login_reason.to_string(), login_message),
            match (&waiting, state.messenger_connected) {
                (Some(w), _) => ("MessengerConnected", false, "WaitingForLock".into(), w.clone()),
                (None, true) => {
                    ("MessengerConnected", true, "Connected".into(), "the messenger connection works".into())
                }
                (None, false) => (
                    "MessengerConnected",
                    false,
                    "Disconnected".into(),
                    state.messenger_error.clone().unwrap_or_else(|| "not connected yet".into()),
                ),
            },
            if state.crm_ok {
                ("CrmSynced", true, "Synced".into(), "the last CRM write succeeded".into())
            } else {
                ("CrmSynced", false, "CrmError".into(), state.crm_error.clone().unwrap_or_default())
            },
            match state.sending_paused_until_ms.filter(|t| *t > now.0.as_millisecond()) {
                _ if state.sending_restricted.is_some() => (
                    "SendingAllowed",
                    false,
                    "AccountRestricted".into(),
                    state.sending_restricted.clone().unwrap_or_default(),
                ),
                Some(until) => (
                    "SendingAllowed",
                    false,
                    "FloodWait".into(),
                    format!(
                        "the messenger asked to wait before sending more; replies are held and sending resumes at {}",
                        jiff::Timestamp::from_millisecond(until).map(|t| t.to_string()).unwrap_or_default()
                    ),
                ),
                None => ("SendingAllowed", true, "Allowed".into(), "replies go out as they come".into()),
            },
            if state.not_applied.is_empty() {
                ("PolicyApplied", true, "Applied".into(), "every setting of the policy applies".into())
            } else {
                ("PolicyApplied", false, "SettingNotApplicable".into(), state.not_applied.join("; "))
            },
        ];
        let mut conditions = Vec::new();
        for (type_, ok, reason, message) in conds {
            let status = if ok { "True" } else { "False" };
            let keep = self.previous.get(type_).filter(|c| c.status == status).map(|c| c.last_transition_time.clone());
            let c = Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason,
                message: message.chars().take(1000).collect(),
                last_transition_time: keep.unwrap_or_else(|| now.clone()),
                observed_generation: None,
            };
            self.previous.insert(type_.to_string(), c.clone());
            conditions.push(c);
        }
        let mut status = json!({
            "conditions": conditions,
            "connector": { "configHash": config_hash, "pod": pod },
        });
        match &state.login {
            Some(LoginState::Qr { code, expires_at_ms }) => {
                status["login"] = json!({
                    "method": method,
                    "qrUrl": code,
                    "expiresAt": jiff::Timestamp::from_millisecond(*expires_at_ms).ok().map(|t| t.to_string()),
                    "instructions": "kubectl port-forward to the account's sidecar Service (port 8080) and open http://localhost:8080/login",
                });
            }
            Some(LoginState::LoggedIn { identity }) => {
                let masked = identity.phone.as_deref().map(mask_phone);
                let name = identity.username.as_ref().map(|u| format!("@{u}")).unwrap_or_else(|| identity.name.clone());
                let summary = [Some(name), masked.clone()].into_iter().flatten().collect::<Vec<_>>().join(" ");
                status["login"] = json!({ "method": method });
                status["identity"] = json!({
                    "userId": identity.id,
                    "username": identity.username,
                    "displayName": identity.name,
                    "maskedPhone": masked,
                    "summary": summary,
                });
            }
            _ => status["login"] = json!({ "method": method }),
        }
        if let Some(q) = &state.queues {
            let at = |ms: Option<i64>| ms.and_then(|t| jiff::Timestamp::from_millisecond(t).ok()).map(Time);
            let queues = crmessenger_api::account::QueueStatus {
                inbound_pending: q.inbound_pending,
                outbound_pending: q.outbound_pending,
                dead_letters: q.dead_letters,
                oldest_dead_letter_reason: q.oldest_dead_letter_reason.clone(),
                last_inbound_at: at(q.last_inbound_ms),
                last_outbound_at: at(q.last_outbound_ms),
            };
            status["queues"] = serde_json::to_value(queues).unwrap_or_default();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_masked() {
        assert_eq!(mask_phone("+15550001122"), "+*******1122");
        assert_eq!(mask_phone("12"), "+12");
    }

    #[test]
    fn transition_times_hold_while_the_status_holds() {
        let mut r = StatusRenderer::default();
        let mut state = crate::state::StateCell::new("ns/a").get();
        state.messenger_connected = true;
        let first = r.render(&state, "h", "p", "qr");
        std::thread::sleep(Duration::from_millis(1100));
        let second = r.render(&state, "h", "p", "qr");
        assert_eq!(first["conditions"], second["conditions"]);
        state.messenger_connected = false;
        let third = r.render(&state, "h", "p", "qr");
        assert_ne!(first["conditions"][1]["lastTransitionTime"], third["conditions"][1]["lastTransitionTime"]);
        assert_eq!(third["conditions"][1]["status"], "False");
    }

    #[test]
    fn a_flood_wait_and_a_lost_session_show_in_the_conditions() {
        let mut r = StatusRenderer::default();
        let mut state = crate::state::StateCell::new("ns/a").get();
        let until = jiff::Timestamp::now().as_millisecond() + 3_600_000;
        state.sending_paused_until_ms = Some(until);
        state.logout_reason = Some("Telegram ended the session (SESSION_REVOKED); sign in again".into());
        state.login = Some(LoginState::Qr { code: "tg://login?token=abc".into(), expires_at_ms: until });
        let status = r.render(&state, "h", "p", "qr");
        let cond = |t: &str| status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
        let sending = cond("SendingAllowed");
        assert_eq!(sending["status"], "False");
        assert_eq!(sending["reason"], "FloodWait");
        let resume = jiff::Timestamp::from_millisecond(until).unwrap().to_string();
        assert!(sending["message"].as_str().unwrap().contains(&resume), "{sending}");
        let login = cond("LoggedIn");
        assert_eq!(login["reason"], "LoggedOut");
        assert!(login["message"].as_str().unwrap().contains("SESSION_REVOKED"), "{login}");
        assert_eq!(status["login"]["qrUrl"], "tg://login?token=abc");
        // An account restricted for spam says so, with what to do, until it is lifted.
        state.sending_restricted = Some("Telegram restricted this account (PEER_FLOOD): ask @SpamBot".into());
        let status = r.render(&state, "h", "p", "qr");
        let sending = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "SendingAllowed").unwrap();
        assert_eq!(
            (sending["status"].as_str(), sending["reason"].as_str()),
            (Some("False"), Some("AccountRestricted"))
        );
        assert!(sending["message"].as_str().unwrap().contains("@SpamBot"), "{sending}");
        state.sending_restricted = None;
        // Once the wait is over, sending is allowed again.
        state.sending_paused_until_ms = Some(jiff::Timestamp::now().as_millisecond() - 1);
        let status = r.render(&state, "h", "p", "qr");
        assert_eq!(status["conditions"][3]["status"], "True");
    }

    #[test]
    fn the_queues_show_in_the_status_without_empty_fields() {
        let mut r = StatusRenderer::default();
        let mut state = crate::state::StateCell::new("shop/tg").get();
        assert!(r.render(&state, "h", "p", "qr").get("queues").is_none(), "nothing before the first count");
        state.queues = Some(crate::state::Queues {
            inbound_pending: 3,
            outbound_pending: 1,
            dead_letters: 2,
            oldest_dead_letter_reason: Some("amoCRM refused the note: 400".into()),
            last_inbound_ms: Some(1_764_000_000_000),
            last_outbound_ms: None,
        });
        let q = r.render(&state, "h", "p", "qr")["queues"].clone();
        assert_eq!(
            q,
            json!({ "inboundPending": 3, "outboundPending": 1, "deadLetters": 2,
                    "oldestDeadLetterReason": "amoCRM refused the note: 400",
                    "lastInboundAt": "2025-11-24T16:00:00Z" })
        );
    }
}
