//! The main job: CRMessenger end to end on this machine, the way a user runs it.
//!
//! It starts a local Kubernetes control plane (a real kube-apiserver, built from Go
//! modules) and PostgreSQL, starts the **sandboxes** — stand-ins for the services
//! this machine cannot reach: amoCRM, the WhatsApp Graph API and a scripted
//! Telegram — installs the Helm chart, applies `examples/quickstart/`, waits for the
//! accounts to be Ready, and plays a conversation through the real adapters: a
//! Telegram customer and a WhatsApp customer write, contacts, leads and notes
//! appear in the amoCRM sandbox, a manager answers, the customers receive the
//! answers and WhatsApp's statuses come back.
//!
//! Until the test cluster has a real node, the pods are kwok's (nothing runs in
//! them): the operator, the gateway and each account's connector and sidecar run
//! as processes beside the cluster, each with its pod's ServiceAccount token and
//! environment, as the pods would. The output says so.
//!
//! `--once` exits after the conversation: 0 when everything arrived, 1 otherwise,
//! with a `demo-summary:` JSON line of what the sandboxes recorded.

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_fake_whatsapp::{FakeGraph, GraphConfig};
use crmessenger_testkit::checks::{condition, wait_until};
use crmessenger_testkit::controlplane::{free_port, repo_root};
use crmessenger_testkit::{ControlPlane, Postgres};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Where the chart is installed.
const RELEASE_NS: &str = "crmessenger-system";
/// The quickstart's namespace and accounts.
const SHOP: &str = "shop";
const TELEGRAM: &str = "shop-telegram";
const WHATSAPP: &str = "shop-whatsapp";
/// The WhatsApp customer.
const WA_CUSTOMER: &str = "15550001111";
/// The quickstart's placeholder for the amoCRM address.
const AMOCRM_PLACEHOLDER: &str = "https://amocrm-sandbox.localhost";

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

fn say(line: &str) {
    println!("{line}");
}

/// A binary of this workspace, built beside this one.
fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("the demo's directory")?.join(name);
    if !path.exists() {
        bail!("{} is not built; run tools/demo.sh, which builds it", path.display());
    }
    Ok(path)
}

/// Polls `check` until it holds, or fails after `secs` naming `what` and the last
/// observation.
async fn until<T>(what: &str, secs: u64, mut check: impl FnMut() -> Result<T, String>) -> Result<T> {
    wait_until(what, secs, || std::future::ready(check())).await.map_err(anyhow::Error::msg)
}

fn get(cp: &ControlPlane, ns: &str, what: &str) -> Result<Value, String> {
    let out = cp.kubectl_output(&["get", what, "-n", ns, "-o", "json"]).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn apply(cp: &ControlPlane, yaml: &str, ns: Option<&str>) -> Result<()> {
    let extra: Vec<&str> = ns.map(|n| vec!["-n", n]).unwrap_or_default();
    let out = cp.kubectl_apply_output(yaml, &extra)?;
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A container's environment as a process gets it: plain values, Secret keys
/// read from the cluster, and the pod's name and namespace.
fn resolve_env(cp: &ControlPlane, ns: &str, pod: &str, container: &Value) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        if let Some(v) = e["value"].as_str() {
            out.push((name, v.to_string()));
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let secret = r["name"].as_str().unwrap_or_default();
            let key = r["key"].as_str().unwrap_or_default();
            let s = get(cp, ns, &format!("secret/{secret}")).map_err(anyhow::Error::msg)?;
            let Some(b64) = s["data"][key].as_str() else {
                if r.get("optional").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                bail!("secret {ns}/{secret} has no key {key}");
            };
            let value = base64::engine::general_purpose::STANDARD.decode(b64)?;
            out.push((name, String::from_utf8(value)?));
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            let v = match path {
                "metadata.name" => pod.to_string(),
                "metadata.namespace" => ns.to_string(),
                _ => continue,
            };
            out.push((name, v));
        }
    }
    Ok(out)
}

/// A kubeconfig with a fresh token of the ServiceAccount `sa` in `ns`.
fn kubeconfig_as(cp: &ControlPlane, ns: &str, sa: &str) -> Result<PathBuf> {
    let token = cp.kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=12h"])?;
    cp.kubeconfig_for_token(&format!("{ns}-{sa}"), token.trim())
}

fn wait_http(addr: &str, path: &str, secs: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while crmessenger_testkit::checks::http_get(addr, path).map(|r| r.0) != Some(200) {
        if Instant::now() > deadline {
            bail!("{addr}{path} never answered 200");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The sandboxes, and what the demo started.
struct Demo {
    cp: ControlPlane,
    db: String,
    amo: FakeAmo,
    telegram: ScriptedMessenger,
    graph: FakeGraph,
    gateway: String,
    login_pages: Vec<(String, String)>,
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
    let started = Instant::now();
    let cp = ControlPlane::start().context("start the local control plane")?;
    say(&format!(
        "-- local Kubernetes control plane up ({} s): KUBECONFIG={}",
        started.elapsed().as_secs(),
        cp.kubeconfig().display()
    ));
    let pg = Postgres::start().context("start PostgreSQL")?;
    let db = pg.database("crmessenger")?;
    say("-- PostgreSQL up");

    // The sandboxes (in this process).
    let amo = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await?;
    let telegram = ScriptedMessenger::start(Options { logged_in: false, ..Options::default() }).await?;
    let gateway = format!("127.0.0.1:{}", free_port()?);
    let graph = FakeGraph::start(GraphConfig {
        webhook_url: Some(format!("http://{gateway}/whatsapp/webhook")),
        ..GraphConfig::default()
    })
    .await?;
    say(&format!("-- [sandbox] amoCRM at {}", amo.base_url()));
    say(&format!("-- [sandbox] WhatsApp Graph API at {}", graph.graph_url()));
    say(&format!("-- [sandbox] Telegram (scripted) at {}", telegram.base_url()));
    let mut demo = Demo { cp, db, amo, telegram, graph, gateway, login_pages: Vec::new() };

    install_chart(&demo)?;
    start_operator_and_gateway(&demo).await?;
    apply_quickstart(&demo)?;
    start_connectors(&mut demo).await?;
    sign_in_and_wait_ready(&demo).await?;
    let summary = conversation(&demo).await;
    print_state(&demo);
    if let Some(path) = &args.screenshot {
        crmessenger_testkit::browser::screenshot(&format!("{}/sandbox", demo.amo.base_url()), path)?;
        say(&format!("-- screenshot of the amoCRM sandbox: {}", path.display()));
    }
    let ok = match &summary {
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

fn install_chart(d: &Demo) -> Result<()> {
    let cp = &d.cp;
    apply(cp, &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {RELEASE_NS} }}\n"), None)?;
    let app = GraphConfig::default();
    let secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: crmessenger-database }}\nstringData: {{ dsn: \"{}\" }}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{ name: meta-app }}\nstringData: {{ app_secret: {}, verify_token: sandbox-verify }}\n",
        d.db, app.app_secret
    );
    apply(cp, &secrets, Some(RELEASE_NS))?;
    let chart = repo_root().join("charts/crmessenger");
    let values = format!(
        "operator.replicas=1,gateway.replicas=1,postgres.dsnSecret.name=crmessenger-database,gateway.publicUrl=http://{},\
         whatsapp.appSecret.name=meta-app,whatsapp.verifyToken.name=meta-app",
        d.gateway
    );
    let out = cp
        .helm()
        .args(["install", "crmessenger"])
        .arg(&chart)
        .args(["-n", RELEASE_NS, "--wait=false", "--set", &values])
        .output()?;
    if !out.status.success() {
        bail!("helm install: {}", String::from_utf8_lossy(&out.stderr));
    }
    cp.wait_crds_established()?;
    say("-- helm install crmessenger charts/crmessenger: CRDs established");
    Ok(())
}

async fn start_operator_and_gateway(d: &Demo) -> Result<()> {
    let cp = &d.cp;
    let deployment = get(cp, RELEASE_NS, "deployment/crmessenger-operator").map_err(anyhow::Error::msg)?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    // The chart's arguments, but no leader election (one process) and a local admin port.
    let admin = format!("127.0.0.1:{}", free_port()?);
    let mut args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| !a.starts_with("--leader-election") && !a.starts_with("--admin-addr"))
        .map(str::to_string)
        .collect();
    args.extend(["--leader-election=false".into(), "--admin-addr".into(), admin.clone()]);
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap_or("crmessenger");
    let mut operator = Command::new(bin("crmessenger-operator")?);
    operator
        .args(&args)
        .envs(resolve_env(cp, RELEASE_NS, "crmessenger-operator-0", container)?)
        .env("CRMESSENGER_LOG_JSON", "false")
        .env("KUBECONFIG", kubeconfig_as(cp, RELEASE_NS, sa)?);
    cp.spawn_logged("operator", operator)?;
    wait_http(&admin, "/readyz", 60).context("the operator")?;
    say("-- operator running as the chart's ServiceAccount (a process beside the cluster: no real node yet)");

    let gw = get(cp, RELEASE_NS, "deployment/crmessenger-gateway").map_err(anyhow::Error::msg)?;
    let container = &gw["spec"]["template"]["spec"]["containers"][0];
    let mut gateway = Command::new(bin("crmessenger-connector")?);
    gateway
        .args(["gateway", "--listen", &d.gateway])
        .envs(resolve_env(cp, RELEASE_NS, "crmessenger-gateway-0", container)?)
        .env("CRMESSENGER_LOG_JSON", "false");
    cp.spawn_logged("gateway", gateway)?;
    wait_http(&d.gateway, "/readyz", 30).context("the gateway")?;
    say(&format!("-- gateway at http://{} with the chart's settings", d.gateway));
    Ok(())
}

/// `examples/quickstart/` with the sandboxes' addresses and credentials.
fn apply_quickstart(d: &Demo) -> Result<()> {
    let dir = repo_root().join("examples/quickstart");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    // Secrets (and the namespace) first.
    files.sort_by_key(|p| !p.ends_with("secrets.yaml"));
    let token = d.amo.issue_token_pair().access_token;
    for file in files {
        let text = std::fs::read_to_string(&file)?
            .replace(AMOCRM_PLACEHOLDER, &d.amo.base_url())
            .replace("SANDBOX-AMOCRM-TOKEN", &token)
            .replace("SANDBOX-WHATSAPP-TOKEN", &d.graph.config().access_token);
        if text.contains("amocrm-sandbox.localhost") || text.contains("SANDBOX-") {
            bail!("{}: a sandbox placeholder was left", file.display());
        }
        apply(&d.cp, &text, None)?;
        say(&format!(
            "-- kubectl apply -f examples/quickstart/{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    Ok(())
}

/// Runs each account's connector and sidecar the way its pod would.
async fn start_connectors(d: &mut Demo) -> Result<()> {
    let cp = &d.cp;
    for account in [TELEGRAM, WHATSAPP] {
        let child = format!("{account}-connector");
        let sts = until(&format!("the StatefulSet of {account}"), 60, || {
            get(cp, SHOP, &format!("serviceaccount/{child}"))?;
            get(cp, SHOP, &format!("configmap/{child}"))?;
            get(cp, SHOP, &format!("statefulset/{child}"))
        })
        .await?;
        let pod = format!("{child}-0");
        let spec = &sts["spec"]["template"]["spec"];
        let container = spec["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "connector"))
            .context("the connector container")?;
        let env = resolve_env(cp, SHOP, &pod, container)?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut run = Command::new(bin("crmessenger-connector")?);
        run.args(["run", "--admin-addr", &admin, "--metrics-addr", &metrics])
            .envs(env)
            .env("CRMESSENGER_LOG_JSON", "false")
            .env("KUBECONFIG", kubeconfig_as(cp, SHOP, &child)?);
        if account == TELEGRAM {
            run.args(["--scripted-messenger", &d.telegram.base_url()]);
        } else {
            run.env("CRMESSENGER_WHATSAPP_GRAPH_URL", d.graph.graph_url());
        }
        cp.spawn_logged(account, run)?;
        wait_http(&admin, "/readyz", 60).with_context(|| format!("the connector of {account}"))?;
        let login = format!("127.0.0.1:{}", free_port()?);
        let mut sidecar = Command::new(bin("crmessenger-connector")?);
        sidecar.args(["sidecar", "--listen", &login, "--admin-url", &format!("http://{admin}")]);
        cp.spawn_logged(&format!("{account}-sidecar"), sidecar)?;
        wait_http(&login, "/healthz", 30)?;
        d.login_pages.push((account.to_string(), format!("http://{login}/login")));
        say(&format!("-- connector of {SHOP}/{account} running with its pod's ServiceAccount and environment"));
    }
    Ok(())
}

async fn sign_in_and_wait_ready(d: &Demo) -> Result<()> {
    let cp = &d.cp;
    // The Telegram account asks for a QR scan; the sandbox phone scans it.
    let qr = until("the QR code in the Telegram account's status", 120, || {
        let a = get(cp, SHOP, &format!("messengeraccount/{TELEGRAM}"))?;
        a["status"]["login"]["qrUrl"].as_str().map(str::to_string).ok_or_else(|| a["status"].to_string())
    })
    .await?;
    say(&format!("-- {SHOP}/{TELEGRAM} shows a QR code ({qr}); the sandbox phone scans it"));
    d.telegram.scan();
    for account in [TELEGRAM, WHATSAPP] {
        until(&format!("{account} to be Ready"), 180, || {
            let a = get(cp, SHOP, &format!("messengeraccount/{account}"))?;
            let ready = condition(&a, "Ready").ok_or_else(|| "no Ready condition yet".to_string())?;
            (ready["status"] == "True").then_some(()).ok_or_else(|| ready.to_string())
        })
        .await?;
    }
    say("-- both accounts Ready");
    Ok(())
}

/// The customers write, the manager answers; returns what the sandboxes recorded.
async fn conversation(d: &Demo) -> Result<Value> {
    let (tg_text, wa_text) = ("Hello! Is the blue kettle still in stock?", "Hi, can I pick up my order today?");
    let (tg_reply, wa_reply) = ("Yes, two left. Shall I reserve one for you?", "Yes, until 8 pm. See you!");
    d.telegram.push(vec![text("7001", "tg-1", "Olga", tg_text)]);
    say(&format!("   Telegram customer Olga: {tg_text}"));
    d.graph.customer_says(Some(WA_CUSTOMER), None, "Maria", wa_text);
    say(&format!("   WhatsApp customer Maria: {wa_text}"));
    let lead_of = |needle: &str| {
        let s = d.amo.snapshot();
        s.notes
            .iter()
            .find(|n| n.params["text"].as_str().unwrap_or_default().contains(needle))
            .map(|n| n.entity_id)
            .ok_or(format!("{} notes in the CRM", s.notes.len()))
    };
    let tg_lead = until("Olga's message in the CRM", 60, || lead_of(tg_text)).await?;
    let wa_lead = until("Maria's message in the CRM", 60, || lead_of(wa_text)).await?;
    say(&format!("-- [sandbox] amoCRM: contacts, leads {tg_lead} and {wa_lead} with the messages as notes"));
    d.amo.add_manager_note(tg_lead, 1001, &format!(">> {tg_reply}"));
    d.amo.add_manager_note(wa_lead, 1001, &format!(">> {wa_reply}"));
    say("   the manager answers both in amoCRM (a note starting with >>)");
    until("the answer in Telegram", 60, || {
        d.telegram
            .sent()
            .iter()
            .any(|s| s.chat_id == "7001" && s.text == tg_reply)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await?;
    say(&format!("   Olga received: {tg_reply}"));
    until("the answer in WhatsApp", 60, || {
        let sent = d.graph.sent();
        sent.iter()
            .any(|m| m.to == WA_CUSTOMER && m.body["text"]["body"] == wa_reply)
            .then_some(())
            .ok_or(format!("{} sent", sent.len()))
    })
    .await?;
    say(&format!("   Maria received: {wa_reply}"));
    // WhatsApp's statuses come back through the gateway: sent, delivered, read.
    let store = sqlx::AnyPool::connect(&d.db).await?;
    let delivery = wait_until("WhatsApp's read receipt", 60, || async {
        let v: Option<String> = sqlx::query_scalar("SELECT delivery FROM outbox WHERE account = $1 AND state = 'sent'")
            .bind(format!("{SHOP}/{WHATSAPP}"))
            .fetch_optional(&store)
            .await
            .map_err(|e| e.to_string())?
            .flatten();
        if v.as_deref() == Some("read") { Ok(v) } else { Err(format!("{v:?}")) }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    say("   WhatsApp reports the answer delivered and read");
    let s = d.amo.snapshot();
    let accounts: Vec<Value> = [TELEGRAM, WHATSAPP]
        .iter()
        .map(|a| {
            let obj = get(&d.cp, SHOP, &format!("messengeraccount/{a}")).unwrap_or_default();
            json!({ "name": a, "ready": condition(&obj, "Ready").map(|c| c["status"].clone()) })
        })
        .collect();
    Ok(json!({
        "contacts": s.contacts.len(),
        "leads": s.leads.len(),
        "notes": s.notes.iter().map(|n| n.params["text"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
        "telegram_sent": d.telegram.sent().iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
        "whatsapp_sent": d.graph.sent().iter().map(|m| m.body["text"]["body"].clone()).collect::<Vec<_>>(),
        "whatsapp_delivery": delivery,
        "accounts": accounts,
    }))
}

fn print_state(d: &Demo) {
    say("== kubectl get crmessenger -n shop -o wide");
    match d.cp.kubectl_output(&["get", "crmessenger", "-n", SHOP, "-o", "wide"]) {
        Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => say(&format!("   ({e})")),
    }
    say("== where to look");
    for (account, url) in &d.login_pages {
        say(&format!("   login page of {SHOP}/{account}: {url}"));
    }
    say(&format!("   [sandbox] amoCRM, as a manager sees it (answer there by hand): {}/sandbox", d.amo.base_url()));
    say(&format!("   KUBECONFIG={}  (kubectl from {})", d.cp.kubeconfig().display(), d.cp.bin_dir().display()));
    say(&format!("   logs: {}", d.cp.dir().join("logs").display()));
}
