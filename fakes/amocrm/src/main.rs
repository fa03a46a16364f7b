//! `fake-amocrm`: serves the fake amoCRM (REST, OAuth, Chats API and `/_fake/` control
//! API) until Ctrl-C, printing its URL and a ready-to-use access token.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use crmessenger_fake_amocrm::{ChatsChannel, FakeAmo, FakeConfig, StartOptions, TlsIdentity};
use crmessenger_testkit::TestCa;

/// A protocol-faithful fake of amoCRM REST API v4, OAuth and the Chats API.
#[derive(Debug, Parser)]
#[command(name = "fake-amocrm", version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve HTTPS with a certificate from a freshly generated test CA.
    #[arg(long)]
    tls: bool,
    /// Where to write the test CA certificate (PEM) with --tls.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// REST requests admitted per second.
    #[arg(long, default_value_t = 7)]
    rate_limit: u32,
    /// 429s within 60 s after which every REST call gets 403 until reset.
    #[arg(long, default_value_t = 20)]
    abuse_threshold: u32,
    /// Account subdomain.
    #[arg(long, default_value = "example")]
    subdomain: String,
    /// Account ID in the Chats API (default: random uuid).
    #[arg(long)]
    amojo_id: Option<String>,
    /// OAuth client ID.
    #[arg(long, default_value = "fake-client")]
    client_id: String,
    /// OAuth client secret.
    #[arg(long, default_value = "fake-secret")]
    client_secret: String,
    /// OAuth redirect URI.
    #[arg(long, default_value = "https://example.test/oauth")]
    redirect_uri: String,
    /// Chats API channel ID (default: random uuid).
    #[arg(long)]
    chats_channel_id: Option<String>,
    /// Chats API channel secret (default: random).
    #[arg(long)]
    chats_secret: Option<String>,
    /// Outgoing chat hook URL; ":scope_id" is replaced.
    #[arg(long)]
    chats_hook_url: Option<String>,
    /// Enable duplicate control on /api/v4/leads/complex.
    #[arg(long)]
    duplicate_control: bool,
    /// De-duplicate chat messages by msgid.
    #[arg(long)]
    dedupe_chat_msgid: bool,
    /// A chat's customer message makes an incoming lead also for a linked
    /// contact without an open lead.
    #[arg(long)]
    incoming_leads_for_contacts: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let defaults = FakeConfig::default();
    let channel_defaults = ChatsChannel::default();
    let tls = if args.tls {
        let ca = TestCa::new("fake-amocrm test CA")?;
        let host = args.listen.ip().to_string();
        let cert = ca.issue_server("fake-amocrm", &["127.0.0.1", "localhost", host.as_str()])?;
        match &args.ca_out {
            Some(path) => std::fs::write(path, ca.cert_pem())
                .with_context(|| format!("writing the CA certificate to {}", path.display()))?,
            None => println!("CA certificate (no --ca-out given):\n{}", ca.cert_pem()),
        }
        Some(TlsIdentity { cert_pem: cert.cert_pem, key_pem: cert.key_pem })
    } else {
        None
    };
    let config = FakeConfig {
        tls,
        subdomain: args.subdomain,
        amojo_id: args.amojo_id.unwrap_or(defaults.amojo_id.clone()),
        client_id: args.client_id,
        client_secret: args.client_secret,
        redirect_uri: args.redirect_uri,
        rate_limit_per_sec: args.rate_limit,
        abuse_threshold: args.abuse_threshold,
        chats: Some(ChatsChannel {
            channel_id: args.chats_channel_id.unwrap_or(channel_defaults.channel_id),
            secret: args.chats_secret.unwrap_or(channel_defaults.secret),
            hook_url: args.chats_hook_url,
            bot_id: channel_defaults.bot_id,
        }),
        duplicate_control: args.duplicate_control,
        dedupe_chat_msgid: args.dedupe_chat_msgid,
        incoming_leads_for_contacts: args.incoming_leads_for_contacts,
        ..defaults
    };
    let fake = FakeAmo::start_with(config, StartOptions { listen: args.listen, hook_roots_pem: Vec::new() }).await?;
    let tokens = fake.issue_token_pair();
    let cfg = fake.config();
    println!("base_url: {}", fake.base_url());
    println!("access_token: {}", tokens.access_token);
    println!("refresh_token: {}", tokens.refresh_token);
    println!("account_id: {}  amojo_id: {}", cfg.account_id, cfg.amojo_id);
    if let Some(ch) = &cfg.chats {
        println!("chats channel_id: {}  secret: {}", ch.channel_id, ch.secret);
    }
    if let Some(scope) = fake.scope_id() {
        println!("chats scope_id: {scope}");
    }
    println!("control API: {}/_fake/snapshot (Ctrl-C to stop)", fake.base_url());
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    drop(fake);
    Ok(())
}
