//! The main job's parts: a local cluster with a real node, PostgreSQL and the
//! sandboxes, the chart installed from the project's image, the quickstart
//! applied, the accounts signed in, and a conversation played through them.
//! `crmessenger-demo` (the main job) runs them in order; the tests on the real
//! node (`demo/tests/real_node.rs`) reuse them.
//!
//! Everything the project runs runs as pods on the node, from the image
//! `tools/image.sh` built: the operator, the gateway, and each account's connector
//! and sidecar. The **sandboxes** — stand-ins for the services this machine cannot
//! reach: amoCRM, the WhatsApp Graph API and a scripted Telegram — and PostgreSQL
//! run on the host, on the host end of the node's link; pods reach them through
//! Services without a selector in the `sandbox` namespace
//! (`amocrm.sandbox.svc.cluster.local` and so on), and the sandboxes reach the
//! gateway through a NodePort.

use anyhow::{Context, Result, bail};
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig, StartOptions, TlsIdentity};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_fake_whatsapp::{FakeGraph, GraphConfig};
use crmessenger_testkit::checks::{condition, wait_until};
use crmessenger_testkit::controlplane::repo_root;
use crmessenger_testkit::node::Link;
use crmessenger_testkit::process::Proc;
use crmessenger_testkit::{ControlPlane, Postgres, TestCa};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

/// Where the chart is installed.
pub const RELEASE_NS: &str = "crmessenger-system";
/// Where the Services that lead to the host-side sandboxes are.
pub const SANDBOX_NS: &str = "sandbox";
/// The quickstart's namespace and accounts.
pub const SHOP: &str = "shop";
/// The quickstart's Telegram account.
pub const TELEGRAM: &str = "shop-telegram";
/// The quickstart's WhatsApp account.
pub const WHATSAPP: &str = "shop-whatsapp";
/// The WhatsApp customer.
pub const WA_CUSTOMER: &str = "15550001111";
/// The Telegram customer's chat.
pub const TG_CUSTOMER: &str = "7001";
/// The quickstart's placeholder for the amoCRM address.
const AMOCRM_PLACEHOLDER: &str = "https://amocrm-sandbox.localhost";
/// The gateway's NodePort: the sandboxes (amoCRM, the Graph API) send webhooks to it.
const GATEWAY_NODE_PORT: u16 = 30080;

/// Prints a line of the main job's story.
pub fn say(line: &str) {
    println!("{line}");
}

/// The cluster, the sandboxes, and what runs in the cluster.
pub struct Demo {
    /// The control plane with its real node.
    pub cp: ControlPlane,
    /// PostgreSQL on the host; the database the chart's pods use, as the host reaches it.
    pub db: String,
    _pg: Postgres,
    /// amoCRM's sandbox.
    pub amo: FakeAmo,
    /// The CA that signed the amoCRM sandbox's certificate.
    pub sandbox_ca: String,
    /// Telegram's sandbox (a scripted messenger).
    pub telegram: ScriptedMessenger,
    /// The WhatsApp Graph API's sandbox.
    pub graph: FakeGraph,
    /// The image the pods run, `repository:tag`.
    pub image: String,
    /// `kubectl port-forward`s to the accounts' login pages: (account, URL, process).
    pub login_pages: Vec<(String, String, Proc)>,
}

impl Demo {
    /// Starts the control plane with its node, imports the image, starts
    /// PostgreSQL and the sandboxes on the host end of the node's link.
    pub async fn start() -> Result<Demo> {
        let started = Instant::now();
        let cp = ControlPlane::start_with_node().context("start the local cluster")?;
        let link = cp.link().context("the cluster has no node")?;
        say(&format!(
            "-- local Kubernetes cluster up ({} s): a real kube-apiserver and node {} (containerd, kubelet, kube-proxy, CoreDNS); KUBECONFIG={}",
            started.elapsed().as_secs(),
            cp.node_name(),
            cp.kubeconfig().display()
        ));
        let (archive, image) = image_archive()?;
        cp.import_image(&archive)?;
        say(&format!("-- image {image} imported into the node (nothing is pulled)"));
        let pg = Postgres::start_for_node(link).context("start PostgreSQL")?;
        let db = pg.database("crmessenger")?;
        say("-- PostgreSQL up");

        let on_link = SocketAddr::from((link.host_ip, 0));
        // amoCRM takes https only: the sandbox serves a certificate of a CA of its
        // own, which the binding names as its caSecret.
        let ca = TestCa::new("crmessenger sandbox CA")?;
        let host_ip = link.host_ip.to_string();
        let cert = ca.issue_server(
            "amoCRM sandbox",
            &["amocrm.sandbox.svc.cluster.local", "amocrm.sandbox.svc", &host_ip, "127.0.0.1"],
        )?;
        let amo = FakeAmo::start_with(
            FakeConfig {
                chats: None,
                tls: Some(TlsIdentity { cert_pem: cert.cert_pem, key_pem: cert.key_pem }),
                ..FakeConfig::default()
            },
            StartOptions { listen: on_link, ..StartOptions::default() },
        )
        .await?;
        let telegram =
            ScriptedMessenger::start(Options { logged_in: false, listen: on_link, ..Options::default() }).await?;
        let graph = FakeGraph::start(GraphConfig {
            webhook_url: Some(format!("http://{}:{GATEWAY_NODE_PORT}/whatsapp/webhook", link.node_ip)),
            listen: on_link,
            ..GraphConfig::default()
        })
        .await?;
        say(&format!("-- [sandbox] amoCRM at {}", amo.base_url()));
        say(&format!("-- [sandbox] WhatsApp Graph API at {}", graph.graph_url()));
        say(&format!("-- [sandbox] Telegram (scripted) at {}", telegram.base_url()));
        let sandbox_ca = ca.cert_pem().to_string();
        Ok(Demo { cp, db, _pg: pg, amo, sandbox_ca, telegram, graph, image, login_pages: Vec::new() })
    }

    fn link(&self) -> &Link {
        self.cp.link().expect("a node")
    }

    /// The in-cluster URL of a host-side service exposed in [`SANDBOX_NS`] (same
    /// scheme, port and path).
    fn service_url(&self, name: &str, host_url: &str) -> Result<String> {
        let scheme = host_url.split_once("://").map(|(s, _)| s).unwrap_or("http");
        let port = port_of(host_url)?;
        let path = host_url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..])).unwrap_or("");
        Ok(format!("{scheme}://{name}.{SANDBOX_NS}.svc.cluster.local:{port}{path}"))
    }

    /// The Services that lead pods to the host-side sandboxes and PostgreSQL, the
    /// chart's Secrets, and `helm install` with the imported image.
    pub fn install_chart(&self) -> Result<()> {
        let cp = &self.cp;
        let ns = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {name}, labels: {{ pod-security.kubernetes.io/enforce: restricted }} }}\n"
            )
        };
        apply(cp, &ns(RELEASE_NS), None)?;
        apply(cp, &ns(SANDBOX_NS), None)?;
        let pg_port = port_of(&self.db)?;
        let mut services = vec![self.link().expose_yaml(SANDBOX_NS, "postgres", pg_port)];
        for (name, url) in [
            ("amocrm", self.amo.base_url()),
            ("telegram", self.telegram.base_url()),
            ("whatsapp", self.graph.graph_url()),
        ] {
            services.push(self.link().expose_yaml(SANDBOX_NS, name, port_of(&url)?));
        }
        apply(cp, &services.join("---\n"), None)?;
        let db_in_cluster = self
            .db
            .replace(&format!("127.0.0.1:{pg_port}"), &format!("postgres.{SANDBOX_NS}.svc.cluster.local:{pg_port}"));
        let app = GraphConfig::default();
        let secrets = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: crmessenger-database }}\nstringData: {{ dsn: \"{db_in_cluster}\" }}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{ name: meta-app }}\nstringData: {{ app_secret: {}, verify_token: sandbox-verify }}\n",
            app.app_secret
        );
        apply(cp, &secrets, Some(RELEASE_NS))?;
        let (repository, tag) = self.image.rsplit_once(':').context("image tag")?;
        let values = [
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".into(),
            "operator.replicas=1".into(),
            "operator.logJson=false".into(),
            "gateway.replicas=1".into(),
            "gateway.logJson=false".into(),
            "postgres.dsnSecret.name=crmessenger-database".into(),
            format!("gateway.publicUrl=http://{}:{GATEWAY_NODE_PORT}", self.link().node_ip),
            "whatsapp.appSecret.name=meta-app".into(),
            "whatsapp.verifyToken.name=meta-app".into(),
            format!("sandbox.scriptedMessengerUrl={}", self.service_url("telegram", &self.telegram.base_url())?),
            format!("sandbox.whatsappGraphUrl={}", self.service_url("whatsapp", &self.graph.graph_url())?),
        ];
        let chart = repo_root().join("charts/crmessenger");
        let out = cp
            .helm()
            .args(["install", "crmessenger"])
            .arg(&chart)
            .args(["-n", RELEASE_NS, "--wait=false", "--set", &values.join(",")])
            .output()?;
        if !out.status.success() {
            bail!("helm install: {}", String::from_utf8_lossy(&out.stderr));
        }
        cp.wait_crds_established()?;
        say(
            "-- helm install crmessenger charts/crmessenger --set image.repository=...,image.tag=...: CRDs established",
        );
        // The sandboxes' webhooks reach the gateway at the node's address.
        let nodeport = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: crmessenger-gateway-nodeport }}\nspec:\n  type: NodePort\n  \
             selector: {{ app.kubernetes.io/instance: crmessenger, app.kubernetes.io/component: gateway }}\n  \
             ports: [{{ name: http, port: 8080, targetPort: http, nodePort: {GATEWAY_NODE_PORT} }}]\n"
        );
        apply(cp, &nodeport, Some(RELEASE_NS))
    }

    /// Waits until the operator's and the gateway's Deployments are available.
    pub async fn wait_operator_and_gateway(&self) -> Result<()> {
        for name in ["crmessenger-operator", "crmessenger-gateway"] {
            until(&format!("deployment/{name} to be available"), 180, || {
                let d = get(&self.cp, RELEASE_NS, &format!("deployment/{name}"))?;
                let ready = d["status"]["availableReplicas"].as_i64().unwrap_or(0);
                (ready >= 1).then_some(()).ok_or_else(|| self.pod_problems(RELEASE_NS))
            })
            .await?;
        }
        say("-- operator and gateway pods Ready (kubectl -n crmessenger-system get pods)");
        Ok(())
    }

    /// What keeps the pods of `ns` from running, for timeouts.
    pub fn pod_problems(&self, ns: &str) -> String {
        let pods = get(&self.cp, ns, "pods").unwrap_or_default();
        let mut out = Vec::new();
        for p in pods["items"].as_array().into_iter().flatten() {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let phase = p["status"]["phase"].as_str().unwrap_or("?");
            let waiting: Vec<String> = p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let w = &c["state"]["waiting"];
                    w["reason"].as_str().map(|r| format!("{}: {r} {}", c["name"], w["message"].as_str().unwrap_or("")))
                })
                .collect();
            out.push(format!("{name} {phase} {}", waiting.join("; ")));
        }
        if out.is_empty() { format!("no pods in {ns}") } else { out.join(" | ") }
    }

    /// `examples/quickstart/` with the sandboxes' addresses and credentials.
    pub fn apply_quickstart(&self) -> Result<()> {
        let dir = repo_root().join("examples/quickstart");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        // Secrets (and the namespace) first.
        files.sort_by_key(|p| !p.ends_with("secrets.yaml"));
        let token = self.amo.issue_token_pair().access_token;
        let amo = self.service_url("amocrm", &self.amo.base_url())?;
        let mut ca_applied = false;
        for file in files {
            if !ca_applied && !file.ends_with("secrets.yaml") {
                let ca = serde_json::to_string(&self.sandbox_ca)?;
                let secret = format!(
                    "apiVersion: v1\nkind: Secret\nmetadata: {{ name: amocrm-sandbox-ca, namespace: {SHOP} }}\nstringData: {{ ca.crt: {ca} }}\n"
                );
                apply(&self.cp, &secret, None)?;
                ca_applied = true;
            }
            let text = std::fs::read_to_string(&file)?
                .replace(AMOCRM_PLACEHOLDER, &amo)
                // The sandbox's own CA, as for any private amoCRM host.
                .replace(
                    "      credentialsSecret:\n",
                    "      caSecret: { name: amocrm-sandbox-ca, key: ca.crt }\n      credentialsSecret:\n",
                )
                .replace("SANDBOX-AMOCRM-TOKEN", &token)
                .replace("SANDBOX-WHATSAPP-TOKEN", &self.graph.config().access_token);
            if text.contains("amocrm-sandbox.localhost") || text.contains("SANDBOX-") {
                bail!("{}: a sandbox placeholder was left", file.display());
            }
            apply(&self.cp, &text, None)?;
            say(&format!(
                "-- kubectl apply -f examples/quickstart/{}",
                file.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
        Ok(())
    }

    /// Waits for each account's connector pod to run, and opens its login page
    /// with `kubectl port-forward` to the sidecar.
    pub async fn wait_connectors(&mut self) -> Result<()> {
        for account in [TELEGRAM, WHATSAPP] {
            let pod = format!("{account}-connector-0");
            until(&format!("pod {pod} to run"), 180, || {
                let p = get(&self.cp, SHOP, &format!("pod/{pod}"))?;
                let running = p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object()));
                running.then_some(()).ok_or_else(|| self.pod_problems(SHOP))
            })
            .await?;
            say(&format!("-- pod {SHOP}/{pod} running on the node (connector and sidecar containers)"));
            let (addr, proc) = self.port_forward(SHOP, &format!("pod/{pod}"), SIDECAR_PORT)?;
            let url = format!("http://{addr}/login");
            let status = crmessenger_testkit::checks::http_get(&addr, "/login").map(|r| r.0);
            say(&format!(
                "-- kubectl port-forward -n {SHOP} pod/{pod} :{SIDECAR_PORT}: the login page answers {}",
                status.map(|s| s.to_string()).unwrap_or_else(|| "nothing".into())
            ));
            self.login_pages.push((account.to_string(), url, proc));
        }
        Ok(())
    }

    /// `kubectl port-forward -n NS TARGET :PORT` on 127.0.0.1; returns the local
    /// address once it forwards, and the process (it stops when dropped).
    pub fn port_forward(&self, ns: &str, target: &str, port: u16) -> Result<(String, Proc)> {
        let mut cmd = self.cp.kubectl();
        cmd.args(["port-forward", "-n", ns, "--address", "127.0.0.1", target, &format!(":{port}")]);
        // A log of its own for each forward: another one's "Forwarding from" line
        // must not be taken for this one's.
        static FORWARDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FORWARDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("port-forward-{}-{}-{port}-{n}", ns, target.replace('/', "-"));
        let proc = Proc::start(&name, cmd, &self.cp.dir().join("logs"))?;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(addr) = proc.log().lines().find_map(|l| {
                l.strip_prefix("Forwarding from ").and_then(|r| r.split(" -> ").next()).map(str::to_string)
            }) {
                // It forwards once a connection has gone through.
                if crmessenger_testkit::checks::http_get(&addr, "/healthz").is_some() {
                    return Ok((addr, proc));
                }
            }
            if Instant::now() > deadline {
                bail!("kubectl port-forward {target} did not forward:\n{}", proc.log_tail(20));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// The sidecar's port (the login page), as the operator builds connector pods.
const SIDECAR_PORT: u16 = 8080;

/// The port of a URL with an explicit port (`scheme://host:PORT/path`).
fn port_of(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {url}"))
}

/// Polls `check` until it holds, or fails after `secs` naming `what` and the last
/// observation.
pub async fn until<T>(what: &str, secs: u64, mut check: impl FnMut() -> Result<T, String>) -> Result<T> {
    wait_until(what, secs, || std::future::ready(check())).await.map_err(anyhow::Error::msg)
}

/// `kubectl get WHAT -n NS -o json`.
pub fn get(cp: &ControlPlane, ns: &str, what: &str) -> Result<Value, String> {
    let out = cp.kubectl_output(&["get", what, "-n", ns, "-o", "json"]).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `kubectl apply -f -`.
pub fn apply(cp: &ControlPlane, yaml: &str, ns: Option<&str>) -> Result<()> {
    let extra: Vec<&str> = ns.map(|n| vec!["-n", n]).unwrap_or_default();
    let out = cp.kubectl_apply_output(yaml, &extra)?;
    if !out.status.success() {
        bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The project image's OCI archive (`$CRMESSENGER_IMAGE_ARCHIVE`, or what
/// `tools/image.sh --variant whatsapp-web` writes) and the name it carries.
pub fn image_archive() -> Result<(PathBuf, String)> {
    let archive = match std::env::var_os("CRMESSENGER_IMAGE_ARCHIVE") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/crmessenger/target")))
                .context("neither CARGO_TARGET_DIR nor HOME is set")?;
            target.join("image/whatsapp-web-dev/crmessenger.oci.tar")
        }
    };
    let index = archive.with_file_name("oci").join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index).with_context(|| format!("{} (build the image with tools/image.sh)", index.display()))?,
    )?;
    let name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .context("the image's index names no image")?
        .to_string();
    Ok((archive, name))
}

/// What the conversation left: the summary the main job prints.
pub fn summary_of(d: &Demo, delivery: Option<String>) -> Value {
    let s = d.amo.snapshot();
    let accounts: Vec<Value> = [TELEGRAM, WHATSAPP]
        .iter()
        .map(|a| {
            let obj = get(&d.cp, SHOP, &format!("messengeraccount/{a}")).unwrap_or_default();
            json!({ "name": a, "ready": condition(&obj, "Ready").map(|c| c["status"].clone()) })
        })
        .collect();
    json!({
        "contacts": s.contacts.len(),
        "leads": s.leads.len(),
        "notes": s.notes.iter().map(|n| n.params["text"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
        "telegram_sent": d.telegram.sent().iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
        "whatsapp_sent": d.graph.sent().iter().map(|m| m.body["text"]["body"].clone()).collect::<Vec<_>>(),
        "whatsapp_delivery": delivery,
        "accounts": accounts,
    })
}

/// A Telegram customer's message, as the scripted messenger delivers it.
pub fn telegram_message(id: &str, from: &str, body: &str) -> crmessenger_fake_messenger::Update {
    text(TG_CUSTOMER, id, from, body)
}

impl Demo {
    /// The Telegram account shows a QR code in its status; the sandbox phone scans
    /// it; both accounts become Ready.
    pub async fn sign_in_and_wait_ready(&self) -> Result<()> {
        let cp = &self.cp;
        let qr = until("the QR code in the Telegram account's status", 180, || {
            let a = get(cp, SHOP, &format!("messengeraccount/{TELEGRAM}"))?;
            a["status"]["login"]["qrUrl"].as_str().map(str::to_string).ok_or_else(|| a["status"].to_string())
        })
        .await?;
        say(&format!("-- {SHOP}/{TELEGRAM} shows a QR code ({qr}); the sandbox phone scans it"));
        self.telegram.scan();
        self.wait_ready().await
    }

    /// Both accounts become Ready.
    pub async fn wait_ready(&self) -> Result<()> {
        let cp = &self.cp;
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

    /// The lead whose note contains `needle`.
    pub fn lead_of(&self, needle: &str) -> Result<i64, String> {
        let s = self.amo.snapshot();
        s.notes
            .iter()
            .find(|n| n.params["text"].as_str().unwrap_or_default().contains(needle))
            .map(|n| n.entity_id)
            .ok_or(format!("{} notes in the CRM", s.notes.len()))
    }

    /// The customers write, the manager answers; returns what the sandboxes recorded.
    pub async fn conversation(&self) -> Result<Value> {
        let (tg_text, wa_text) = ("Hello! Is the blue kettle still in stock?", "Hi, can I pick up my order today?");
        let (tg_reply, wa_reply) = ("Yes, two left. Shall I reserve one for you?", "Yes, until 8 pm. See you!");
        self.telegram.push(vec![telegram_message("tg-1", "Olga", tg_text)]);
        say(&format!("   Telegram customer Olga: {tg_text}"));
        self.graph.customer_says(Some(WA_CUSTOMER), None, "Maria", wa_text);
        say(&format!("   WhatsApp customer Maria: {wa_text}"));
        let tg_lead = until("Olga's message in the CRM", 60, || self.lead_of(tg_text)).await?;
        let wa_lead = until("Maria's message in the CRM", 60, || self.lead_of(wa_text)).await?;
        say(&format!("-- [sandbox] amoCRM: contacts, leads {tg_lead} and {wa_lead} with the messages as notes"));
        self.amo.add_manager_note(tg_lead, 1001, &format!(">> {tg_reply}"));
        self.amo.add_manager_note(wa_lead, 1001, &format!(">> {wa_reply}"));
        say("   the manager answers both in amoCRM (a note starting with >>)");
        until("the answer in Telegram", 60, || {
            self.telegram
                .sent()
                .iter()
                .any(|s| s.chat_id == TG_CUSTOMER && s.text == tg_reply)
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        })
        .await?;
        say(&format!("   Olga received: {tg_reply}"));
        until("the answer in WhatsApp", 60, || {
            let sent = self.graph.sent();
            sent.iter()
                .any(|m| m.to == WA_CUSTOMER && m.body["text"]["body"] == wa_reply)
                .then_some(())
                .ok_or(format!("{} sent", sent.len()))
        })
        .await?;
        say(&format!("   Maria received: {wa_reply}"));
        // WhatsApp's statuses come back through the gateway: sent, delivered, read.
        let delivery = wait_until("WhatsApp's read receipt", 60, || async {
            let v = self.delivery_of_whatsapp_reply().await?;
            if v.as_deref() == Some("read") { Ok(v) } else { Err(format!("{v:?}")) }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        say("   WhatsApp reports the answer delivered and read");
        // The connectors report their queues every few seconds: the answers show there too.
        for account in [TELEGRAM, WHATSAPP] {
            until(&format!("{account}'s last reply in its status"), 30, || {
                let a = get(&self.cp, SHOP, &format!("messengeraccount/{account}"))?;
                let q = &a["status"]["queues"];
                (q["lastOutboundAt"].is_string() && q["outboundPending"] == 0).then_some(()).ok_or(q.to_string())
            })
            .await?;
        }
        Ok(summary_of(self, delivery))
    }

    async fn delivery_of_whatsapp_reply(&self) -> Result<Option<String>, String> {
        let store = sqlx::AnyPool::connect(&self.db).await.map_err(|e| e.to_string())?;
        let v: Option<Option<String>> =
            sqlx::query_scalar("SELECT delivery FROM outbox WHERE account = $1 AND state = 'sent'")
                .bind(format!("{SHOP}/{WHATSAPP}"))
                .fetch_optional(&store)
                .await
                .map_err(|e| e.to_string())?;
        store.close().await;
        Ok(v.flatten())
    }

    /// What `kubectl get` shows, and where to look.
    pub fn print_state(&self) {
        say("== kubectl get crmessenger -n shop -o wide");
        match self.cp.kubectl_output(&["get", "crmessenger", "-n", SHOP, "-o", "wide"]) {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => say(&format!("   ({e})")),
        }
        // The plugin, built beside this binary by tools/demo.sh.
        let plugin = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("kubectl-crmessenger")));
        if let Some(plugin) = plugin.filter(|p| p.exists()) {
            say("== kubectl crmessenger status -n shop");
            match std::process::Command::new(&plugin)
                .args(["status", "-n", SHOP])
                .env("KUBECONFIG", self.cp.kubeconfig())
                .output()
            {
                Ok(out) => print!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
                Err(e) => say(&format!("   ({e})")),
            }
            say(&format!(
                "   (the plugin: PATH={}:$PATH kubectl crmessenger status|login|dead-letters|replay|doctor)",
                plugin.parent().map(|d| d.display().to_string()).unwrap_or_default()
            ));
        }
        say("== kubectl get pods -A -o wide");
        match self.cp.kubectl_output(&["get", "pods", "-A", "-o", "wide"]) {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => say(&format!("   ({e})")),
        }
        say("== where to look");
        for (account, url, _) in &self.login_pages {
            say(&format!("   login page of {SHOP}/{account}: {url}"));
        }
        say(&format!(
            "   [sandbox] amoCRM, as a manager sees it (answer there by hand): {}/sandbox",
            self.amo.base_url()
        ));
        say(&format!(
            "   KUBECONFIG={}  (kubectl from {})",
            self.cp.kubeconfig().display(),
            self.cp.bin_dir().display()
        ));
        say(&format!(
            "   logs: {} (the node's: {}/logs)",
            self.cp.dir().join("logs").display(),
            self.cp.node_dir().display()
        ));
    }
}
