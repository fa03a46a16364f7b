//! `fake-messenger`: the scripted messenger as its own process.

use clap::Parser;
use crmessenger_fake_messenger::{Options, ScriptedMessenger};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A scripted messenger for tests and demos (see the crate docs for its HTTP API).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory of the durable logs; reloaded on start.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Start logged out: the connector must show a QR code until `POST /_script/scan`.
    #[arg(long)]
    logged_out: bool,
    /// QR code lifetime in seconds.
    #[arg(long, default_value_t = 30)]
    qr_ttl_secs: u64,
    /// Log in by this code (instead of a QR code); implies --logged-out.
    #[arg(long)]
    login_code: Option<String>,
    /// Then ask for this two-factor password.
    #[arg(long)]
    password: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let messenger = ScriptedMessenger::start(Options {
        listen: args.listen,
        dir: args.dir,
        logged_in: !args.logged_out && args.login_code.is_none(),
        qr_ttl: Duration::from_secs(args.qr_ttl_secs),
        login_code: args.login_code,
        password: args.password,
    })
    .await?;
    // The first line of output is the URL, for scripts to read.
    println!("{}", messenger.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
