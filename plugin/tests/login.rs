//! `kubectl crmessenger login` in a terminal (tmux) against a connector's admin
//! port and sidecar served here, for a Telegram-style login by code and then the
//! two-step password: the plugin asks for each, the password is not echoed, and
//! it exits 0 once the account is signed in.

use crmessenger_connector::admin::{AccountHandle, Admin};
use crmessenger_connector::http::{Limits, serve};
use crmessenger_connector::messenger::Messenger;
use crmessenger_connector::messenger::scripted::Scripted;
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::sidecar::Sidecar;
use crmessenger_connector::state::StateCell;
use crmessenger_connector::store::Store;
use crmessenger_fake_messenger::{Options, ScriptedMessenger};
use crmessenger_testkit::checks::eventually_some;
use crmessenger_testkit::terminal::Terminal;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_asks_for_the_code_then_the_password_without_echo_and_exits_once_signed_in() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    sqlx::any::install_default_drivers();
    let messenger = ScriptedMessenger::start(Options {
        logged_in: false,
        login_code: Some("24680".into()),
        password: Some("correct horse".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("login.db").display()), 1).await.unwrap();
    let state = Arc::new(StateCell::new("shop/tg"));
    state.update(|s| s.holds_lock = true);
    let adapter: Arc<dyn Messenger> = Arc::new(Scripted::new(&messenger.base_url()).unwrap());
    // What the bridge does while an account is not signed in: ask and record.
    tokio::spawn({
        let (state, adapter) = (state.clone(), adapter.clone());
        async move {
            loop {
                if let Ok(login) = adapter.login_state().await {
                    state.update(|s| s.login = Some(login));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    });
    let handle = AccountHandle { key: "shop/tg".into(), state, messenger: adapter };
    let admin = Admin {
        accounts: Arc::new(std::sync::RwLock::new(vec![handle])),
        store,
        metrics: Arc::new(Metrics::default()),
    };
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin_listener.local_addr().unwrap());
    tokio::spawn(serve(admin_listener, admin.router(), Limits::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, Sidecar::new(&admin_url).unwrap().router(), Limits::default()));

    let plugin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubectl-crmessenger"));
    let term =
        Terminal::start(&plugin, &["--sidecar-url", &sidecar_url, "login", "tg", "--timeout", "60"], &[], 100, 40)
            .unwrap();
    let until = |what: &str, needle: &str| {
        let needle = needle.to_string();
        let term = &term;
        let what = what.to_string();
        async move { eventually_some(&what, 30, || term.screen().contains(&needle).then_some(())).await }
    };
    until("the code prompt", "tg: the login code the messenger sent:").await;
    term.type_line("24680");
    until("the password prompt", "tg: the two-step verification password:").await;
    term.type_line("correct horse");
    until("signed in", "tg is signed in as").await;
    eventually_some("exit 0", 10, || (term.exit_code() == Some(0)).then_some(())).await;
    let screen = term.screen();
    assert!(screen.contains("24680"), "the code is echoed as typed:\n{screen}");
    assert!(!screen.contains("correct horse"), "the password is not shown:\n{screen}");
}
