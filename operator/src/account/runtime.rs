//! The connectors' runtime values (database URL, session key, gateway and Chats
//! settings), read from Secrets in the operator's namespace and cached briefly.

use super::build::RuntimeValues;
use crate::controller::Shared;

/// How long the runtime values are reused before the Secrets are read again.
const RUNTIME_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The last values read, and when.
#[derive(Default)]
pub struct RuntimeCache(tokio::sync::Mutex<Option<(std::time::Instant, RuntimeValues)>>);

impl RuntimeCache {
    /// What every connector pod gets beyond its config: the database URL and session
    /// key (from Secrets in the operator's namespace; a missing one is logged and
    /// left out, and for the database the reason is kept for the account's status)
    /// and the gateway URL. Read at most every 30 s; a failed read is not cached.
    pub async fn get(&self, shared: &Shared) -> Result<RuntimeValues, kube::Error> {
        let mut cached = self.0.lock().await;
        if let Some((at, v)) = cached.as_ref()
            && at.elapsed() < RUNTIME_TTL
        {
            return Ok(v.clone());
        }
        let r = &shared.settings.connector_runtime;
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(shared.client.clone(), &r.namespace);
        // The value, or why there is none.
        let read = |source: Option<(String, String)>| {
            let api = api.clone();
            async move {
                let Some((name, key)) = source else { return Ok(Err(String::new())) };
                let missing = match api.get_opt(&name).await? {
                    Some(secret) => match crmessenger_api::common::secret_strings(&secret).remove(&key) {
                        Some(value) => return Ok(Ok(value)),
                        None => format!("Secret {}/{name} has no key {key}", r.namespace),
                    },
                    None => format!("Secret {}/{name} does not exist", r.namespace),
                };
                tracing::warn!("{missing}; connectors will not get it");
                Ok::<_, kube::Error>(Err(missing))
            }
        };
        let database = match &r.database {
            crate::settings::Database::Secret { name, key } => Some((name.clone(), key.clone())),
            _ => None,
        };
        let database = read(database).await?;
        let values = RuntimeValues {
            database_missing: database.as_ref().err().filter(|m| !m.is_empty()).cloned(),
            database_url: database.ok(),
            session_key: read(r.session_key.clone()).await?.ok(),
            gateway_url: r.gateway_url.clone(),
            chats_secret: read(r.chats_secret.clone()).await?.ok(),
            chats_channel_id: r.chats_channel_id.clone(),
            chats_bot_id: r.chats_bot_id.clone(),
            chats_base_url: r.chats_base_url.clone(),
            sandbox: r.sandbox.clone(),
        };
        *cached = Some((std::time::Instant::now(), values.clone()));
        Ok(values)
    }
}
