//! Secrets the operator generates in its own namespace: the key that seals
//! messenger sessions, and the bundled evaluation database's password.
//!
//! Guarantees: each is created once, only when absent, and never changed afterwards
//! (created immutable, so not even an edit by hand rotates it by accident). The
//! chart renders no Secret and no random value, so `helm template` is reproducible
//! (Argo CD) and an upgrade cannot log every account out. Nothing owns these Secrets:
//! `helm uninstall` and deleting accounts leave them, and a reinstall finds the same
//! key. Several replicas may start at once: a create that loses the race is fine.

use crate::settings::ConnectorRuntime;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;

/// The bundled PostgreSQL's user and database (the chart's StatefulSet uses the same).
pub const POSTGRES_USER: &str = "crmessenger";
/// The bundled PostgreSQL's port.
pub const POSTGRES_PORT: u16 = 5432;
/// Key of the bundled database's Secret holding the password (the StatefulSet reads it).
pub const POSTGRES_PASSWORD_KEY: &str = "password";
/// Key of the bundled database's Secret holding the URL (the gateway and the operator read it).
pub const POSTGRES_DSN_KEY: &str = "dsn";

/// `n` random bytes from the operating system, as hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the operating system gave no random bytes".to_string())?;
    Ok(hex::encode(bytes))
}

fn meta(name: &str, component: &str, description: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "crmessenger".to_string()),
            ("app.kubernetes.io/component".to_string(), component.to_string()),
            (crate::labels::MANAGED_BY.to_string(), crate::labels::MANAGER.to_string()),
        ])),
        annotations: Some(BTreeMap::from([("kubernetes.io/description".to_string(), description.to_string())])),
        ..ObjectMeta::default()
    }
}

/// The session key Secret: `key` holds 32 random bytes as 64 hex digits (what the
/// connector's `SessionKey::parse` reads). `hex_key` comes from [`random_hex`]`(32)`.
pub fn session_key_secret(name: &str, key: &str, hex_key: String) -> Secret {
    Secret {
        metadata: meta(
            name,
            "session-key",
            "Seals every messenger session at rest. Created once by crmessenger-operator and never changed; \
             kept on helm uninstall. Losing it logs every account out.",
        ),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        string_data: Some(BTreeMap::from([(key.to_string(), hex_key)])),
        ..Secret::default()
    }
}

/// The bundled PostgreSQL's Secret `name`: its password, and the URL of the
/// Service of the same name in `namespace`.
pub fn bundled_postgres_secret(name: &str, namespace: &str, password: String) -> Secret {
    let dsn = format!("postgres://{POSTGRES_USER}:{password}@{name}.{namespace}.svc:{POSTGRES_PORT}/{POSTGRES_USER}");
    Secret {
        metadata: meta(
            name,
            "postgres",
            "Password and URL of the bundled evaluation PostgreSQL. Created once by crmessenger-operator and \
             never changed; kept on helm uninstall with the database's volume.",
        ),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        string_data: Some(BTreeMap::from([
            (POSTGRES_PASSWORD_KEY.to_string(), password),
            (POSTGRES_DSN_KEY.to_string(), dsn),
        ])),
        ..Secret::default()
    }
}

/// Creates `secret` unless a Secret of its name exists (whatever it holds: it is
/// never changed). Returns whether it was created now.
pub async fn create_if_absent(api: &Api<Secret>, secret: &Secret) -> Result<bool, kube::Error> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some() {
        return Ok(false);
    }
    match api
        .create(&PostParams { field_manager: Some(crate::labels::MANAGER.into()), ..Default::default() }, secret)
        .await
    {
        Ok(_) => Ok(true),
        // Another replica created it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the Secrets `runtime` asks for that do not exist yet.
pub async fn ensure(client: &kube::Client, runtime: &ConnectorRuntime) -> anyhow::Result<()> {
    let ns = &runtime.namespace;
    let mut wanted = Vec::new();
    if runtime.generate_session_key {
        let Some((name, key)) = &runtime.session_key else {
            anyhow::bail!("--generate-session-key needs --session-key-secret: the name of the Secret to create");
        };
        wanted.push(session_key_secret(name, key, random_hex(32).map_err(anyhow::Error::msg)?));
    }
    if let Some(name) = &runtime.bundled_postgres {
        wanted.push(bundled_postgres_secret(name, ns, random_hex(24).map_err(anyhow::Error::msg)?));
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for secret in &wanted {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        match create_if_absent(&api, secret).await {
            Ok(true) => tracing::info!("created Secret {ns}/{name}; it is never changed and outlives the release"),
            Ok(false) => tracing::debug!("Secret {ns}/{name} exists; left as it is"),
            Err(e) => anyhow::bail!(
                "cannot create Secret {ns}/{name} (the operator's ServiceAccount needs get and create on secrets in {ns}): {e}"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_key_is_32_random_bytes_in_a_form_the_connector_reads() {
        let a = random_hex(32).unwrap();
        let b = random_hex(32).unwrap();
        assert_ne!(a, b);
        let secret = session_key_secret("crmessenger-session-key", "key", a.clone());
        let value = &secret.string_data.as_ref().unwrap()["key"];
        assert_eq!(hex::decode(value).unwrap().len(), 32);
        assert_eq!(secret.immutable, Some(true));
        assert!(secret.metadata.owner_references.is_none(), "nothing may own it: it outlives the release");
    }

    #[test]
    fn the_bundled_database_url_names_its_service_and_password() {
        let secret = bundled_postgres_secret("crmessenger-postgres", "crm", "0a1b".into());
        let data = secret.string_data.unwrap();
        assert_eq!(data[POSTGRES_PASSWORD_KEY], "0a1b");
        assert_eq!(data[POSTGRES_DSN_KEY], "postgres://crmessenger:0a1b@crmessenger-postgres.crm.svc:5432/crmessenger");
    }
}
