//! `kubectl-crmessenger`: put it on PATH and run `kubectl crmessenger …`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use crmessenger_api::{CrmBinding, MessengerAccount};
use crmessenger_kubectl::{dead, doctor, login, qr, sidecar::Sidecar, status};
use kube::api::ListParams;
use kube::{Api, Client};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kubectl crmessenger", version, about = "Status, login, dead letters and checks for CRMessenger")]
struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// For login, dead-letters and replay: the account's sidecar at this URL (a
    /// port-forward of your own, e.g. http://127.0.0.1:8080) instead of opening one.
    #[arg(long, global = true)]
    sidecar_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Background {
    Dark,
    Light,
}

#[derive(Subcommand)]
enum Command {
    /// Bindings → accounts → conditions, queues, dead letters, last traffic.
    Status {
        /// Only this account.
        account: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Signs an account in: draws its QR code here (redrawn as it renews), asks
    /// for the login code or two-step password when needed; exits 0 once signed in.
    Login {
        account: String,
        /// The terminal's background, so the code's light parts come out light.
        #[arg(long, value_enum, default_value = "dark")]
        background: Background,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// The account's dead letters, oldest first, with the ids `replay` takes.
    DeadLetters {
        account: String,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Puts dead letters back in their queues: every one, or those named.
    Replay {
        account: String,
        /// A dead letter's id (`inbox/SEQ` or `outbox/SEQ`); repeat for several.
        #[arg(long = "id")]
        ids: Vec<String>,
    },
    /// Checks the CRDs, the operator, the database, the gateway and each
    /// binding's webhook registration, and says what to fix. Exits 1 on a failure.
    Doctor {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The cluster of the kubeconfig, and the namespace to work in.
async fn cluster(namespace: Option<String>) -> Result<(Client, String)> {
    let config = kube::Config::infer().await.context("read the kubeconfig")?;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

/// The account's sidecar (through a port-forward of our own unless `url` names
/// one), and how to name the account.
async fn sidecar(url: Option<&str>, namespace: Option<String>, account: &str) -> Result<(Sidecar, String)> {
    if let Some(url) = url {
        return Ok((Sidecar::at(url)?, account.to_string()));
    }
    let (client, namespace) = cluster(namespace).await?;
    Ok((Sidecar::connect(client, &namespace, account).await?, format!("{namespace}/{account}")))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let url = cli.sidecar_url.as_deref();
    match cli.command {
        Command::Status { account, all_namespaces, output } => {
            let (client, namespace) = cluster(cli.namespace).await?;
            let scope = (!all_namespaces).then_some(namespace.as_str());
            let (accounts, bindings) = lists(&client, scope).await?;
            let mut tree = status::tree(&bindings, &accounts);
            if let Some(name) = &account {
                anyhow::ensure!(
                    accounts.iter().any(|a| a.metadata.name.as_deref() == Some(name)),
                    "no MessengerAccount {name} in the namespace {namespace}"
                );
                for b in &mut tree.bindings {
                    b.accounts.retain(|a| &a.name == name);
                }
                tree.bindings.retain(|b| !b.accounts.is_empty());
                tree.unbound.retain(|a| &a.name == name);
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&tree)?),
                Output::Text => print!("{}", status::render(&tree, jiff::Timestamp::now())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Login { account, background, timeout } => {
            let (sidecar, name) = sidecar(url, cli.namespace, &account).await?;
            let terminal = match background {
                Background::Dark => qr::Terminal::Dark,
                Background::Light => qr::Terminal::Light,
            };
            login::run(&sidecar, &name, terminal, Duration::from_secs(timeout)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters { account, output } => {
            let (sidecar, _) = sidecar(url, cli.namespace, &account).await?;
            let v = sidecar.get("/dead-letters").await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Text => print!("{}", dead::render(&v, jiff::Timestamp::now().as_millisecond())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { account, ids } => {
            if let Some(bad) = ids.iter().find(|id| !crmessenger_api::common::valid_dead_letter_id(id)) {
                anyhow::bail!(
                    "{bad:?} is not a dead letter id: `kubectl crmessenger dead-letters {account}` lists them (inbox/SEQ, outbox/SEQ)"
                );
            }
            let (sidecar, name) = sidecar(url, cli.namespace, &account).await?;
            let body = if ids.is_empty() { serde_json::json!({}) } else { serde_json::json!({ "ids": ids }) };
            let v = sidecar.post_json("/replay", &body).await?;
            println!("{name}: {} dead letter(s) put back in their queues", v["replayed"]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { all_namespaces, output } => {
            let (client, namespace) = cluster(cli.namespace).await?;
            let scope = (!all_namespaces).then_some(namespace.as_str());
            let facts = doctor::gather(&client, scope).await?;
            let list = doctor::checks(&facts);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Text => print!("{}", doctor::render(&list)),
            }
            let failed = list.iter().any(|c| c.verdict == doctor::Verdict::Fail);
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

async fn lists(client: &Client, namespace: Option<&str>) -> Result<(Vec<MessengerAccount>, Vec<CrmBinding>)> {
    let (a, b): (Api<MessengerAccount>, Api<CrmBinding>) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let lp = ListParams::default();
    let accounts = a.list(&lp).await.context("list MessengerAccounts (are the CRDs installed?)")?.items;
    let bindings = b.list(&lp).await.context("list CrmBindings")?.items;
    Ok((accounts, bindings))
}
