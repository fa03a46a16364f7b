//! The main job: CRMessenger end to end on this machine, the way a user runs it.
//!
//! It starts a local Kubernetes cluster (a real kube-apiserver and a real node,
//! built from Go modules) and PostgreSQL, starts the **sandboxes** — stand-ins for
//! the services this machine cannot reach: amoCRM, the WhatsApp Graph API and a
//! scripted Telegram — installs the Helm chart with the project's image, applies
//! `examples/quickstart/`, waits for the accounts to be Ready, and plays a
//! conversation through the real adapters: a Telegram customer and a WhatsApp
//! customer write, contacts, leads and notes appear in the amoCRM sandbox, a
//! manager answers, the customers receive the answers and WhatsApp's statuses come
//! back. The operator, the gateway and the connectors run as pods on the node (see
//! the library, `demo/src/lib.rs`).
//!
//! `--once` exits after the conversation: 0 when everything arrived, 1 otherwise,
//! with a `demo-summary:` JSON line of what the sandboxes recorded.

use anyhow::Result;
use clap::Parser;
use crmessenger_demo::{Demo, say};
use std::path::PathBuf;
use std::process::ExitCode;

/// The product end to end on this machine, against sandboxes.
#[derive(Parser)]
struct Args {
    /// Play the conversation once and exit: 0 when everything arrived, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// After the conversation, save a screenshot of the amoCRM sandbox's page here
    /// (headless Chromium, Debian's `chromium`).
    #[arg(long)]
    screenshot: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    sqlx::any::install_default_drivers();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<bool> {
    say("== CRMessenger, end to end on this machine");
    say("   (sandboxes stand in for amoCRM, the WhatsApp Graph API and Telegram; nothing leaves this machine)");
    let mut demo = Demo::start().await?;
    let played = async {
        demo.install_chart()?;
        demo.wait_operator_and_gateway().await?;
        demo.apply_quickstart()?;
        demo.wait_connectors().await?;
        demo.sign_in_and_wait_ready().await?;
        demo.conversation().await
    }
    .await;
    demo.print_state();
    if let Some(path) = &args.screenshot {
        // The sandbox's certificate is of its own CA, which the browser does not know.
        let url = format!("{}/sandbox", demo.amo.base_url());
        let _ = std::fs::remove_file(path);
        let out = crmessenger_testkit::browser::run(
            &url,
            &[format!("--screenshot={}", path.display()), "--ignore-certificate-errors".into()],
        )?;
        if !path.exists() {
            anyhow::bail!("chromium made no screenshot of {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        say(&format!("-- screenshot of the amoCRM sandbox: {}", path.display()));
    }
    let ok = match &played {
        Ok(s) => {
            say(&format!("demo-summary: {s}"));
            true
        }
        Err(e) => {
            say(&format!("!! the conversation did not complete: {e:#}"));
            say(&format!("   logs: {}", demo.cp.dir().join("logs").display()));
            false
        }
    };
    if args.once {
        return Ok(ok);
    }
    say("-- running; Ctrl-C stops everything and removes its files");
    tokio::signal::ctrl_c().await?;
    Ok(ok)
}
