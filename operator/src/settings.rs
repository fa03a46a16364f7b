//! Installation-wide settings of the operator (from flags and the chart's values).

use std::time::Duration;

/// The connector image used when neither the flag nor the account names one.
///
/// The project's one image (`tools/image.sh`, `Containerfile`) holds both binaries
/// in `/usr/local/bin` and has no entrypoint: every container names its binary by
/// absolute path in `command` ([`CONNECTOR_COMMAND`] for the connector and sidecar
/// containers, `/usr/local/bin/crmessenger-operator` for the operator) and passes
/// the subcommand (`run`, `sidecar`, `gateway`) in `args`. A container with `args`
/// alone would try to execute its first argument.
pub const DEFAULT_CONNECTOR_IMAGE: &str = "ghcr.io/crmessenger/crmessenger:latest";

/// The connector binary's path in the project's image: the `command` of connector pods.
pub const CONNECTOR_COMMAND: &str = "/usr/local/bin/crmessenger-connector";

/// How the operator builds connectors and judges their health.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default connector image (an account may override it).
    pub connector_image: String,
    /// Pull policy of the connector image.
    pub image_pull_policy: String,
    /// A connector whose Lease was not renewed for this long is unavailable.
    pub heartbeat_timeout: Duration,
    /// How long deletion waits for the connector to log out and purge.
    pub cleanup_timeout: Duration,
    /// amoCRM REST requests per second per integration, shared by all connectors.
    pub crm_requests_per_second: f64,
    /// What connectors need beyond their config: the database, the session key, the gateway.
    pub connector_runtime: ConnectorRuntime,
}

/// Where connectors find their database URL and session key — Secrets in the
/// operator's namespace, copied into a Secret beside each account (pods cannot
/// read Secrets of other namespaces) — and the gateway URL they subscribe webhooks to.
#[derive(Debug, Clone, Default)]
pub struct ConnectorRuntime {
    /// The operator's namespace, where the source Secrets are.
    pub namespace: String,
    /// `(Secret, key)` holding the PostgreSQL URL.
    pub database: Option<(String, String)>,
    /// `(Secret, key)` holding the session key.
    pub session_key: Option<(String, String)>,
    /// The gateway's public URL.
    pub gateway_url: Option<String>,
    /// The installation's Chats API channel id.
    pub chats_channel_id: Option<String>,
    /// `(Secret, key)` holding the Chats API channel secret.
    pub chats_secret: Option<(String, String)>,
    /// The Chats API host.
    pub chats_base_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connector_image: DEFAULT_CONNECTOR_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            heartbeat_timeout: Duration::from_secs(45),
            cleanup_timeout: Duration::from_secs(120),
            crm_requests_per_second: crmessenger_crm::budget::Limit::AMOCRM_REST.rate,
            connector_runtime: ConnectorRuntime::default(),
        }
    }
}
