//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (a fake kubelet with one node),
//! started from the binaries `tools/build-controlplane.sh` builds. With a real
//! node ([`ControlPlane::shared_with_node`]) the API server listens on the host end
//! of the node's link instead, and pods run for real (see [`crate::node`]).

use crate::certs::{TestCa, key_pair_pem};
use crate::node::{self, Link};
use crate::process::{spawn_tied, start_watchdog};
use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The name of the fake node kwok manages; pods are scheduled onto it.
pub const NODE_NAME: &str = "kwok-node-0";
/// The service CIDR the API server allocates ClusterIPs from.
pub const SERVICE_CIDR: &str = "10.0.0.0/16";

/// A running control plane. Its processes are killed and its directory removed when
/// the process that started it exits.
pub struct ControlPlane {
    dir: PathBuf,
    bin: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    ca_pem: String,
    children: Mutex<Vec<(String, Child)>>,
    crds: OnceLock<Result<(), String>>,
    link: Option<Link>,
}

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(|| ControlPlane::start().map_err(|e| format!("{e:#}"))) {
            Ok(cp) => cp,
            Err(e) => panic!("the test control plane did not start: {e}"),
        }
    }

    /// The control plane with a real node shared by every test of this test binary,
    /// started on first use (see [`crate::node`]). A test binary uses either this or
    /// [`ControlPlane::shared`].
    pub fn shared_with_node() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(|| ControlPlane::start_with_node().map_err(|e| format!("{e:#}"))) {
            Ok(cp) => cp,
            Err(e) => panic!("the test control plane with a real node did not start: {e}"),
        }
    }

    /// Starts a new control plane in a fresh temporary directory and waits until it
    /// serves requests, schedules pods (onto kwok's fake node) and runs controllers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(false)
    }

    /// Starts a new control plane with a real node (containerd, kubelet,
    /// kube-proxy, CoreDNS) instead of kwok, and waits until the node is Ready and
    /// the cluster DNS answers.
    pub fn start_with_node() -> anyhow::Result<Self> {
        Self::start_inner(true)
    }

    fn start_inner(with_node: bool) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let keep = std::env::var_os("CRMESSENGER_KEEP_CONTROLPLANE").is_some();
        let dir = tempfile::Builder::new().prefix("crmessenger-cp-").tempdir()?.keep();
        start_watchdog(&dir, keep)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let link = if with_node { Some(Link::create(&dir)?) } else { None };
        let address = link.as_ref().map(|l| l.host_ip.to_string()).unwrap_or_else(|| "127.0.0.1".into());

        let ca = TestCa::new("crmessenger-test-ca")?;
        let serving = ca.issue_server(
            "kube-apiserver",
            &[
                "localhost",
                "127.0.0.1",
                &address,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.0.0.1",
            ],
        )?;
        let kubelet_client = ca.issue_client("kube-apiserver-kubelet-client", "system:masters")?;
        write(&dir, "kubelet-client.crt", &kubelet_client.cert_pem)?;
        write(&dir, "kubelet-client.key", &kubelet_client.key_pem)?;
        let token = random_hex(24)?;
        write(&dir, "ca.crt", ca.cert_pem())?;
        write(&dir, "ca.key", ca.key_pem())?;
        write(&dir, "apiserver.crt", &serving.cert_pem)?;
        write(&dir, "apiserver.key", &serving.key_pem)?;
        let (sa_key, sa_pub) = key_pair_pem()?;
        write(&dir, "sa.key", &sa_key)?;
        write(&dir, "sa.pub", &sa_pub)?;
        write(&dir, "tokens.csv", &format!("{token},admin,admin-uid,\"system:masters\"\n"))?;

        let api_port = free_port()?;
        let server = format!("https://{address}:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write(&dir, "admin.kubeconfig", &kubeconfig_yaml(&server, ca.cert_pem(), &token))?;

        let cp = ControlPlane {
            dir: dir.clone(),
            bin,
            kubeconfig,
            server,
            ca_pem: ca.cert_pem().to_string(),
            children: Mutex::new(Vec::new()),
            crds: OnceLock::new(),
            link,
        };
        cp.start_etcd_and_apiserver(&address, api_port)?;
        cp.start_controllers()?;
        if cp.link.is_some() {
            cp.start_node()?;
        } else {
            cp.start_kwok()?;
        }
        Ok(cp)
    }

    fn start_etcd_and_apiserver(&self, address: &str, api_port: u16) -> anyhow::Result<()> {
        let d = &self.dir;
        let (client, peer) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        self.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let p = |f: &str| d.join(f).display().to_string();
        self.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={address}"),
                format!("--advertise-address={address}"),
                format!("--secure-port={api_port}"),
                format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
                format!("--kubelet-client-key={}", p("kubelet-client.key")),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--cert-dir={}", p("apiserver-certs")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--allow-privileged=true".into(),
                "--v=1".into(),
            ],
        )?;
        self.wait_for("the API server's /readyz", Duration::from_secs(90), || {
            Ok(self.kubectl_output(&["get", "--raw=/readyz"])?.status.success())
        })
    }

    fn start_controllers(&self) -> anyhow::Result<()> {
        let kc = format!("{}", self.kubeconfig.display());
        let p = |f: &str| self.dir.join(f).display().to_string();
        self.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                format!("--cluster-signing-cert-file={}", p("ca.crt")),
                format!("--cluster-signing-key-file={}", p("ca.key")),
                "--use-service-account-credentials=true".into(),
                "--controllers=*".into(),
                "--v=1".into(),
            ],
        )?;
        self.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--v=1".into(),
            ],
        )?;
        // The service-account controller creating `default` proves the
        // controller-manager works; pods cannot be admitted without it.
        self.wait_for("the controller-manager (default ServiceAccount)", Duration::from_secs(60), || {
            Ok(self.kubectl_output(&["get", "serviceaccount", "default", "-n", "default"])?.status.success())
        })
    }

    fn start_kwok(&self) -> anyhow::Result<()> {
        let port = free_port()?;
        self.spawn(
            "kwok",
            &[
                format!("--kubeconfig={}", self.kubeconfig.display()),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--server-address=127.0.0.1:{port}"),
                "--node-ip=127.0.0.1".into(),
                format!("--node-port={port}"),
                format!("--config={}", self.bin.join("kwok-stages.yaml").display()),
            ],
        )?;
        self.kubectl_apply_str(&node_yaml())?;
        self.wait_for("kwok to mark the node Ready", Duration::from_secs(60), || {
            let out = self.kubectl_output(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "True")
        })
    }

    fn start_node(&self) -> anyhow::Result<()> {
        let link = self.link.as_ref().context("no link")?;
        let node_bin = node::binaries()?;
        let node_dir = self.dir.join("node");
        std::fs::create_dir_all(node_dir.join("logs"))?;
        let env = node::NodeEnv {
            link,
            node_name: &link.name,
            bin: &node_bin,
            kubeconfig: &self.kubeconfig,
            ca_file: &self.dir.join("ca.crt"),
            kubelet_port: free_port()?,
            service_cidr: SERVICE_CIDR,
            images: &[],
        };
        write(&node_dir, "node.env", &env.render())?;
        let log = std::fs::File::create(self.dir.join("logs").join("node.log"))?;
        let mut cmd = node::node_command(link, &node_dir);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = spawn_tied(cmd, &self.dir.join("pids")).context("start the node")?;
        self.children.lock().expect("children lock").push(("node".into(), child));
        let node_name = link.name.clone();
        self.wait_for("the real node to be Ready", Duration::from_secs(120), || {
            let out = self.kubectl_output(&[
                "get",
                "node",
                &node_name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "True")
        })?;
        self.kubectl_apply_str(&node::coredns_yaml(node::DNS_IP))?;
        self.wait_for("CoreDNS to be available", Duration::from_secs(120), || {
            let out = self.kubectl_output(&[
                "get",
                "deployment",
                "coredns",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.status.availableReplicas}",
            ])?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "1")
        })?;
        // Ready is not enough: the cluster is handed out once a name resolves
        // through the DNS Service, i.e. once kube-proxy has programmed it.
        let probe = node_bin.join("bin/probe");
        let query = format!("dns:{}:53:kubernetes.default.svc.cluster.local", node::DNS_IP);
        self.wait_for("the cluster DNS to answer through its Service", Duration::from_secs(60), || {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", link.name))
                .arg(&probe)
                .arg(&query)
                .stdin(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().ends_with(" 10.0.0.1"))
        })
    }

    /// The link to the real node, if this control plane has one.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    /// The node pods are scheduled onto: the real node's name, or kwok's.
    pub fn node_name(&self) -> &str {
        self.link.as_ref().map(|l| l.name.as_str()).unwrap_or(NODE_NAME)
    }

    /// The real node's scratch directory (its logs are in `logs/`).
    pub fn node_dir(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// Imports an OCI archive into the real node's containerd (`ctr images import`):
    /// nothing is ever pulled, so every image a pod runs is imported first.
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        self.link.as_ref().context("this control plane has no real node")?;
        let ctr = node::binaries()?.join("bin/ctr");
        let out = Command::new(ctr)
            .arg("--address")
            .arg(self.node_dir().join("containerd.sock"))
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .stdin(Stdio::null())
            .output()
            .context("run ctr")?;
        if !out.status.success() {
            bail!("ctr images import {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Installs the CRDs from the repository's `crds/` (server-side apply) and waits
    /// until they are Established. Runs once per control plane.
    pub fn install_crds(&self) -> anyhow::Result<()> {
        let result = self.crds.get_or_init(|| {
            let dir = repo_root().join("crds");
            let apply = || -> anyhow::Result<()> {
                self.kubectl_ok(&[
                    "apply",
                    "--server-side",
                    "--field-manager=crmessenger-tests",
                    "-f",
                    &dir.display().to_string(),
                ])?;
                self.wait_crds_established()
            };
            apply().map_err(|e| format!("{e:#}"))
        });
        result.clone().map_err(anyhow::Error::msg)
    }

    /// Waits until the three CRMessenger CRDs are Established (however installed).
    pub fn wait_crds_established(&self) -> anyhow::Result<()> {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/messengeraccounts.crmessenger.io",
            "crd/crmbindings.crmessenger.io",
            "crd/syncpolicies.crmessenger.io",
        ])
        .map(drop)
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA certificate that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin kubeconfig (a member of `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory with the control-plane binaries (kubectl and helm included).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Scratch directory of this control plane, removed when the process exits.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client authenticated as the admin. Create one per test: a client belongs to
    /// the tokio runtime it was created on.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Writes a kubeconfig that authenticates with `token` (e.g. a ServiceAccount's)
    /// and returns its path.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let file = format!("{name}.kubeconfig");
        write(&self.dir, &file, &kubeconfig_yaml(&self.server, &self.ca_pem, token))?;
        Ok(self.dir.join(file))
    }

    /// `kubectl` at the control plane's version, pointed at it as the admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl with `args` and returns its output, whatever its exit status.
    pub fn kubectl_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl().args(args).output().context("run kubectl")
    }

    /// Runs kubectl with `args`, failing with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_output(args)?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` with `yaml` on stdin; returns the output, whatever its status.
    pub fn kubectl_apply_output(&self, yaml: &str, extra: &[&str]) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("kubectl stdin")?.write_all(yaml.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    fn kubectl_apply_str(&self, yaml: &str) -> anyhow::Result<()> {
        let out = self.kubectl_apply_output(yaml, &[])?;
        if !out.status.success() {
            bail!("kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `helm` at the control plane's Kubernetes version, pointed at it as the admin.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("helm"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        for (var, sub) in [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")] {
            cmd.env(var, self.dir.join("helm").join(sub));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Creates a namespace of its own for one test, named after `prefix`, and waits
    /// until pods can be created in it (its `default` ServiceAccount exists).
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        use kube::api::{Api, PostParams};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("t-{prefix}-{n}-{}", &random_hex(3)?);
        let client = self.client().await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "crmessenger.io/test": "true" } }
        }))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sas.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!("namespace {name}: the default ServiceAccount never appeared");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(name)
    }

    /// Starts `cmd` (e.g. the operator binary under test) tied to this process: it is
    /// killed when the test process exits. Its output goes to `logs/<name>.log`
    /// ([`ControlPlane::log_tail`] reads it); `KUBECONFIG` points at the admin
    /// kubeconfig unless the command sets it.
    pub fn spawn_logged(&self, name: &str, mut cmd: Command) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.dir.join("logs").join(format!("{name}.log")))?;
        if !cmd.get_envs().any(|(k, _)| k == "KUBECONFIG") {
            cmd.env("KUBECONFIG", &self.kubeconfig);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = spawn_tied(cmd, &self.dir.join("pids")).with_context(|| format!("start {name}"))?;
        let pid = child.id();
        self.children.lock().map_err(|_| anyhow::anyhow!("children lock poisoned"))?.push((name.to_string(), child));
        Ok(pid)
    }

    /// The last `lines` lines of a component's log (e.g. `kube-apiserver`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&self, name: &str, args: &[String]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("logs").join(format!("{name}.log")))?;
        let mut cmd = Command::new(self.bin.join(name));
        cmd.args(args)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied(cmd, &self.dir.join("pids")).with_context(|| format!("start {name}"))?;
        self.children.lock().expect("children lock").push((name.to_string(), child));
        Ok(())
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready().unwrap_or(false) {
                return Ok(());
            }
            let mut children = self.children.lock().expect("children lock");
            for (name, child) in children.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("{name} exited ({status}) while waiting for {what}:\n{}", self.log_tail(name, 30));
                }
            }
            drop(children);
            if Instant::now() > deadline {
                let logs: Vec<String> = ["etcd", "kube-apiserver", "kube-controller-manager", "kwok", "node"]
                    .iter()
                    .map(|c| format!("--- {c}:\n{}", self.log_tail(c, 15)))
                    .collect();
                bail!("timed out after {timeout:?} waiting for {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The directory of the control-plane binaries: `$CRMESSENGER_CONTROLPLANE_BIN`, or
/// what `tools/build-controlplane.sh` prints (it builds on a cold cache).
pub fn binaries() -> anyhow::Result<PathBuf> {
    cached_build("CRMESSENGER_CONTROLPLANE_BIN", "tools/build-controlplane.sh")
}

/// The directory in `$var`, or what the repository's build `script` prints on
/// stdout (it builds into its cache when that is cold).
pub(crate) fn cached_build(var: &str, script: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(var) {
        return Ok(PathBuf::from(dir));
    }
    let script = repo_root().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The root of the CRMessenger repository (for `crds/`, `examples/`, `charts/`).
///
/// Read at run time: cargo sets `CARGO_MANIFEST_DIR` to the crate under test, a
/// member of the workspace. The compile-time value would be wrong when a build
/// from another checkout of the repository is reused from a shared target dir.
pub fn repo_root() -> PathBuf {
    let crate_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
        ca = base64::engine::general_purpose::STANDARD.encode(ca_pem)
    )
}

fn node_yaml() -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: {NODE_NAME}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: {NODE_NAME}
    kubernetes.io/os: linux
    type: kwok
status:
  allocatable: {{cpu: "32", memory: 256Gi, pods: "110"}}
  capacity: {{cpu: "32", memory: 256Gi, pods: "110"}}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
"#
    )
}

fn write(dir: &Path, file: &str, contents: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(file), contents).with_context(|| format!("write {file}"))
}

/// A free TCP port on 127.0.0.1 (the kernel picks it; it is released before use).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` random bytes from the OS, hex-encoded.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
