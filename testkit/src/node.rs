//! A real node for the test cluster: containerd, runc, kubelet, kube-proxy and the
//! CNI bridge, run by `tools/node/node.sh` in network, mount and PID namespaces of
//! its own, joined to the host by one veth pair.
//!
//! The host end of the pair carries the address the API server binds to and the
//! host-side services (PostgreSQL, the sandboxes) listen on; the node end is the
//! node's InternalIP. Inside the node's network namespace pods get a route to the
//! service range and nothing else: no default route, so a pod cannot send a
//! packet off this machine. Services outside the cluster that pods use are
//! reached through Services without a selector whose endpoints are the host
//! end's address ([`Link::expose`]).
//!
//! Nothing outlives the test process: the node's processes die with its PID
//! namespace, its mounts with its mount namespace, and a cleanup script (run by
//! the test process's watchdog, and by the sweep of the next run if that was
//! killed too) deletes the network namespace (and with it the veth pair, the
//! bridge, its iptables rules and sysctls) and the node's cgroups.

use anyhow::{Context, bail};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pods' address range on a test node.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The ClusterIP of the cluster DNS (CoreDNS) on a cluster with a real node.
pub const DNS_IP: &str = "10.0.0.10";
/// The prefix of every network namespace, veth and cgroup a test node makes.
const PREFIX: &str = "crmn-";
/// The sandbox image the node's containerd uses (built by `tools/build-node.sh`).
pub const PAUSE_IMAGE: &str = "crmessenger.test/pause:3.10";
/// CoreDNS's image (built by `tools/build-node.sh`).
pub const COREDNS_IMAGE: &str = "crmessenger.test/coredns:1.15.0";
/// The network probe's image (`tools/node/probe`, built by `tools/build-node.sh`).
pub const PROBE_IMAGE: &str = "crmessenger.test/probe:1";

/// The link between the host and a test node.
pub struct Link {
    /// The node's network namespace (`ip netns`), also the name of the host's veth
    /// and of the node's cgroup root.
    pub name: String,
    /// The host end's address: the API server and host-side services listen here.
    pub host_ip: Ipv4Addr,
    /// The node end's address: the node's InternalIP.
    pub node_ip: Ipv4Addr,
}

impl Link {
    /// Sweeps what earlier test nodes left, then creates the network namespace and
    /// the veth pair of a new node. `dir` is the control plane's scratch directory:
    /// `dir/cleanup.sh` undoes everything this node does (the watchdog runs it).
    pub fn create(dir: &Path) -> anyhow::Result<Link> {
        sweep();
        let name = format!("{PREFIX}{}", std::process::id());
        let index = std::process::id() % 16_000;
        let (host_ip, node_ip) = (subnet_host(index, 1), subnet_host(index, 2));
        std::fs::write(dir.join("cleanup.sh"), cleanup_script(&name))?;
        let node_if = format!("{name}n");
        run("ip", &["netns", "add", &name])?;
        run("ip", &["link", "add", &name, "type", "veth", "peer", "name", &node_if])?;
        run("ip", &["link", "set", &node_if, "netns", &name])?;
        run("ip", &["addr", "add", &format!("{host_ip}/30"), "dev", &name])?;
        run("ip", &["link", "set", &name, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        inside(&["link", "set", &node_if, "name", "eth0"])?;
        inside(&["addr", "add", &format!("{node_ip}/30"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(Link { name, host_ip, node_ip })
    }
}

/// The `n`th address of the `index`th /30 of 10.213.0.0/16.
fn subnet_host(index: u32, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 213, 0, 0)) + index * 4 + n)
}

/// What undoes a node named `name`: its processes (a PID namespace's init, when
/// killed, takes every process in it), its network namespace, its cgroups, the
/// host's end of its veth pair, and — when it is the last test node — the CNI
/// cache directory a test node made.
fn cleanup_script(name: &str) -> String {
    format!(
        r#"pids=$(ip netns pids {name} 2>/dev/null); [ -n "$pids" ] && kill -9 $pids 2>/dev/null
ip netns del {name} 2>/dev/null
ip link del {name} 2>/dev/null
for _ in $(seq 50); do
  left=$(find /sys/fs/cgroup/*/{name} -depth -type d 2>/dev/null)
  [ -z "$left" ] && break
  echo "$left" | xargs rmdir 2>/dev/null
  sleep 0.1
done
if [ -f /run/crmessenger-made-var-lib-cni ] && ! ip netns list | grep -q '^{PREFIX}'; then
  rmdir /var/lib/cni 2>/dev/null && rm -f /run/crmessenger-made-var-lib-cni
fi
true
"#
    )
}

/// Removes what test nodes of processes that no longer run left behind.
pub fn sweep() {
    let owner_alive = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut names: Vec<String> = Vec::new();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        names.extend(
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(String::from),
        );
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_string()),
        );
    }
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            if let Ok(entries) = std::fs::read_dir(h.path()) {
                names.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    names.sort();
    names.dedup();
    for name in names.iter().filter(|n| n.starts_with(PREFIX) && !owner_alive(n)) {
        let _ = Command::new("sh").arg("-c").arg(cleanup_script(name)).stdin(Stdio::null()).status();
    }
}

/// What is left on the host of the node named `name`: network namespaces, links,
/// cgroups, mounts and processes that mention it. Empty when it is gone.
pub fn leftovers(name: &str, dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in out("ip", &["netns", "list"]).lines().filter(|l| l.contains(name)) {
        left.push(format!("network namespace {line}"));
    }
    for line in out("ip", &["-o", "link", "show"]).lines().filter(|l| l.contains(name)) {
        left.push(format!("link {line}"));
    }
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        if h.path().join(name).exists() {
            left.push(format!("cgroup {}", h.path().join(name).display()));
        }
    }
    let dir = dir.display().to_string();
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        if line.contains(&dir) || line.contains(name) {
            left.push(format!("mount {line}"));
        }
    }
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(proc.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) && !cmdline.contains("testkit-watchdog") {
            left.push(format!("process {}: {cmdline}", proc.file_name().to_string_lossy()));
        }
    }
    left
}

/// The directory `tools/build-node.sh` builds into: `$CRMESSENGER_NODE_DIR`, or
/// what the script prints (it builds on a cold cache).
pub fn binaries() -> anyhow::Result<PathBuf> {
    crate::controlplane::cached_build("CRMESSENGER_NODE_DIR", "tools/build-node.sh")
}

/// The environment `tools/node/node.sh` reads.
pub(crate) struct NodeEnv<'a> {
    pub link: &'a Link,
    pub node_name: &'a str,
    pub bin: &'a Path,
    pub kubeconfig: &'a Path,
    pub ca_file: &'a Path,
    pub kubelet_port: u16,
    pub service_cidr: &'a str,
    pub images: &'a [PathBuf],
}

impl NodeEnv<'_> {
    pub fn render(&self) -> String {
        let images: Vec<String> = self.images.iter().map(|p| p.display().to_string()).collect();
        format!(
            "NODE_BIN={bin}\nNODE_NAME={node}\nNODE_IP={node_ip}\nHOST_IP={host_ip}\nPOD_CIDR={POD_CIDR}\n\
             SERVICE_CIDR={svc}\nDNS_IP={DNS_IP}\nKUBECONFIG={kc}\nCA_FILE={ca}\nKUBELET_PORT={port}\n\
             CGROUP_ROOT={cg}\nPAUSE_IMAGE={PAUSE_IMAGE}\nEXTRA_IMAGES=\"{images}\"\n",
            bin = self.bin.display(),
            node = self.node_name,
            node_ip = self.link.node_ip,
            host_ip = self.link.host_ip,
            svc = self.service_cidr,
            kc = self.kubeconfig.display(),
            ca = self.ca_file.display(),
            port = self.kubelet_port,
            cg = self.link.name,
            images = images.join(" "),
        )
    }
}

/// The command that runs the node: `tools/node/node.sh DIR` as PID 1 of a new PID
/// namespace, in a new mount namespace, inside the link's network namespace.
/// (`nsenter`, not `ip netns exec`: that mounts a new `/sys`, which hides the
/// cgroup hierarchies the kubelet and runc need.)
pub(crate) fn node_command(link: &Link, dir: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", link.name))
        .args(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"])
        .args(["--propagation", "private", "bash"])
        .arg(crate::controlplane::repo_root().join("tools/node/node.sh"))
        .arg(dir);
    cmd
}

/// CoreDNS for `cluster.local`, with no forwarder, at [`DNS_IP`].
pub(crate) fn coredns_yaml(service_cidr_dns_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{ name: coredns, namespace: kube-system }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{ name: "system:coredns" }}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{ name: "system:coredns" }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns" }}
subjects: [{{ kind: ServiceAccount, name: coredns, namespace: kube-system }}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{ name: coredns, namespace: kube-system }}
data:
  Corefile: |
    .:5353 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }}
        cache 30
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: coredns, namespace: kube-system, labels: {{ k8s-app: kube-dns }} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ k8s-app: kube-dns }} }}
  template:
    metadata: {{ labels: {{ k8s-app: kube-dns }} }}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext: {{ runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{ type: RuntimeDefault }} }}
      containers:
        - name: coredns
          image: {COREDNS_IMAGE}
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {{ name: dns, containerPort: 5353, protocol: UDP }}
            - {{ name: dns-tcp, containerPort: 5353, protocol: TCP }}
          readinessProbe: {{ httpGet: {{ path: /ready, port: 8181 }}, periodSeconds: 2 }}
          livenessProbe: {{ httpGet: {{ path: /health, port: 8080 }}, periodSeconds: 10 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{ drop: [ALL] }}
          volumeMounts: [{{ name: config, mountPath: /etc/coredns }}]
      volumes: [{{ name: config, configMap: {{ name: coredns }} }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: kube-dns, namespace: kube-system, labels: {{ k8s-app: kube-dns }} }}
spec:
  clusterIP: {service_cidr_dns_ip}
  selector: {{ k8s-app: kube-dns }}
  ports:
    - {{ name: dns, port: 53, targetPort: 5353, protocol: UDP }}
    - {{ name: dns-tcp, port: 53, targetPort: 5353, protocol: TCP }}
"#
    )
}

impl Link {
    /// A Service without a selector, `name` in `namespace`, whose endpoint is
    /// `port` on the host end of the link: how pods reach a host-side service
    /// (`name.namespace.svc`, port `port`).
    pub fn expose_yaml(&self, namespace: &str, name: &str, port: u16) -> String {
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: {namespace} }}
spec:
  ports: [{{ name: main, port: {port}, targetPort: {port}, protocol: TCP }}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-host
  namespace: {namespace}
  labels: {{ kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: crmessenger-testkit }}
addressType: IPv4
ports: [{{ name: main, port: {port}, protocol: TCP }}]
endpoints: [{{ addresses: ["{host}"], conditions: {{ ready: true }} }}]
"#,
            host = self.host_ip
        )
    }
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
