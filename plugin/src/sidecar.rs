//! The connector pod's sidecar, reached through our own port-forward: login
//! state and form, dead letters and their replay. It is the only way in — the
//! plugin never needs the database's credentials.

use crate::forward::{self, Forward};
use anyhow::{Context, Result, bail};
use crmessenger_api::MessengerAccount;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

/// The sidecar's port in a connector pod.
pub const SIDECAR_PORT: u16 = 8080;

/// A connection to one account's sidecar.
pub struct Sidecar {
    base: String,
    http: reqwest::Client,
    _forward: Option<Forward>,
}

/// The pod that serves `account`: the one its status names, else the
/// StatefulSet's first pod.
pub fn pod_of(account: &MessengerAccount) -> String {
    account
        .status
        .as_ref()
        .and_then(|s| s.connector.as_ref())
        .and_then(|c| c.pod.clone())
        .unwrap_or_else(|| format!("{}-connector-0", account.name_any()))
}

impl Sidecar {
    /// Opens a port-forward to the sidecar of `namespace/name`.
    pub async fn connect(client: Client, namespace: &str, name: &str) -> Result<Sidecar> {
        let accounts: Api<MessengerAccount> = Api::namespaced(client.clone(), namespace);
        let account = accounts
            .get_opt(name)
            .await?
            .with_context(|| format!("no MessengerAccount {name} in the namespace {namespace}"))?;
        if account.spec.suspend {
            bail!("{namespace}/{name} is suspended: no connector runs (set spec.suspend to false first)");
        }
        let pod = pod_of(&account);
        let fwd = forward::open(client, namespace, &pod, SIDECAR_PORT).await?;
        Ok(Sidecar { base: format!("http://{}", fwd.addr), http: http()?, _forward: Some(fwd) })
    }

    /// A sidecar at `url` (a port-forward of the caller's own, say): no
    /// port-forward is opened, and the cluster is not asked.
    pub fn at(url: &str) -> Result<Sidecar> {
        Ok(Sidecar { base: url.trim_end_matches('/').to_string(), http: http()?, _forward: None })
    }

    /// The local address people can open in a browser while this runs.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answer(resp: reqwest::Response) -> Result<Value> {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("the sidecar answered {status}: {}", body.trim());
        }
        serde_json::from_str(&body).with_context(|| format!("the sidecar's answer is not JSON: {body}"))
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = self.http.get(self.url(path)).send().await.with_context(|| format!("GET {path}"))?;
        Self::answer(resp).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self.http.post(self.url(path)).json(body).send().await.with_context(|| format!("POST {path}"))?;
        Self::answer(resp).await
    }

    /// Sends the login form (a code or a password).
    pub async fn post_login(&self, field: &str, value: &str) -> Result<()> {
        let resp = self.http.post(self.url("/login")).form(&[(field, value)]).send().await.context("POST /login")?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            return Ok(());
        }
        bail!("the sidecar refused the {field}: {status} {}", resp.text().await.unwrap_or_default().trim())
    }
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(20))
        .build()?)
}
