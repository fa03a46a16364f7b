//! `crmessenger-operator`: the operator binary.

use clap::{Parser, Subcommand};
use crmessenger_operator::run::{RunOptions, run};
use crmessenger_operator::settings::{Database, Settings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "crmessenger-operator", version, about = "The CRMessenger Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (in a cluster, or out of it with a kubeconfig).
    Run(Box<RunArgs>),
    /// Write the CustomResourceDefinitions generated from the API types.
    Crds {
        /// Directory to write into (default: the repository's `crds/` under `cargo
        /// run`, else `./crds`); the chart's CRD template goes to `DIR/../charts/`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the YAML to stdout instead of writing files.
        #[arg(long)]
        stdout: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Connector image for accounts that do not override it (required; the chart
    /// passes its own image).
    #[arg(long, env = "CRMESSENGER_CONNECTOR_IMAGE")]
    connector_image: Option<String>,
    /// Pull policy of the connector image.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: String,
    /// A Secret for pulling the connector image, set on every connector pod and
    /// ServiceAccount (it must exist in each account's namespace). Repeatable.
    #[arg(long = "image-pull-secret")]
    image_pull_secrets: Vec<String>,
    /// Environment added to every connector container: a JSON list of Kubernetes
    /// EnvVar objects, e.g. `[{"name":"OTEL_EXPORTER_OTLP_ENDPOINT","value":"http://otel:4318"}]`.
    #[arg(long, env = "CRMESSENGER_CONNECTOR_EXTRA_ENV", default_value = "[]")]
    connector_extra_env: String,
    /// Where /livez, /readyz and /metrics are served.
    #[arg(long, env = "CRMESSENGER_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Elect a leader with a Lease, so only one replica reconciles.
    #[arg(long, env = "CRMESSENGER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "crmessenger-operator")]
    lease_name: String,
    /// This process's identity in the election (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds without a connector heartbeat before it counts as unavailable.
    #[arg(long, default_value_t = 45)]
    heartbeat_timeout: u64,
    /// Seconds deletion waits for the connector to log out and purge.
    #[arg(long, default_value_t = 120)]
    cleanup_timeout: u64,
    /// Reconciles at once per controller.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Log as JSON lines.
    #[arg(long, env = "CRMESSENGER_LOG_JSON")]
    log_json: bool,
    /// Secret (in the operator's namespace) with the connectors' PostgreSQL URL.
    /// Without one, accounts report ConfigValid=False (DatabaseNotConfigured) and
    /// get no connector.
    #[arg(long)]
    database_secret: Option<String>,
    /// Key of the database Secret.
    #[arg(long, default_value = "dsn")]
    database_secret_key: String,
    /// Secret (in the operator's namespace) with the key that encrypts messenger sessions.
    #[arg(long)]
    session_key_secret: Option<String>,
    /// Key of the session key Secret.
    #[arg(long, default_value = "key")]
    session_key_secret_key: String,
    /// Create the session key Secret with 32 random bytes if it does not exist (it
    /// is never changed afterwards).
    #[arg(long)]
    generate_session_key: bool,
    /// Name of the bundled evaluation PostgreSQL's Service in the operator's
    /// namespace: the operator creates the Secret of that name (keys password and
    /// dsn) if it does not exist, and never changes it.
    #[arg(long)]
    bundled_postgres: Option<String>,
    /// The gateway's public URL (connectors subscribe webhooks to it).
    #[arg(long)]
    gateway_url: Option<String>,
    /// The installation's amoCRM Chats API channel id.
    #[arg(long)]
    chats_channel_id: Option<String>,
    /// The Chats API channel bot's amojo id (issued with the channel).
    #[arg(long)]
    chats_bot_id: Option<String>,
    /// Secret (in the operator's namespace) with the Chats API channel secret.
    #[arg(long)]
    chats_secret_secret: Option<String>,
    /// Key of the Chats API channel secret.
    #[arg(long, default_value = "secret")]
    chats_secret_key: String,
    /// The Chats API host.
    #[arg(long, default_value = "https://amojo.amocrm.ru")]
    chats_base_url: String,
    /// Sandbox: Telegram accounts talk to the scripted messenger at this URL
    /// instead of Telegram (evaluation and tests).
    #[arg(long)]
    sandbox_scripted_messenger: Option<String>,
    /// Sandbox: WhatsApp Cloud API accounts talk to the Graph API at this base URL
    /// instead of Meta's (evaluation and tests).
    #[arg(long)]
    sandbox_whatsapp_graph_url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(cli())
}

/// glibc gives each thread its own malloc arena and keeps freed memory in it; a
/// watch-heavy process then holds several times the memory it uses. Two arenas are
/// plenty for two worker threads.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn cli() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { dir, stdout } => {
            if stdout {
                for (_, yaml) in crmessenger_operator::crdgen::render()? {
                    println!("---\n{yaml}");
                }
            } else {
                let dir = dir.unwrap_or_else(|| match std::env::var_os("CARGO_MANIFEST_DIR") {
                    Some(crate_dir) => PathBuf::from(crate_dir).join("../crds"),
                    None => PathBuf::from("crds"),
                });
                for path in crmessenger_operator::crdgen::write_all(&dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        Command::Run(args) => {
            let args = *args;
            let _telemetry =
                crmessenger_operator::telemetry::init("crmessenger-operator", args.log_json, "info,kube=warn")?;
            let metrics = std::sync::Arc::new(crmessenger_operator::metrics::Metrics::default());
            let client = crmessenger_operator::run::counted_client(metrics.clone()).await?;
            let extra_env = serde_json::from_str(&args.connector_extra_env).map_err(|e| {
                anyhow::anyhow!("--connector-extra-env is not a JSON list of Kubernetes EnvVar objects: {e}")
            })?;
            let database = match args.database_secret.filter(|n| !n.is_empty()) {
                Some(name) => Database::Secret { name, key: args.database_secret_key },
                None => Database::NotConfigured,
            };
            let settings = Settings {
                connector_image: args.connector_image.unwrap_or_default(),
                image_pull_policy: args.image_pull_policy,
                image_pull_secrets: args.image_pull_secrets.into_iter().filter(|s| !s.is_empty()).collect(),
                extra_env,
                heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout),
                cleanup_timeout: Duration::from_secs(args.cleanup_timeout),
                connector_runtime: crmessenger_operator::settings::ConnectorRuntime {
                    namespace: args.lease_namespace.clone(),
                    database,
                    bundled_postgres: args.bundled_postgres.filter(|n| !n.is_empty()),
                    session_key: args.session_key_secret.map(|n| (n, args.session_key_secret_key)),
                    generate_session_key: args.generate_session_key,
                    gateway_url: args.gateway_url.filter(|u| !u.is_empty()),
                    chats_channel_id: args.chats_channel_id.filter(|c| !c.is_empty()),
                    chats_bot_id: args.chats_bot_id.filter(|c| !c.is_empty()),
                    chats_secret: args
                        .chats_secret_secret
                        .filter(|n| !n.is_empty())
                        .map(|n| (n, args.chats_secret_key)),
                    chats_base_url: Some(args.chats_base_url),
                    sandbox: crmessenger_operator::settings::Sandbox {
                        scripted_messenger: args.sandbox_scripted_messenger.filter(|u| !u.is_empty()),
                        whatsapp_graph_url: args.sandbox_whatsapp_graph_url.filter(|u| !u.is_empty()),
                    },
                },
                ..Settings::default()
            };
            let identity = args.identity.unwrap_or_else(|| format!("crmessenger-operator-{}", std::process::id()));
            let options = RunOptions {
                admin_addr: args.admin_addr,
                leader_election: args.leader_election.then_some((args.lease_namespace, args.lease_name, identity)),
                concurrency: args.concurrency,
            };
            run(client, settings, options, metrics).await
        }
    }
}
