//! Installation-wide settings of the operator (from flags and the chart's values).

use k8s_openapi::api::core::v1::EnvVar;
use std::time::Duration;

/// Where the image keeps the connector binary; the operator sets it as the command
/// of every container it runs, so the image needs no particular entrypoint.
///
/// The project's one image (`tools/image.sh`, `Containerfile`) holds both binaries
/// in `/usr/local/bin` and has no entrypoint: every container names its binary by
/// absolute path in `command` (this one for the connector and sidecar containers,
/// `/usr/local/bin/crmessenger-operator` for the operator) and passes the
/// subcommand (`run`, `sidecar`, `gateway`) in `args`. A container with `args`
/// alone would try to execute its first argument.
pub const CONNECTOR_COMMAND: &str = "/usr/local/bin/crmessenger-connector";

/// How the operator builds connectors and judges their health.
///
/// `Default` is for running the operator inside another program (tests): no
/// connector image, and connectors that get their database from whoever starts
/// them ([`Database::Unmanaged`]). The binary sets every field from its flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connector image (an account may override it). Required: [`crate::run::run`]
    /// refuses to start without one.
    pub connector_image: String,
    /// Pull policy of the connector image.
    pub image_pull_policy: String,
    /// Secrets (by name, in each account's namespace) for pulling the connector
    /// image; set on every connector pod and ServiceAccount.
    pub image_pull_secrets: Vec<String>,
    /// Environment added to every connector container (say, `OTEL_*`). Part of the
    /// pod template, so a change rolls the connectors.
    pub extra_env: Vec<EnvVar>,
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
    /// Where the PostgreSQL URL comes from.
    pub database: Database,
    /// The bundled evaluation PostgreSQL: the name of its Service, and of the
    /// Secret (keys `password` and `dsn`) the operator creates for it if absent.
    pub bundled_postgres: Option<String>,
    /// `(Secret, key)` holding the session key.
    pub session_key: Option<(String, String)>,
    /// Create the session key Secret with a random key when it does not exist.
    pub generate_session_key: bool,
    /// The gateway's public URL.
    pub gateway_url: Option<String>,
    /// The installation's Chats API channel id.
    pub chats_channel_id: Option<String>,
    /// The Chats API channel bot's amojo id.
    pub chats_bot_id: Option<String>,
    /// `(Secret, key)` holding the Chats API channel secret.
    pub chats_secret: Option<(String, String)>,
    /// The Chats API host.
    pub chats_base_url: Option<String>,
    /// Sandboxes instead of the real messengers, for evaluation and tests.
    pub sandbox: Sandbox,
}

/// Stand-ins for the messenger services, set installation-wide (the chart's
/// `sandbox` values): Telegram accounts talk to a scripted messenger and WhatsApp
/// Cloud API accounts to a Graph API sandbox instead of Telegram and Meta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// The scripted messenger's URL (`CRMESSENGER_SCRIPTED_MESSENGER` of connectors).
    pub scripted_messenger: Option<String>,
    /// The Graph API base (`CRMESSENGER_WHATSAPP_GRAPH_URL` of connectors).
    pub whatsapp_graph_url: Option<String>,
}

/// Where connectors get their PostgreSQL URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Database {
    /// None configured: accounts get `ConfigValid=False` (`DatabaseNotConfigured`)
    /// and no connector, since a connector without a database cannot start.
    NotConfigured,
    /// A Secret in the operator's namespace holds the URL under `key`.
    Secret {
        /// The Secret's name.
        name: String,
        /// The key holding the URL.
        key: String,
    },
    /// Whoever starts the connectors gives them the URL (connectors run outside
    /// the cluster, as in tests); the operator neither checks nor passes one.
    #[default]
    Unmanaged,
}

/// Environment variables the operator sets on connector containers itself; an
/// extra variable may not take one of these names.
pub fn reserved_env_name(name: &str) -> bool {
    name.starts_with("CRMESSENGER_") || name == "POD_NAME" || name == "POD_NAMESPACE"
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connector_image: String::new(),
            image_pull_policy: "IfNotPresent".into(),
            image_pull_secrets: Vec::new(),
            extra_env: Vec::new(),
            heartbeat_timeout: Duration::from_secs(45),
            cleanup_timeout: Duration::from_secs(120),
            crm_requests_per_second: crmessenger_crm::budget::Limit::AMOCRM_REST.rate,
            connector_runtime: ConnectorRuntime::default(),
        }
    }
}
