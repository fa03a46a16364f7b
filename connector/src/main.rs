//! `crmessenger-connector`: the connector binary.

use clap::{Parser, Subcommand};
use crmessenger_connector::app;
use crmessenger_connector::kube::KubeEnv;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The CRMessenger connector: bridges one messenger account to a CRM.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "CRMESSENGER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The installation's amoCRM Chats API channel (`run` and `standalone`).
#[derive(clap::Args)]
struct ChatsArgs {
    /// Chats API channel id of this installation.
    #[arg(long, env = "CRMESSENGER_CHATS_CHANNEL_ID")]
    chats_channel_id: Option<String>,
    /// Chats API channel secret.
    #[arg(long, env = "CRMESSENGER_CHATS_SECRET", hide_env_values = true)]
    chats_secret: Option<String>,
    /// The Chats API channel bot's amojo id (issued with the channel).
    #[arg(long, env = "CRMESSENGER_CHATS_BOT_ID")]
    chats_bot_id: Option<String>,
    /// Chats API host (amojo).
    #[arg(long, env = "CRMESSENGER_CHATS_BASE_URL")]
    chats_base_url: Option<String>,
}

/// The installation's Meta app, for WhatsApp webhooks.
#[derive(clap::Args, Clone, Debug)]
struct WhatsAppArgs {
    /// Meta app secret (verifies X-Hub-Signature-256 of WhatsApp webhooks).
    #[arg(long, env = "CRMESSENGER_WHATSAPP_APP_SECRET", hide_env_values = true)]
    whatsapp_app_secret: Option<String>,
    /// The verify token Meta's webhook subscription handshake must present.
    #[arg(long, env = "CRMESSENGER_WHATSAPP_VERIFY_TOKEN", hide_env_values = true)]
    whatsapp_verify_token: Option<String>,
}

impl WhatsAppArgs {
    fn app(self) -> Option<crmessenger_connector::gateway::WhatsAppApp> {
        Some(crmessenger_connector::gateway::WhatsAppApp {
            app_secret: self.whatsapp_app_secret.filter(|s| !s.is_empty())?,
            verify_token: self.whatsapp_verify_token.unwrap_or_default(),
        })
    }
}

impl ChatsArgs {
    /// The channel, when its id, secret and bot id are all given.
    fn settings(self) -> Option<app::ChatsSettings> {
        app::ChatsSettings::from_parts(self.chats_base_url, self.chats_channel_id, self.chats_secret, self.chats_bot_id)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve one account from the config the operator rendered (in a pod).
    Run {
        /// PostgreSQL URL.
        #[arg(long, env = "CRMESSENGER_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Health, and (for the sidecar, on loopback) status and login.
        #[arg(long, env = "CRMESSENGER_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
        admin_addr: SocketAddr,
        /// Metrics (`/metrics`, OpenMetrics).
        #[arg(long, env = "CRMESSENGER_METRICS_ADDR", default_value = "0.0.0.0:9091")]
        metrics_addr: SocketAddr,
        /// The gateway's public URL (webhook subscriptions).
        #[arg(long, env = "CRMESSENGER_GATEWAY_URL")]
        gateway_url: Option<String>,
        /// The key that encrypts messenger sessions (64 hex digits or base64 of 32 bytes).
        #[arg(long, env = "CRMESSENGER_SESSION_KEY", hide_env_values = true)]
        session_key: Option<String>,
        #[command(flatten)]
        chats: ChatsArgs,
        /// Use the scripted messenger at this URL (tests and demos).
        #[arg(long, env = "CRMESSENGER_SCRIPTED_MESSENGER")]
        scripted_messenger: Option<String>,
        /// The account's namespace.
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        /// The account's name.
        #[arg(long, env = "CRMESSENGER_ACCOUNT")]
        account: String,
        /// The ConfigMap holding the rendered config.
        #[arg(long, env = "CRMESSENGER_CONFIG_MAP")]
        config_map: String,
        /// The Lease to renew as the heartbeat.
        #[arg(long, env = "CRMESSENGER_LEASE")]
        lease: String,
        /// This pod's name (the Lease holder).
        #[arg(long, env = "POD_NAME")]
        pod: String,
    },
    /// Serve the login and status pages, reading the connector's admin port.
    Sidecar {
        /// Address to listen on.
        #[arg(long, env = "CRMESSENGER_SIDECAR_ADDR", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The connector's admin URL.
        #[arg(long, env = "CRMESSENGER_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
        admin_url: String,
    },
    /// Receive webhooks for every account and store them for their connectors.
    Gateway {
        /// PostgreSQL URL.
        #[arg(long, env = "CRMESSENGER_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Address to listen on.
        #[arg(long, env = "CRMESSENGER_GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Address of the metrics port (`GET /metrics`).
        #[arg(long, env = "CRMESSENGER_GATEWAY_METRICS_ADDR", default_value = "0.0.0.0:9091")]
        metrics_addr: SocketAddr,
        /// Chats API channel secret (verifies the signature of Chats hooks).
        #[arg(long, env = "CRMESSENGER_CHATS_SECRET", hide_env_values = true)]
        chats_secret: Option<String>,
        #[command(flatten)]
        whatsapp: WhatsAppArgs,
    },
    /// Run every account declared in a directory of manifests, on one host.
    Standalone {
        /// The directory of manifests: MessengerAccount, CrmBinding, SyncPolicy and Secret objects.
        #[arg(short = 'f', long = "filename")]
        dir: std::path::PathBuf,
        /// Namespace for objects that name none.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Where the SQLite database and the generated session key live.
        #[arg(long, env = "CRMESSENGER_DATA_DIR", default_value = "crmessenger-data")]
        data_dir: std::path::PathBuf,
        /// A PostgreSQL URL to use instead of SQLite.
        #[arg(long, env = "CRMESSENGER_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// The session key (64 hex digits or base64); default: DATA_DIR/session.key, generated.
        #[arg(long, env = "CRMESSENGER_SESSION_KEY", hide_env_values = true)]
        session_key: Option<String>,
        /// Health, metrics, status (status and login state to loopback only).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_addr: SocketAddr,
        /// The login pages.
        #[arg(long, default_value = "127.0.0.1:8080")]
        login_addr: SocketAddr,
        /// The webhook gateway.
        #[arg(long, default_value = "127.0.0.1:8081")]
        gateway_addr: SocketAddr,
        /// The gateway's URL as the CRM reaches it (default: http://GATEWAY_ADDR).
        #[arg(long, env = "CRMESSENGER_GATEWAY_URL")]
        gateway_url: Option<String>,
        /// Scripted messenger for demos and tests: URL (every account) or NAMESPACE/NAME=URL; repeatable.
        #[arg(long)]
        scripted_messenger: Vec<String>,
        /// CRM requests per second, shared by the accounts of one CRM (amoCRM allows 7).
        #[arg(long, default_value_t = 7.0)]
        crm_requests_per_second: f64,
        #[command(flatten)]
        chats: ChatsArgs,
        #[command(flatten)]
        whatsapp: WhatsAppArgs,
    },
    /// List an account's dead letters and put them back in their queues.
    Replay {
        /// Database URL.
        #[arg(long, env = "CRMESSENGER_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The account, as NAMESPACE/NAME.
        #[arg(long)]
        account: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry =
        match crmessenger_telemetry::init("crmessenger-connector", cli.log_json, "info,sqlx=warn,kube=warn,hyper=warn")
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot set up logging: {e:#}");
                return ExitCode::from(1);
            }
        };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run {
                database_url,
                admin_addr,
                metrics_addr,
                gateway_url,
                session_key,
                chats,
                scripted_messenger,
                namespace,
                account,
                config_map,
                lease,
                pod,
            } => {
                let client = kube::Client::try_default().await?;
                let env = KubeEnv { client, namespace, account, config_map, lease, pod };
                // Attachments for the CRM are served under the gateway's public URL.
                let chats = chats.settings().map(|c| app::ChatsSettings { media_url: gateway_url.clone(), ..c });
                app::run(app::RunSettings {
                    database_url,
                    admin_addr,
                    metrics_addr,
                    gateway_url,
                    session_key,
                    chats,
                    scripted_messenger,
                    env,
                })
                .await
            }
            Command::Standalone {
                dir,
                namespace,
                data_dir,
                database_url,
                session_key,
                admin_addr,
                login_addr,
                gateway_addr,
                gateway_url,
                scripted_messenger,
                crm_requests_per_second,
                chats,
                whatsapp,
            } => {
                crmessenger_connector::standalone::standalone(crmessenger_connector::standalone::StandaloneSettings {
                    dir,
                    namespace,
                    data_dir,
                    database_url,
                    session_key,
                    admin_addr,
                    login_addr,
                    gateway_addr,
                    gateway_url,
                    scripted_messengers: scripted_messenger,
                    crm_requests_per_second,
                    chats: chats.settings(),
                    whatsapp: whatsapp.app(),
                })
                .await
            }
            Command::Sidecar { listen, admin_url } => app::sidecar(&admin_url, listen).await,
            Command::Gateway { database_url, listen, metrics_addr, chats_secret, whatsapp } => {
                app::gateway(&database_url, listen, metrics_addr, chats_secret, whatsapp.app()).await
            }
            Command::Replay { database_url, account } => app::replay(&database_url, &account).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
