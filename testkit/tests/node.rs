//! The real test node: pods run from locally built images, resolve cluster names
//! through CoreDNS, reach Services through kube-proxy, and have no route off this
//! machine; when the harness stops, nothing of the node is left on the host.

use crmessenger_testkit::ControlPlane;
use crmessenger_testkit::node::{self, PROBE_IMAGE};
use crmessenger_testkit::process::Proc;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the probe image with `args` as a pod in `ns` and returns its output lines.
fn probe(cp: &ControlPlane, ns: &str, name: &str, args: &[&str]) -> Vec<String> {
    let args_yaml = args.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {{ runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{ type: RuntimeDefault }} }}
  containers:
    - name: probe
      image: {PROBE_IMAGE}
      imagePullPolicy: Never
      args: [{args_yaml}]
      securityContext: {{ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{ drop: [ALL] }} }}
"#
    );
    let out = cp.kubectl_apply_output(&pod, &[]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let phase =
            cp.kubectl_ok(&["get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}"]).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            assert_eq!(phase, "Succeeded");
            break;
        }
        assert!(Instant::now() < deadline, "the probe pod is {phase:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    cp.kubectl_ok(&["logs", name, "-n", ns]).unwrap().lines().map(str::to_string).collect()
}

fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {lines:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_resolve_cluster_names_reach_services_and_have_no_route_off_this_machine() {
    let cp = ControlPlane::shared_with_node();
    let ns = cp.namespace("probe").await.unwrap();
    let lines = probe(
        cp,
        &ns,
        "probe",
        &[
            "resolve:kubernetes.default.svc.cluster.local",
            "resolve:example.com",
            // The API server through its ClusterIP: kube-proxy's rewrite, the node's
            // forwarding and the host link all work.
            "connect:10.0.0.1:443",
            // Off this machine: no route, so the kernel refuses before sending.
            "route:1.1.1.1:443",
            "route:8.8.8.8:53",
            "route:172.16.0.1:80",
        ],
    );
    assert_eq!(line(&lines, "resolve:kubernetes.default"), "resolve:kubernetes.default.svc.cluster.local 10.0.0.1");
    // No forwarder: names outside the cluster do not resolve.
    assert!(line(&lines, "resolve:example.com").contains("error"), "{lines:?}");
    assert_eq!(line(&lines, "connect:10.0.0.1"), "connect:10.0.0.1:443 connected");
    for target in ["route:1.1.1.1:443", "route:8.8.8.8:53", "route:172.16.0.1:80"] {
        assert_eq!(line(&lines, target), format!("{target} ENETUNREACH"), "{lines:?}");
    }
    // The node itself has no default route either.
    let link = cp.link().unwrap();
    let out = Command::new("ip").args(["netns", "exec", &link.name, "ip", "route", "get", "1.1.1.1"]).output().unwrap();
    assert!(!out.status.success(), "the node routes off the machine: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"), "{}", String::from_utf8_lossy(&out.stderr));
    // And the host's own settings are untouched.
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), "0");
}

#[test]
fn nothing_of_a_node_is_left_after_the_harness_stops() {
    // A control plane with a node in a process of its own, running a pod (so there
    // are containers, shims, mounts and cgroups to leave behind), then killed.
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_controlplane"));
    cmd.arg("--node");
    let mut child = Proc::start("controlplane", cmd, scratch.path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let lines: Vec<String> = loop {
        let log = child.log();
        if log.contains("component logs:") {
            break log.lines().map(str::to_string).collect();
        }
        assert!(child.exited().is_none() && Instant::now() < deadline, "{}", child.log_tail(40));
        std::thread::sleep(Duration::from_millis(250));
    };
    let field = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {lines:?}"))
            .trim()
            .to_string()
    };
    let name = field("real node ").split_whitespace().next().unwrap().to_string();
    let node_dir = std::path::PathBuf::from(field("node dir:"));
    let kubeconfig = field("  export KUBECONFIG=");
    let bin = field("  export PATH=").trim_end_matches(":$PATH").to_string();
    let kubectl = |args: &[&str]| {
        Command::new(format!("{bin}/kubectl")).arg("--kubeconfig").arg(&kubeconfig).args(args).output().unwrap()
    };
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: sleeper, namespace: default }}\nspec:\n  containers:\n    - {{ name: pause, image: {}, imagePullPolicy: Never }}\n",
        node::PAUSE_IMAGE
    );
    let mut apply = Command::new(format!("{bin}/kubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply.stdin.take().unwrap().write_all(pod.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success());
    let out = kubectl(&["wait", "--for=condition=Ready", "pod/sleeper", "--timeout=120s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!node::leftovers(&name, &node_dir).is_empty(), "a running node shows up in the check");

    child.kill();
    // The watchdog notices within a second and cleans up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = node::leftovers(&name, &node_dir);
        if left.is_empty() && !node_dir.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "left after the harness stopped: {left:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn get_tells_an_absent_object_from_a_failing_request() {
    use crmessenger_testkit::checks::get;
    let cp = ControlPlane::shared_with_node();
    assert!(get(cp, "default", "service/kubernetes").is_some());
    assert!(get(cp, "default", "pod/no-such-pod").is_none());
    // A request that fails for another reason is not "absent".
    let failed = std::panic::catch_unwind(|| get(cp, "default", "nosuchkind/x"));
    let message = failed.expect_err("a failing get panics").downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(message.contains("not a NotFound"), "{message}");
}
